"""How a check talks to a learner: calling the answer, comparing it, naming the likely mistake.

A check calls the learner's function through :func:`answer`, which turns the exercise's
``raise NotImplementedError()`` into "not implemented yet" and enforces the exercise's rules
(:mod:`.rules`). It compares the result with the expected one; when they differ it tries the
catalogued wrong answers of the chapter's module (``rmsnorm_checks.RMSNORM``, ...) on the same input
and, if one of them gives what the learner got, says which mistake that is, above the plain difference:

    my_rms_norm(x of shape (1, 1, 4), eps=0.01):
    looks like eps is missing:
    the root should be of mean(x²) + eps, not of mean(x²) alone
      4 of 4 elements differ; the first at index (0, 0, 0):
      expected 0.571226, got 0.571948

Most checks are :func:`check_cases`: that skeleton on a list of :class:`Case`, then the ✓ line; bad
input that the exercise must refuse is tried with :func:`refuses`. A check covers at least every case of
the hidden tests of its graded cell, so that ✓ means full marks in ``nbgrader autograde``.
Every line of a message stays within :data:`LINE_WIDTH` characters: ``nbgrader validate`` cuts longer ones,
and Jupyter shows a failed check as its message alone (:meth:`CheckFailed._render_traceback_`), without
a traceback through this package.
"""

from __future__ import annotations

import copy
import math
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .rules import forbidding

FLOAT32_EPS = torch.finfo(torch.float32).eps  # 1.19e-7: a float32 result is within EPS / 2 of its exact value
# nbgrader validate (width 90) cuts a line after 87 characters, and indents the error by 4
LINE_WIDTH = 90 - 3 - 4
FIRST_LINE_WIDTH = LINE_WIDTH - len("CheckFailed: ")  # the first line follows the exception's name


def float32_drift(n_roundings: int) -> float:
    """How far float32 rounding may move a result, relative to its size, through ``n_roundings`` roundings.

    Two correct computations of the same numbers (another kernel, another order of a sum, another model
    implementation) differ by rounding alone. Each rounding is off by at most ``EPS / 2`` relative, and
    independent errors add up like a random walk: ``n`` of them typically reach ``sqrt(n) * EPS / 2``.
    Allowing ``2 * EPS * sqrt(n)`` leaves a factor 4 for unlucky orders (for a whole model, ``n`` is about
    ``n_layers * hidden_dim``: chapter 04 measures it), while a real mistake is off by far more.
    """
    return 2 * FLOAT32_EPS * math.sqrt(n_roundings)


class CheckFailed(AssertionError):
    """An exercise's answer differs from the expected one; the message says how, and the likely cause."""

    def _render_traceback_(self) -> list[str]:
        """The lines IPython shows for this exception instead of a traceback: the message alone.

        IPython (JupyterLab, nbclient, ``nbgrader autograde``) calls this method on an exception that has it,
        and stores what it returns as the cell's error output, which nbgrader's feedback page shows. A
        traceback would lead through the check's own code, some 1.5 kB that say nothing about the learner's.
        """
        return f"{type(self).__name__}: {self}".splitlines()


@dataclass(frozen=True)
class Mistake:
    """A common wrong answer: ``answer`` computes it (same arguments as the exercise's function), ``cause`` names it."""

    cause: str
    answer: Callable


def answer(name: str, fn: Callable, *args, forbidden: Sequence[Callable] = ()):
    """Call the learner's ``fn(*args)``: unwritten code and calls the exercise rules out become :class:`CheckFailed`."""
    try:
        with forbidding(forbidden) as calls:
            result = fn(*args)
    except NotImplementedError:
        raise CheckFailed(
            f"{name}: not implemented yet\n(replace the `raise NotImplementedError()` line by your code)"
        ) from None
    if calls:
        raise CheckFailed(
            f"{name} calls\n{calls[0]},\nwhich this exercise asks you not to use: write that part yourself"
        )
    return result


