"""The causes behind issue 27's hostile inputs, one quick test each (the fuzz module throws many files at them).

Chapters 09-11 added files the package reads (quantized folders, adapters, fine-tuning data, run state, chat
templates, RoPE scaling, tiktoken files) and settings it computes with. Each rule below holds for all of them:
one bounded reader, the config checked against the tensors before a model is built, declared sizes checked
against the file before allocating, non-finite numbers refused, settings checked in float32, foreign templates
run with limits.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_llama

from llama_from_scratch import FormatError, LlamaConfig, save_checkpoint
from llama_from_scratch.chat import CHATML_TEMPLATE, MAX_RENDERED_CHARS, chat_template, render_chat
from llama_from_scratch.checkpoints.load import load_checkpoint
from llama_from_scratch.errors import is_finite_number, is_float32
from llama_from_scratch.files import parse_json, read_bytes, read_json
from llama_from_scratch.finetuning.adapter import load_adapter, save_adapter
from llama_from_scratch.finetuning.data import read_jsonl
from llama_from_scratch.finetuning.lora import LoRALinear, add_lora
from llama_from_scratch.generate import GenerationConfig, generate
from llama_from_scratch.quantization import quantize
from llama_from_scratch.rope_scaling import RopeScaling
from llama_from_scratch.tokenization.tiktoken_file import read_tiktoken_ranks, tiktoken_to_byte_bpe
from llama_from_scratch.training.train import TrainConfig

CONFIG = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, hidden_dim=64, max_seq_len=32)


# -- one reader for untrusted files ------------------------------------------------------------------------


def test_read_bytes_checks_the_size_before_reading_and_refuses_fifos(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b"{}" + b" " * 100)
    with pytest.raises(FormatError, match=r"big\.json: 102 bytes, more than the 100"):
        read_bytes(path, 100)
    assert read_json(path) == {}
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(FormatError, match="fifo.json: expected a regular file, got a FIFO"):
        read_json(tmp_path / "fifo.json")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "JSON nested deeper than Python can parse"),
        ('{"a": ' + "9" * 5000 + "}", "not valid JSON"),  # Python's 4300-digit limit
        (b"\xff{}", "not UTF-8"),
        ("[]", "expected a JSON object, got list"),
    ],
)
def test_parse_json_names_where_the_text_came_from(text, message):
    with pytest.raises(FormatError, match=f"^here: line 3: {message}"):
        parse_json(text, "here: line 3")


# -- settings checked in the dtype they are used in -----------------------------------------------------


def test_numbers_that_float32_cannot_hold_are_refused():
    assert is_float32(0) and is_float32(0.5) and is_float32(3.4e38) and is_float32(1e-44)
    assert not is_float32(1e39)  # infinite in float32
    assert not is_float32(1e-46)  # 0 in float32
    assert not is_finite_number(10**400) and not is_float32(10**400)  # no float holds it
    with pytest.raises(ValueError, match="TrainConfig.lr must be a finite number, in float32 too, got 1e\\+39"):
        TrainConfig(lr=1e39)
    model = random_llama(CONFIG)
    with pytest.raises(ValueError, match="top_p must be None or a number in \\(0, 1\\], not 0 in float32"):
        generate(model, [1, 2], GenerationConfig(2, temperature=1.0, top_p=1e-46))


def test_lora_refuses_a_rank_above_the_layer_and_an_alpha_float32_cannot_scale_by():
    layer = torch.nn.Linear(32, 16, bias=False)
    with pytest.raises(ValueError, match="LoRA rank 17 exceeds this layer's smaller side"):
        LoRALinear(layer, rank=17)  # checked before a (17, 32) and a (16, 17) matrix are allocated
    with pytest.raises(ValueError, match="alpha / rank a finite float32"):
        LoRALinear(layer, rank=8, alpha=1e308)
    assert LoRALinear(layer, rank=16).lora_B.shape == (16, 16)


@pytest.mark.parametrize(
    ("scaling", "changes", "message"),
    [
        (RopeScaling("dynamic", factor=2.0, original_max_position_embeddings=16), {"dim": 8}, "head_dim > 2"),
        (RopeScaling("yarn", factor=4.0, original_max_position_embeddings=16), {"rope_theta": 1.0}, "rope_theta > 1"),
        ({"type": "dynamic", "factor": 1e308, "original_max_position_embeddings": 16}, {}, "finite in float32"),
    ],
)
def test_rope_scaling_is_checked_with_the_model_it_scales(scaling, changes, message):
    with pytest.raises(ValueError, match=message):
        LlamaConfig(**{**vars(CONFIG), "head_dim": None, **changes, "rope_scaling": scaling})


# -- checkpoints: the config against the tensors, non-finite values, the message of a missing tensor ---------


def quantized_folder(tmp_path: Path) -> Path:
    model = quantize(random_llama(CONFIG), "int4", 32, include_embeddings=True, include_output=True)
    return save_checkpoint(model, None, tmp_path / "q", "quantized")


def test_a_quantized_model_counts_the_weights_it_stands_for(tmp_path):
    folder = quantized_folder(tmp_path)
    assert load_checkpoint(folder, device="cpu").num_parameters() == random_llama(CONFIG).num_parameters()


def test_a_quantized_config_is_checked_against_the_file_before_a_model_is_built(tmp_path):
    folder = quantized_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 100_000}))
    start = time.monotonic()
    with pytest.raises(FormatError, match=r"config\.json: num_hidden_layers is 100000, but the weights hold 2"):
        load_checkpoint(folder, device="cpu")
    assert time.monotonic() - start < 10  # 100,000 layers built first took 94 s and 3.5 GB


def test_a_nan_in_a_scale_or_a_norm_is_refused_naming_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = quantized_folder(tmp_path)
    for name in ("layers.0.attention.wq.scales", "norm.weight"):
        weights = load_file(folder / "quantized.safetensors")
        original = weights[name].clone()
        weights[name].view(-1)[3] = float("nan")
        save_file(weights, folder / "quantized.safetensors", metadata={"format": "pt", **header_of(folder)})
        with pytest.raises(FormatError, match=f"tensor '{name}' holds 1 NaN or infinite value"):
            load_checkpoint(folder, device="cpu")
        weights[name] = original
        save_file(weights, folder / "quantized.safetensors", metadata={"format": "pt", **header_of(folder)})


def header_of(folder: Path) -> dict:
    from safetensors import safe_open

    with safe_open(folder / "quantized.safetensors", "pt") as f:
        return f.metadata()


# -- adapters: the declared rank against the file, before allocating ---------------------------------------


def test_an_adapter_config_claiming_a_huge_rank_is_refused_before_allocating(tmp_path):
    model = random_llama(CONFIG)
    add_lora(model, rank=2)
    folder = save_adapter(model, tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    for rank in (10**6, 2**40):
        (folder / "adapter_config.json").write_text(json.dumps({**config, "r": rank}))
        with pytest.raises(FormatError, match=f"has shape \\(2, \\d+\\), but adapter_config.json declares r={rank}"):
            load_adapter(random_llama(CONFIG), folder)


# -- fine-tuning data and run state ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "data.jsonl:2: JSON nested deeper"),
        (b'{"messages": "hello", "chosen": "a", "rejected": "b"}', "data.jsonl:2: messages must be a list"),
        (b'{"messages": [], "chosen": 5, "rejected": "b"}', "data.jsonl:2: chosen must be a string"),
        (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', "data.jsonl:2: not UTF-8 text"),
    ],
)
def test_fine_tuning_data_faults_name_the_file_and_line(tmp_path, line, message):
    good = {"messages": [{"role": "user", "content": "a"}], "chosen": "b", "rejected": "c"}
    path = tmp_path / "data.jsonl"
    path.write_bytes(json.dumps(good).encode() + b"\n" + line + b"\n")
    with pytest.raises(FormatError, match=message):
        read_jsonl(path, "dpo")


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (b"", "not a readable trainer state"),
        ([1, 2], "must be an object, got \\[1, 2\\]"),
        ({"history": []}, "missing step"),
        ({"step": "4"}, "step must be an integer, got '4'"),
    ],
)
def test_a_damaged_trainer_state_is_one_error_naming_the_file(tmp_path, state, message):
    from llama_from_scratch.training.checkpoint import read_trainer_state

    path = tmp_path / "trainer_state.pt"
    path.write_bytes(state) if isinstance(state, bytes) else torch.save(state, path)
    with pytest.raises(FormatError, match=f"trainer_state.pt.*{message}"):
        read_trainer_state(path, random_llama(CONFIG))


def test_a_damaged_token_cache_is_rebuilt(tmp_path):
    from test_fuzz_formats import byte_level

    from llama_from_scratch.finetuning.sft import tokenize_dataset

    tokenizer = byte_level()
    conversations = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": f"yes {i}"}] for i in range(3)]
    first = tokenize_dataset(conversations, tokenizer, CHATML_TEMPLATE, tmp_path)
    (cache,) = tmp_path.glob("*.npz")
    cache.write_bytes(cache.read_bytes()[:100])  # truncated: not a zip file any more
    assert tokenize_dataset(conversations, tokenizer, CHATML_TEMPLATE, tmp_path) == first
    np.savez(cache, tokens=np.array([10**6]), labels=np.array([0]), offsets=np.array([0, 1]))  # ids not in the vocabulary
    assert tokenize_dataset(conversations, tokenizer, CHATML_TEMPLATE, tmp_path) == first


# -- chat templates: foreign code, run with limits -----------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ raise_exception('roles must alternate') }}", "TemplateError: roles must alternate"),
        ("{{ ''.__class__.__mro__ }}", "SecurityError"),
        ("{{ 'x' * 10**11 }}", f"more than {MAX_RENDERED_CHARS:,}"),
        ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", "more than 2 s"),
        ("{{ undefined.x }}", "UndefinedError"),
    ],
)
def test_a_template_fails_in_one_line_naming_its_file(template, message):
    messages = [{"role": "user", "content": "hi"}]
    start = time.monotonic()
    with pytest.raises(ValueError, match=f"^dir/tokenizer_config.json: the chat template failed \\(.*{message}"):
        render_chat(chat_template(template, "dir/tokenizer_config.json"), messages)
    assert time.monotonic() - start < 10  # the nested loops ran 50 s before the limit


def test_a_template_with_a_syntax_error_is_refused_when_it_is_read():
    with pytest.raises(ValueError, match="^dir/x.gguf: the chat template does not compile \\(TemplateSyntaxError"):
        chat_template("{% for %}", "dir/x.gguf")


# -- tiktoken files -----------------------------------------------------------------------------------------


class CountingRanks(dict):
    """A ranks table that counts its membership tests: the conversion's work, counted instead of timed."""

    lookups = 0

    def __contains__(self, token):
        self.lookups += 1
        return super().__contains__(token)


