"""Chapter 12's exercises (evaluation): the normalised scores of a multiple-choice item's choices, and pass@k.

Each check calls the learner's function through the skeleton of :mod:`.feedback`
(:func:`~.feedback.check_cases`, which enforces the exercise's forbidden calls), compares with the package
(``evaluation.multiple_choice.choice_scores``, ``evaluation.pass_at_k.pass_at_k``) and raises
:class:`~.feedback.CheckFailed` naming the case, what differed and, when the answer matches a common
mistake listed here, its likely cause. Every message line fits what ``nbgrader validate`` shows.

The learner's scorer gets each choice's token log-probabilities as a tensor (what ``Scored.token_logprobs``
holds), so that summing them is part of the exercise; the package's ``choice_scores`` takes the ``Scored``
objects themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..evaluation.likelihood import Scored
from ..evaluation.multiple_choice import answer_choices, choice_scores
from ..evaluation.pass_at_k import pass_at_k
from .feedback import Case, Mistake, check_cases, diagnose, fail, refuses, wrapped

# --- the common wrong answers: the normalised scores -----------------------------------------------


def _choice_scores(token_logprobs, choices, normalization, baseline=None, *, score="log", count="chars",
                   normalise=True, answer="difference"):  # fmt: skip
    """The scores of :func:`~..evaluation.multiple_choice.choice_scores`, or with one of the common mistakes.

    ``score``: ``"log"`` (the sum of log-probabilities), ``"probabilities"`` (their probabilities summed) or
    ``"probability"`` (exp of the sum); ``count``: what ``"char"`` divides by (``"chars"`` without the leading
    space, ``"with space"``, ``"tokens"``); ``answer``: how the baseline enters (``"difference"``, ``"ratio"``,
    ``"reversed"``).
    """

    def total(logprobs: torch.Tensor) -> float:
        logprobs = logprobs.double()
        if score == "probabilities":
            return float(logprobs.exp().sum())
        if score == "probability":
            return float(logprobs.sum().exp())
        return float(logprobs.sum())

    sums = [total(t) for t in token_logprobs]
    if not normalise or normalization == "none":
        return sums
    if normalization == "token":
        return [s / len(t) for s, t in zip(sums, token_logprobs)]
    if normalization == "char":
        sizes = {
            "chars": [max(1, len(c.lstrip(" "))) for c in choices],
            "with space": [len(c) for c in choices],
            "tokens": [len(t) for t in token_logprobs],
        }[count]
        return [s / size for s, size in zip(sums, sizes)]
    if normalization == "answer":
        base = [total(t) for t in baseline]
        if answer == "ratio":
            return [s / b for s, b in zip(sums, base)]
        if answer == "reversed":
            return [b - s for s, b in zip(sums, base)]
        return [s - b for s, b in zip(sums, base)]
    raise ValueError(f"unknown normalization {normalization!r}")


def _mistake(**kwargs) -> Callable:
    return lambda token_logprobs, choices, normalization, baseline=None: _choice_scores(
        token_logprobs, choices, normalization, baseline, **kwargs
    )


CHOICE_SCORES = [
    Mistake(
        "looks like the probabilities of the tokens are summed:\n"
        "P(choice) is the PRODUCT of its tokens' probabilities, so its log is the\n"
        "SUM of their log-probabilities: add token_logprobs, do not exp them",
        _mistake(score="probabilities"),
    ),
    Mistake(
        "looks like the score is a probability, exp(sum of log-probabilities):\n"
        "keep it in logs: the sum of the log-probabilities (a probability of many\n"
        "tokens underflows, and normalising divides the LOG-probability)",
        _mistake(score="probability"),
    ),
    Mistake(
        "looks like the score is not normalised:\n"
        "'token' divides the sum by the number of tokens, 'char' by the number of\n"
        "characters, 'answer' subtracts the sum after 'Answer:'; only 'none' is the sum",
        _mistake(normalise=False),
    ),
    Mistake(
        "looks like 'char' divides by the number of tokens:\n"
        "divide by the number of characters of the choice text (a count that does\n"
        "not depend on the tokenizer), len(choice.lstrip(' '))",
        _mistake(count="tokens"),
    ),
    Mistake(
        "looks like the leading space is counted as a character:\n"
        "the space only separates the choice from the context; count the\n"
        "characters of choice.lstrip(' '), as lm-evaluation-harness does",
        _mistake(count="with space"),
    ),
    Mistake(
        "looks like the score is divided by the baseline's:\n"
        "'answer' SUBTRACTS: log P(choice | context) - log P(choice | 'Answer:'),\n"
        "the log of the ratio of the two probabilities",
        _mistake(answer="ratio"),
    ),
    Mistake(
        "looks like the difference is the wrong way round:\n"
        "log P(choice | context) - log P(choice | 'Answer:'): a choice the question\n"
        "makes MORE probable than it is anyway gets a higher score",
        _mistake(answer="reversed"),
    ),
]

# --- the common wrong answers: pass@k --------------------------------------------------------------


def _product(n: int, c: int, k: int, first: int, last: int) -> float:
    """1 - prod_{i = first}^{last} (1 - k / i): the estimator with the product's bounds as given."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(first, last + 1))