def diagnose(
    got: object, args: tuple, mistakes: Iterable[Mistake], same: Callable[[object, object], bool]
) -> str | None:
    """The cause of the first catalogued mistake whose answer on ``args`` is ``same`` as ``got``, if any."""
    for mistake in mistakes:
        try:
            wrong = mistake.answer(*args)
        except Exception:  # noqa: BLE001, S112 (a wrong answer that cannot run on this input is not the learner's)
            continue
        if same(got, wrong):
            return mistake.cause
    return None


def fail(label: str, difference: str, cause: str | None = None) -> CheckFailed:
    """A :class:`CheckFailed` for ``label``: the likely ``cause`` first (if known), then the ``difference``.

    The label is wrapped so that its first line still fits after nbgrader's "CheckFailed: ".
    """
    label = textwrap.wrap(f"{label}:", FIRST_LINE_WIDTH, subsequent_indent="  ", break_on_hyphens=False)
    return CheckFailed("\n".join([*label, *([cause] if cause else []), difference]))


def wrapped(prefix: str, value: object) -> str:
    """``prefix`` and ``repr(value)``, broken into lines of at most :data:`LINE_WIDTH` characters (none dropped)."""
    return "\n".join(
        textwrap.wrap(f"{prefix}{value!r}", LINE_WIDTH, subsequent_indent=" " * len(prefix), break_on_hyphens=False)
    )


def tensor_difference(got: object, expected: torch.Tensor, atol: float, rtol: float) -> str | None:
    """How ``got`` differs from ``expected`` (type, shape, NaN, first element off), or ``None`` if it does not."""
    if not isinstance(got, torch.Tensor):
        return f"  expected a torch.Tensor, got {type(got).__name__}"
    if got.shape != expected.shape:
        return f"  shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    got, expected = got.detach().double().cpu(), expected.detach().double().cpu()  # float64 keeps every bit of both
    if torch.isnan(got).any() and not torch.isnan(expected).any():
        index = tuple(torch.nonzero(torch.isnan(got))[0].tolist())
        return f"  NaN at index {index} (expected {expected[index].item():.6g})"
    off = ~torch.isclose(got, expected, atol=atol, rtol=rtol, equal_nan=True)
    if not off.any():
        return None
    index = tuple(torch.nonzero(off)[0].tolist())
    return (
        f"  {int(off.sum())} of {off.numel()} elements differ; the first at index {index}:\n"
        f"  expected {expected[index].item():.6g}, got {got[index].item():.6g}"
    )


def close(atol: float, rtol: float) -> Callable[[object, object], bool]:
    """Whether two answers are the same tensor up to the tolerance (NaN where the other has NaN)."""

    def same(got: object, wrong: object) -> bool:
        if not isinstance(got, torch.Tensor) or not isinstance(wrong, torch.Tensor) or got.shape != wrong.shape:
            return False
        return bool(torch.isclose(got.detach().double().cpu(), wrong.detach().double().cpu(), atol, rtol, True).all())

    return same


def compare_tensors(
    name: str,
    got: object,
    expected: torch.Tensor,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    args: tuple = (),
    mistakes: Iterable[Mistake] = (),
) -> None:
    """Raise :class:`CheckFailed` naming the first difference between ``got`` and ``expected``, and its likely cause.

    ``mistakes`` are tried on ``args`` (the input ``got`` was computed from) only when there is a difference.
    The default tolerance leaves room for any correct order of float32 arithmetic: the checks use small
    inputs (sums of at most 64 terms, values below 20), whose rounding in any order stays within a few
    units of 1.2e-7 relative, some 20 times below 1e-5; a real mistake is off by 1e-2 or more.
    """
    difference = tensor_difference(got, expected, atol, rtol)
    if difference is not None:
        raise fail(name, difference, diagnose(got, args, mistakes, close(atol, rtol)))


def compare_values(
    name: str, got: object, expected: object, args: tuple = (), mistakes: Iterable[Mistake] = ()
) -> None:
    """Like :func:`compare_tensors` for exact Python values (ints, lists, dicts, strings)."""
    if got != expected:
        cause = diagnose(got, args, mistakes, lambda a, b: a == b)
        raise fail(name, f"{wrapped('  expected ', expected)}\n{wrapped('  got      ', got)}", cause)


