"""Our model run by lm-evaluation-harness on a local task file: the harness's accuracy equals ours, request by request.

Skipped when lm-eval is not installed (it is an optional extra: ``pip install 'llama-from-scratch[eval]'``).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from helpers import float32_rounding, random_llama

from llama_from_scratch import LlamaConfig, save_checkpoint
from llama_from_scratch.evaluation.generation import generate_until
from llama_from_scratch.evaluation.multiple_choice import answer_choices
from llama_from_scratch.evaluation.registry import read_task_file
from llama_from_scratch.evaluation.statistics import mean_with_stderr
from llama_from_scratch.tokenization.byte_bpe import ByteLevelBPE, bytes_to_unicode

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("lm_eval") is None,
        reason="lm-eval is an optional extra, not installed: pip install 'llama-from-scratch[eval]'",
    ),
    pytest.mark.slow,  # importing lm-eval (and the datasets library) takes ~10 s
]

TASK_DIR = Path(__file__).parent / "data" / "lm_eval"
BOS = 256


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random tiny float32 model with a one-token-per-byte tokenizer, saved as a Hugging Face folder."""
    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    tokenizer = ByteLevelBPE(vocab, [], special_tokens={"<s>": BOS, "</s>": BOS + 1}, bos_id=BOS, eos_id=BOS + 1)
    model = random_llama(LlamaConfig.from_preset("tiny", vocab_size=BOS + 2))
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("tiny") / "model"), model, tokenizer


def run_lm_eval(checkpoint_path: Path, monkeypatch) -> dict:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(TASK_DIR)  # the YAML names its data file relative to here
    import lm_eval
    from lm_eval.tasks import TaskManager

    import llama_from_scratch.evaluation.lm_eval_adapter  # noqa: F401 (registers llama-from-scratch)

    return lm_eval.simple_evaluate(
        model="llama-from-scratch",
        model_args=f"checkpoint={checkpoint_path}",
        tasks=["toy_mc"],
        task_manager=TaskManager(include_path=str(TASK_DIR)),
        log_samples=True,
        batch_size=4,
    )


def test_lm_eval_scores_our_model_as_our_harness_does(checkpoint, monkeypatch):
    path, model, tokenizer = checkpoint
    task = read_task_file(TASK_DIR / "toy_mc.jsonl", normalization="none")
    ours = answer_choices(model, tokenizer, task.items, normalization="none", batch_size=3)
    ours_norm = answer_choices(model, tokenizer, task.items, normalization="char", batch_size=3)
    results = run_lm_eval(path, monkeypatch)
    samples = sorted(results["samples"]["toy_mc"], key=lambda s: s["doc_id"])
    assert len(samples) == len(task.items)

    # Both sides run the same float32 model on the same tokens, batched differently (other padding, so other
    # RoPE positions and other summation orders): logits agree within 4x the model's measured float32 rounding
    # (helpers.assert_same_logits), and a log-softmax moves by at most twice its logits' largest change; a
    # log-likelihood sums one such term per continuation token.
    longest = max(len(item.context) + max(len(c) for c in item.choices) for item in task.items) + 1
    rounding = float32_rounding(model, torch.arange(longest)[None] % BOS)
    for sample, result, item in zip(samples, ours, task.items):
        theirs = [float(resp[0][0]) for resp in sample["resps"]]
        for ll, scored, choice in zip(theirs, result.scored, item.choices):
            bound = len(scored.token_logprobs) * 2 * 4 * rounding
            assert abs(ll - scored.logprob) <= bound, (choice, ll, scored.logprob, bound)
        gaps = sorted(result.scores, reverse=True)
        assert gaps[0] - gaps[1] > 2 * max(len(s.token_logprobs) for s in result.scored) * 8 * rounding, "a near-tie"
    metrics = results["results"]["toy_mc"]
    assert metrics["acc,none"] == mean_with_stderr([float(r.correct) for r in ours]).mean
    assert metrics["acc_norm,none"] == mean_with_stderr([float(r.correct) for r in ours_norm]).mean
    assert metrics["acc_stderr,none"] == pytest.approx(mean_with_stderr([float(r.correct) for r in ours]).stderr)


def test_the_adapter_answers_rolling_and_generation_requests(checkpoint):
    from llama_from_scratch.evaluation.lm_eval_adapter import LlamaFromScratchLM

    path, model, tokenizer = checkpoint
    lm = LlamaFromScratchLM.create_from_arg_string(f"checkpoint={path},batch_size=2")

    class Request:  # what the harness passes: an object with .args
        def __init__(self, *args):
            self.args = args

    text = "To be, or not to be, that is the question: " * 5  # 220 bytes: two windows of the 128-token model
    (rolling,) = lm.loglikelihood_rolling([Request(text)])
    tokens = torch.tensor([[BOS, *text.encode()]])
    with torch.no_grad():  # the first window by hand: 128 tokens predicted from BOS and each other
        logprobs = torch.log_softmax(model(tokens[:, :128]).double(), -1)[0]
    first = sum(logprobs[t, tokens[0, t + 1]].item() for t in range(127))
    assert rolling < first < 0  # the second window adds more negative terms
    (generated,) = lm.generate_until([Request("Hello", {"until": ["\n"], "max_gen_toks": 8})])
    assert "\n" not in generated and len(generated) <= 8
    # Requests with the same settings are answered in one batch, each as it would be alone (float32: the
    # batch sums in another order, far below the random model's gaps between logits).
    options = [{"until": ["\n"], "max_gen_toks": 8}, {"until": ["e", "a"], "max_gen_toks": 6}]
    requests = [Request(text, options[i % 2]) for i, text in enumerate(["Hello", "Hi there", "Hey", "Good day!"])]
    alone = [
        generate_until(model, tokenizer, tokenizer.encode(text, bos=True), option["until"], option["max_gen_toks"])
        for text, option in (r.args for r in requests)
    ]
    assert lm.generate_until(requests) == alone
    with pytest.raises(ValueError, match="needs model_args checkpoint=PATH"):
        LlamaFromScratchLM.create_from_arg_string("")
    assert os.path.isdir(path)


def test_eval_command_runs_lm_eval_tasks(checkpoint, monkeypatch, tmp_path, capsys):
    from llama_from_scratch.cli import main

    path, model, tokenizer = checkpoint
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(TASK_DIR)
    arguments = ["--harness", "lm-eval", "--include", str(TASK_DIR), "--tasks", "toy_mc", "--out", str(tmp_path)]
    assert main(["eval", "--checkpoint", str(path), *arguments]) == 0
    assert "toy_mc" in capsys.readouterr().out
    written = json.loads((tmp_path / "lm_eval_0shot.json").read_text())
    ours = answer_choices(model, tokenizer, read_task_file(TASK_DIR / "toy_mc.jsonl").items, normalization="none")
    assert written["results"]["toy_mc"]["acc,none"] == sum(r.correct for r in ours) / len(ours)