PASS_AT_K = [
    Mistake(
        "looks like 1 - (1 - c/n)**k, as if the k samples were drawn WITH\n"
        "replacement: that estimate is biased low. The k samples are k different\n"
        "ones of the n: pass@k = 1 - C(n - c, k) / C(n, k)",
        lambda n, c, k: 1.0 - (1.0 - c / n) ** k,
    ),
    Mistake(
        "looks like the product starts one factor early, at i = n - c:\n"
        "C(n - c, k) / C(n, k) = prod of (1 - k / i) for i = n - c + 1 ... n\n"
        "(range(n - c + 1, n + 1)): c factors",
        lambda n, c, k: _product(n, c, k, n - c, n - 1),
    ),
    Mistake(
        "looks like the product has one factor too many, from i = n - c:\n"
        "C(n - c, k) / C(n, k) = prod of (1 - k / i) for i = n - c + 1 ... n\n"
        "(range(n - c + 1, n + 1)): c factors",
        lambda n, c, k: _product(n, c, k, n - c, n),
    ),
    Mistake(
        "looks like the product stops one factor early, at i = n - 1:\n"
        "C(n - c, k) / C(n, k) = prod of (1 - k / i) for i = n - c + 1 ... n\n"
        "(range(n - c + 1, n + 1)): the end of a range is excluded",
        lambda n, c, k: _product(n, c, k, n - c + 1, n - 1),
    ),
    Mistake(
        "looks like the chance that all k samples FAIL, C(n - c, k) / C(n, k):\n"
        "pass@k is the chance that at least one passes: 1 minus that",
        lambda n, c, k: 1.0 - _product(n, c, k, n - c + 1, n),
    ),
    Mistake(
        "looks like c / n whatever k: that is pass@1 only.\n"
        "With k tries the chance that one passes grows: 1 - C(n - c, k) / C(n, k)",
        lambda n, c, k: c / n,
    ),
    Mistake(
        "looks like k * c / n (capped at 1): the k tries overlap, their chances\n"
        "do not add up; pass@k = 1 - C(n - c, k) / C(n, k)",
        lambda n, c, k: min(1.0, k * c / n),
    ),
]

# --- the checks ------------------------------------------------------------------------------------


def _floats(got: object) -> object:
    """A list, tuple or 1-d tensor of numbers as a list of Python floats; anything else as it is."""
    if isinstance(got, torch.Tensor) and got.ndim == 1:
        got = got.tolist()
    if isinstance(got, (list, tuple)) and all(isinstance(x, (int, float, torch.Tensor)) for x in got):
        if all(not isinstance(x, torch.Tensor) or x.numel() == 1 for x in got):
            return [float(x) for x in got]
    return got


def _same_scores(a: object, b: object) -> bool:
    """Equal up to float32 rounding of the result: the sums are float64 (another correct order is some 1e-15
    off), but scores returned as a float32 tensor are rounded once, 6e-8 relative; 1e-6 leaves room, and every
    catalogued mistake moves a score by 1% or more."""
    return (
        isinstance(a, list)
        and isinstance(b, list)
        and len(a) == len(b)
        and all(isinstance(x, float) and math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-12) for x, y in zip(a, b))
    )


def _compare_scores(label: str, got: object, expected: list, args: tuple, mistakes) -> None:
    if not isinstance(got, list) or not all(isinstance(x, float) for x in got):
        raise fail(label, f"  expected a list of {len(expected)} floats, got {type(got).__name__}")
    if not _same_scores(got, expected):
        cause = diagnose(got, args, mistakes, lambda a, b: _same_scores(a, _floats(b)))
        rounded = [round(x, 6) for x in got]
        raise fail(label, f"{wrapped('  expected ', [round(x, 6) for x in expected])}\n{wrapped('  got      ', rounded)}",
                   cause)  # fmt: skip


# A worked item: three choices of different lengths in tokens and characters, log-probabilities after the
# question and after "Answer:". The hidden tests of the solution use it too.
HAND_LOGPROBS = ([-1.0, -2.0], [-0.5], [-1.5, -1.0, -0.25])
HAND_CHOICES = (" red fox", " ox", " grey wolf pup")
HAND_BASELINE = ([-3.0, -2.5], [-4.0], [-2.0, -2.0, -1.0])