def test_a_long_tiktoken_token_converts_in_linear_time(tmp_path):
    ranks = CountingRanks({bytes([b]): b for b in range(256)})
    ranks[b"a" * 400_000] = 256
    tokenizer = tiktoken_to_byte_bpe(ranks, special_tokens=("<s>",), bos=None, eos=None, pad=None)
    assert tokenizer.vocab_size == 258
    # A cut is tried only at a length some token has (here 1 and 400,000): at most two lookups per token and
    # length. Trying every cut of the long token would take 400,000 (20.8 s here: quadratic in its length).
    lengths = {len(token) for token in ranks}
    assert ranks.lookups <= 2 * len(ranks) * len(lengths)


def test_a_tiktoken_rank_too_long_to_convert_names_the_line(tmp_path):
    path = tmp_path / "tokenizer.model"
    lines = [base64.b64encode(bytes([b])) + f" {b}".encode() for b in range(256)]
    path.write_bytes(b"\n".join(lines + [b"YWI= " + b"9" * 5000]) + b"\n")
    with pytest.raises(FormatError, match="tokenizer.model: line 257: rank 9999.*has 5000 digits"):
        read_tiktoken_ranks(path)


# -- the command line ------------------------------------------------------------------------------------------


def as_from_a_terminal() -> None:
    """In the child before it runs: Ctrl-C as a shell's command gets it, neither ignored nor blocked. A child
    inherits both from this test's process, and a test worker's state is not a terminal's (in the full suite under
    xdist the signal once came in time and was lost, five tries of five, exit 0: an inherited SIG_IGN or mask,
    which Python at start-up rightly keeps, as a command run under ``nohup`` keeps it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.slow  # a command-line run in a subprocess
def test_ctrl_c_while_the_command_line_starts_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs Linux's /proc to see when the child imports torch")
    # On a starved machine the child can finish `presets` between two of our polls, before the signal is sent
    # (it had exited when the signal went: too late, not a wrong answer): then try again, twenty times at most.
    for _ in range(20):
        child = subprocess.Popen(
            [sys.executable, "-m", "llama_from_scratch", "presets"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            cwd=tmp_path, env=env, preexec_fn=as_from_a_terminal,
        )
        # Wait for torch's library to be mapped: the package has begun importing (after setting its handler) and
        # torch's import still takes a second or more. A fixed sleep is a race on a busy machine: a signal that
        # comes while the interpreter itself starts is Python's own traceback, before any code of ours runs.
        deadline = time.monotonic() + 60
        while child.poll() is None and time.monotonic() < deadline:
            try:
                if "libtorch" in Path(f"/proc/{child.pid}/maps").read_text():
                    break
            except OSError:  # the child is between exec and its first mapping
                pass
            time.sleep(0.002)
        in_time = child.poll() is None  # still starting when the signal goes
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
        if in_time:
            break
    assert in_time, "the child finished before the signal could be sent, twenty times: the machine is too busy"
    inherited = (signal.getsignal(signal.SIGINT), signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))
    assert (child.returncode, err.decode().strip()) == (130, "interrupted"), f"this process's SIGINT: {inherited}"
