"""Chapter 11's exercise checks: the solution passes, each catalogued mistake is named, messages fit nbgrader.

As ``test_quantization_checks.py`` does for chapter 09, with the mistakes listed in
``course.long_context_checks`` itself.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import check_failure, solution_answer
from llama_from_scratch.course import long_context_checks as checks
from llama_from_scratch.long_context import flash_attention
from llama_from_scratch.rope_scaling import dynamic_ntk_theta, linear_scaling
from llama_from_scratch.rope import rope_frequencies


# check -> (the learner's function it checks, the catalogued mistakes)
CHECKS = {
    "check_online_softmax_attention": ("my_online_softmax_attention", checks.ONLINE_ATTENTION),
    "check_linear_scaling": ("my_linear_scaling", checks.LINEAR_SCALING),
    "check_ntk_frequencies": ("my_ntk_frequencies", checks.NTK_FREQUENCIES),
}
MISTAKES = [(check, i) for check, (_, mistakes) in CHECKS.items() for i in range(len(mistakes))]


def solution(name: str):
    return solution_answer("11_long_context.ipynb", name)


def failure(check: str, answer) -> str:
    return check_failure(checks, check, answer)


@pytest.mark.parametrize("check", CHECKS)
def test_the_solution_passes(check, capsys):
    getattr(checks, check)(solution(CHECKS[check][0]))
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("check, index", MISTAKES, ids=[f"{c}-{i}" for c, i in MISTAKES])
def test_each_catalogued_mistake_is_named(check, index):
    mistake = CHECKS[check][1][index]
    assert mistake.cause in failure(check, mistake.answer)


@pytest.mark.parametrize("check", CHECKS)
def test_an_unwritten_answer_says_so(check):
    def unwritten(*args):
        raise NotImplementedError()

    assert "not implemented yet" in failure(check, unwritten)


@pytest.mark.parametrize(
    "check, answer, called",
    [
        (
            "check_online_softmax_attention",
            lambda q, k, v, causal, block: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True),
            "scaled_dot_product_attention",
        ),
        (
            "check_online_softmax_attention",
            lambda q, k, v, causal, block: flash_attention(q, k, v, causal, block),
            "flash_attention",
        ),
        ("check_linear_scaling", linear_scaling, "linear_scaling"),
        (
            "check_ntk_frequencies",
            lambda d, theta, factor: rope_frequencies(d, dynamic_ntk_theta(theta, d, 1.0, 64, round(64 * factor))),
            "dynamic_ntk_theta",
        ),
    ],
)
def test_a_forbidden_call_is_caught(check, answer, called):
    message = failure(check, answer)
    assert called in message and "asks you not to use" in message, message


def materialised(q, k, v, causal, block_size):
    """Right numbers, the memory of plain attention: one (seq, kv_seq) score matrix per head."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        seq, kv_seq = q.shape[2], k.shape[2]
        hidden = torch.ones(seq, kv_seq, dtype=torch.bool).triu(kv_seq - seq + 1)
        scores = scores.masked_fill(hidden, -math.inf)
    return torch.softmax(scores, dim=-1) @ v


def test_the_full_score_matrix_is_caught():
    message = failure("check_online_softmax_attention", materialised)
    assert "full score matrix" in message and "seq 96" in message, message


def test_an_input_changed_in_place_is_named():
    def in_place(inv_freq, factor):
        inv_freq /= factor
        return inv_freq

    assert "changed its input" in failure("check_linear_scaling", in_place)


def test_wrong_shapes_are_named():
    message = failure("check_online_softmax_attention", lambda q, k, v, causal, block: q[:, :1])
    assert "shape" in message
    assert "shape" in failure("check_ntk_frequencies", lambda d, theta, factor: rope_frequencies(2 * d, theta))