def _random_item(seed: int, n_choices: int) -> tuple[list[torch.Tensor], list[str], list[torch.Tensor]]:
    """An item with ``n_choices`` choices of 1 to 12 tokens and words of 2 to 9 letters, float64 log-probabilities."""
    generator = torch.Generator().manual_seed(seed)
    logprobs, baseline, choices = [], [], []
    for _ in range(n_choices):
        tokens = int(torch.randint(1, 13, (1,), generator=generator))
        logprobs.append(-torch.rand(tokens, generator=generator, dtype=torch.float64) * 4 - 0.01)
        baseline.append(-torch.rand(tokens, generator=generator, dtype=torch.float64) * 6 - 0.01)
        words = int(torch.randint(1, 5, (1,), generator=generator))
        sizes = torch.randint(2, 10, (words,), generator=generator).tolist()
        choices.append(" " + " ".join("w" * size for size in sizes))
    return logprobs, choices, baseline


def check_choice_scores(fn: Callable) -> None:
    """``fn(token_logprobs, choices, normalization, baseline=None)``: one score per choice, as the package's
    ``choice_scores`` computes it from the same log-probabilities.

    ``token_logprobs``: one float64 tensor ``(tokens,)`` per choice, the log-probability of each of its tokens
    after the context; ``choices``: the choices' texts, each with its leading space; ``baseline``: (for
    ``"answer"``) the same after the context ``"Answer:"``.
    """
    items = [([torch.tensor(t, dtype=torch.float64) for t in HAND_LOGPROBS], list(HAND_CHOICES),
              [torch.tensor(t, dtype=torch.float64) for t in HAND_BASELINE])]  # fmt: skip
    items += [_random_item(seed, n_choices) for seed, n_choices in [(1, 4), (2, 4), (3, 5), (4, 2)]]
    cases = []
    for normalization in ("none", "token", "char", "answer"):
        for number, (logprobs, choices, baseline) in enumerate(items):
            given = baseline if normalization == "answer" else None
            scored = [Scored(t, False) for t in logprobs]
            base = None if given is None else [Scored(t, False) for t in given]
            expected = choice_scores(scored, choices, normalization, base)
            label = f"my_choice_scores(item {number}: {len(choices)} choices, normalization={normalization!r})"
            cases.append(Case(label, (logprobs, choices, normalization, given), expected))
    forbidden = [choice_scores, answer_choices]
    check_cases(
        None,
        "my_choice_scores",
        fn,
        cases,
        compare=_compare_scores,
        mistakes=CHOICE_SCORES,
        forbidden=forbidden,
        convert=_floats,
    )
    logprobs, choices, _ = items[0]
    refuses(
        "my_choice_scores(item 0, normalization='bytes')",
        "my_choice_scores",
        fn,
        (logprobs, choices, "bytes"),
        ["bytes"],
        "refuse an unknown normalization with a ValueError naming it",
        forbidden,
    )
    print(f"✓ normalised choice scores: correct on {len(cases) + 1} test cases")


# (n, c, k): pass@1 = c / n, and k = 2 (where every catalogued mistake gives its own value); every k of n = 7 (the hidden tests enumerate its k-subsets); none or all passing;
# n - c < k (every k-subset holds a pass); n = 200, where C(200, 100) ~ 9e58 is far beyond exact float ratios
PASS_CASES = [
    (10, 3, 1),
    (10, 3, 2),
    *[(7, 3, k) for k in range(1, 8)],
    (5, 0, 3),
    (5, 5, 2),
    (6, 4, 3),
    (1, 1, 1),
    (20, 7, 10),
    (200, 13, 100),
    (200, 1, 1),
    (200, 190, 10),
    (200, 2, 150),
]


def _same_probability(label: str, got: object, expected: float, args: tuple, mistakes) -> None:
    """Equal up to float64 rounding: a product of at most 200 factors, each within 1.1e-16 relative, so another
    correct order (or an exact ratio of binomials) is some 1e-14 off; 1e-9 leaves room, and every catalogued
    mistake is off by 1e-3 or more."""

    def same(a, b):
        return isinstance(a, (int, float)) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)

    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise fail(label, f"  expected a float, got {type(got).__name__}", "return a Python float (float(...))")
    if not same(got, expected):
        raise fail(label, f"  expected {expected!r}, got {got!r}", diagnose(got, args, mistakes, same))


def check_pass_at_k(fn: Callable[[int, int, int], float]) -> None:
    """``fn(n, c, k)``: the unbiased estimate of pass@k from ``n`` samples of which ``c`` passed, as the package's
    ``pass_at_k``; ``k > n`` is refused with a ValueError."""
    cases = [Case(f"my_pass_at_k(n={n}, c={c}, k={k})", (n, c, k), pass_at_k(n, c, k)) for n, c, k in PASS_CASES]
    check_cases(None, "my_pass_at_k", fn, cases, compare=_same_probability, mistakes=PASS_AT_K, forbidden=[pass_at_k])
    refuses(
        "my_pass_at_k(n=5, c=2, k=10)",
        "my_pass_at_k",
        fn,
        (5, 2, 10),
        ["10", "5"],
        "pass@k needs k <= n samples: raise a ValueError naming k and n",
        [pass_at_k],
    )
    print(f"✓ pass@k: correct on {len(cases) + 1} test cases")