def tensors(atol: float = 1e-5, rtol: float = 1e-5) -> Callable[..., None]:
    """:func:`compare_tensors` with these tolerances, called as :func:`compare_values` is (a ``compare`` of
    :func:`check_cases`)."""

    def compare(name: str, got: object, expected: torch.Tensor, args: tuple, mistakes: Iterable[Mistake]) -> None:
        compare_tensors(name, got, expected, atol, rtol, args, mistakes)

    return compare


def as_list(got: object) -> object:
    """A list or tuple answer as a list (so that the message shows it as one); anything else as it is."""
    return list(got) if isinstance(got, (list, tuple)) else got


def as_dict(got: object) -> object:
    """A dict answer (a ``Counter``, say) as a plain dict; anything else as it is."""
    return dict(got) if isinstance(got, dict) else got


class Case(NamedTuple):
    """One test case of a check: how the message names it, the arguments of the learner's function, the answer."""

    label: str
    args: tuple
    expected: object


def check_cases(
    title: str | None,
    name: str,
    fn: Callable,
    cases: Sequence[Case],
    *,
    compare: Callable[..., None] = compare_values,
    mistakes: Iterable[Mistake] = (),
    forbidden: Sequence[Callable] = (),
    convert: Callable[[object], object] = lambda got: got,
    before: Callable[[Case, tuple, object], None] | None = None,
    after: Callable[[Case, object], None] | None = None,
) -> None:
    """The skeleton of a check: call ``fn`` (named ``name``) on each case, compare, name the mistake, or print ✓.

    ``fn`` gets a deep copy of each case's ``args`` (an answer that changes its input cannot change the case),
    through :func:`answer` (``forbidden`` calls fail); ``convert`` normalises the result (:func:`as_list`);
    ``compare(case.label, got, case.expected, case.args, mistakes)`` raises :class:`CheckFailed` on a difference,
    naming the catalogued mistake that gives ``got`` (:func:`compare_values`, or :func:`tensors`).
    ``before(case, given, got)`` runs ahead of the comparison (``given``: the copy ``fn`` was called with, to see
    whether it changed), ``after(case, got)`` once it passed: the checks of one exercise that the comparison
    does not make. Then ``✓ title: correct on N test cases`` (``title=None``: the caller, checking more, says ✓).
    """
    for case in cases:
        given = copy.deepcopy(case.args)
        got = convert(answer(name, fn, *given, forbidden=forbidden))
        if before is not None:
            before(case, given, got)
        compare(case.label, got, case.expected, case.args, mistakes)
        if after is not None:
            after(case, got)
    if title is not None:
        passed(title, len(cases))


def refuses(
    label: str, name: str, fn: Callable, args: tuple, mentions: Sequence[str], cause: str,
    forbidden: Sequence[Callable] = (),
) -> None:
    """``fn(*args)`` (named ``name``) must raise ``ValueError`` whose message names each of ``mentions``.

    A bad input is refused with a clear error (the project's rule); ``cause`` is what the message says when
    ``fn`` returns instead, or fails with another exception (an ``IndexError`` from deep inside, say).
    """
    try:
        answer(name, fn, *copy.deepcopy(args), forbidden=forbidden)
    except CheckFailed:
        raise
    except ValueError as error:
        missing = [m for m in mentions if m not in str(error)]
        if missing:
            cause = f"say what was wrong: name {' and '.join(missing)}"
            raise fail(label, wrapped("  the ValueError says ", str(error)), cause) from None
        return
    except Exception as error:  # noqa: BLE001 (any other exception is the learner's, and is reported)
        got = wrapped(f"  expected a ValueError, got {type(error).__name__}: ", str(error))
        raise fail(label, got, cause) from None
    raise fail(label, "  expected a ValueError, got a result", cause)


def passed(name: str, cases: int) -> None:
    print(f"✓ {name}: correct on {cases} test cases")
