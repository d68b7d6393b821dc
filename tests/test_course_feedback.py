"""The exercise checks name the likely mistake, enforce the rules an exercise states, and fit nbgrader's lines.

Every check is answered with the solution notebook's own answer (it must pass) and with every wrong
answer catalogued for it in ``course.diagnosis`` (the check must fail and name that mistake).
"""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import check_failure
from llama_from_scratch.course import checks, diagnosis
from llama_from_scratch.course.feedback import LINE_WIDTH

ROOT = Path(__file__).resolve().parent.parent

# check -> (solution notebook, the learner's function it checks, the catalogued mistakes)
CHECKS = {
    "check_pair_counts": ("01", "my_pair_counts", diagnosis.PAIR_COUNTS),
    "check_merge": ("01", "my_merge", diagnosis.MERGE),
    "check_train_bpe": ("01", "my_train_bpe", diagnosis.TRAIN_BPE),
    "check_bpe_encode": ("01", "my_encode", diagnosis.BPE_ENCODE),
    "check_rmsnorm": ("02", "my_rms_norm", diagnosis.RMSNORM),
    "check_transformer_block": ("02", "my_transformer_block", diagnosis.TRANSFORMER_BLOCK),
    "check_rope": ("03", "my_apply_rope", diagnosis.ROPE),
    "check_interleaved_to_half": ("03", "my_interleaved_to_half", diagnosis.INTERLEAVED_TO_HALF),
    "check_causal_attention": ("04", "my_scaled_dot_product_attention", diagnosis.CAUSAL_ATTENTION),
    "check_kv_cache_bytes": ("04", "my_kv_cache_bytes", diagnosis.KV_CACHE_BYTES),
    "check_swiglu": ("05", "my_swiglu", diagnosis.SWIGLU),
    "check_ffn_hidden_dim": ("05", "my_ffn_hidden_dim", diagnosis.FFN_HIDDEN_DIM),
    "check_count_parameters": ("05", "my_count_parameters", diagnosis.COUNT_PARAMETERS),
    "check_kv_cache_update": ("06", "my_kv_cache_update", diagnosis.KV_CACHE_UPDATE),
    "check_top_p": ("06", "my_top_p_filter", diagnosis.TOP_P),
    "check_generate": ("06", "my_generate", diagnosis.GENERATE),
    "check_lr_schedule": ("07", "my_learning_rate", diagnosis.LR_SCHEDULE),
    "check_clip_gradients": ("07", "my_clip_grad_norm", diagnosis.CLIP_GRADIENTS),
    "check_train_step": ("07", "my_train_step", diagnosis.TRAIN_STEP),
    "check_hf_to_meta_name": ("08", "my_hf_to_meta_name", diagnosis.HF_TO_META_NAME),
    "check_merge_shards": ("08", "my_merge_shards", diagnosis.MERGE_SHARDS),
    "check_dequantize_q4_1_block": ("08", "my_dequantize_q4_1_block", diagnosis.Q4_1),
}
MISTAKES = [(check, i) for check, (_, _, mistakes) in CHECKS.items() for i in range(len(mistakes))]
_answers: dict[str, dict] = {}


def solution(number: str, name: str):
    """The model answer ``name`` of solution notebook ``number``: its set-up cell and answer cells, executed."""
    if number not in _answers:
        path = next((ROOT / "solutions").glob(f"{number}_*.ipynb"))
        cells = json.loads(path.read_text())["cells"]
        namespace: dict = {}
        code = [c for c in cells if c["cell_type"] == "code"]
        for cell in code[:1] + [c for c in code if c.get("metadata", {}).get("nbgrader", {}).get("solution")]:
            exec("".join(cell["source"]), namespace)  # noqa: S102 (the course's own solution notebooks)
        _answers[number] = namespace
    return _answers[number][name]


def failure(check: str, answer) -> str:
    return check_failure(checks, check, answer)


@pytest.mark.parametrize("check", CHECKS)
def test_the_solution_passes(check, capsys):
    number, name, _ = CHECKS[check]
    getattr(checks, check)(solution(number, name))
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("check, index", MISTAKES, ids=[f"{c}-{i}" for c, i in MISTAKES])
def test_each_catalogued_mistake_is_named(check, index):
    mistake = CHECKS[check][2][index]
    message = failure(check, mistake.answer)
    assert mistake.cause in message, message


@pytest.mark.parametrize("check", CHECKS)
def test_an_unwritten_answer_says_so(check):
    def unwritten(*args):
        raise NotImplementedError()

    assert "not implemented yet" in failure(check, unwritten)


def test_every_cause_fits_nbgrader_lines():
    for _, _, mistakes in CHECKS.values():
        for mistake in mistakes:
            assert all(len(line) <= LINE_WIDTH for line in mistake.cause.splitlines()), mistake.cause


def test_three_diagnoses_as_a_learner_sees_them():
    message = failure("check_causal_attention", lambda q, k, v: diagnosis._attention(q, k, v, mask="none"))
    assert "looks like the causal mask is missing:\nposition 0 attends to later tokens" in message
    message = failure("check_rmsnorm", lambda x, w, eps: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)) * w)
    assert "eps=0.01):\nlooks like eps is missing" in message and "expected" in message and "got" in message
    message = failure("check_kv_cache_bytes", lambda c, s, b, n=1: c.n_layers * c.n_kv_heads * c.head_dim * s * n * b)
    assert "factor 2 is missing" in message and "expected" in message


@pytest.mark.parametrize(
    "check, answer, called",
    [
        ("check_rmsnorm", lambda x, w, eps: F.rms_norm(x, x.shape[-1:], w, eps), "torch.nn.functional.rms_norm"),
        ("check_rmsnorm", lambda x, w, eps: checks.rms_norm(x, w, eps), "llama_from_scratch.rmsnorm.rms_norm"),
        (
            "check_causal_attention",
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
            "torch.nn.functional.scaled_dot_product_attention",
        ),
        ("check_transformer_block", lambda x, block, cos, sin: block(x, cos, sin), "TransformerBlock"),
        ("check_swiglu", lambda x, w1, w2, w3: (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T, "silu"),
    ],
)
def test_a_forbidden_call_is_caught(check, answer, called):
    message = failure(check, answer)
    assert called in message and "asks you not to use" in message, message


def test_forbidding_is_undone_after_the_check():
    import sys

    before = sys.getprofile()
    failure("check_rmsnorm", lambda x, w, eps: F.rms_norm(x, x.shape[-1:], w, eps))
    assert sys.getprofile() is before
