"""Chapter 09's exercise checks: the solution passes, each catalogued mistake is named, messages fit nbgrader.

As ``test_course_feedback.py`` does for the other chapters' checks, with the mistakes listed in
``course.quantization_checks`` itself.
"""

import gguf
import numpy as np
import pytest

from helpers import check_failure, solution_answer
from llama_from_scratch.course import quantization_checks as checks
from llama_from_scratch.quantization import quantize_int4


# check -> (the learner's function it checks, the catalogued mistakes)
CHECKS = {
    "check_quantize_int4": ("my_quantize_int4", checks.QUANTIZE_INT4),
    "check_dequantize_int4": ("my_dequantize_int4", checks.DEQUANTIZE_INT4),
    "check_quantize_q8_0": ("my_quantize_q8_0", checks.QUANTIZE_Q8_0),
}
MISTAKES = [(check, i) for check, (_, mistakes) in CHECKS.items() for i in range(len(mistakes))]


def solution(name: str):
    return solution_answer("09_quantization.ipynb", name)


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
        ("check_quantize_int4", lambda w, g: quantize_int4(w, g), "quantize_int4"),
        ("check_quantize_q8_0", lambda x: gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0), "quants.quantize"),
    ],
)
def test_a_forbidden_call_is_caught(check, answer, called):
    message = failure(check, answer)
    assert called in message and "asks you not to use" in message, message


def test_wrong_types_and_shapes_are_named():
    assert "expected a tuple (packed, scales, mins)" in failure("check_quantize_int4", lambda w, g: w)
    message = failure("check_quantize_q8_0", lambda x: np.zeros(len(x) // 32 * 34, dtype=np.int8))
    assert "expected uint8" in message and "34 bytes" in message
