"""How sure is a benchmark number? Standard errors, and whether two models really differ.

A benchmark of ``n`` items measures accuracy with sampling noise: with ``n = 200`` and accuracy 0.6 the
standard error is about 0.035, so 0.60 and 0.65 cannot be told apart. Every accuracy here comes with its
standard error: the sample standard deviation of the per-item scores over ``sqrt(n)`` (what
lm-evaluation-harness reports as ``acc_stderr``).

Two models answering the *same* items are compared item by item (a paired comparison), which is far more
sensitive than comparing two accuracies with their own errors: items both get right or both get wrong say
nothing about the difference. :func:`mcnemar` tests the items where they disagree (McNemar 1947, exact
binomial form): if the models were equally good, each disagreement would go either way with probability 1/2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Estimate:
    """A mean over items with its standard error, and the number of items."""

    mean: float
    stderr: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.stderr:.3f}"


def mean_with_stderr(values: Sequence[float]) -> Estimate:
    """The mean of per-item scores (1.0 / 0.0 for accuracy, pass@k per problem, ...) and its standard error,
    ``sqrt(sum (x - mean)^2 / (n - 1)) / sqrt(n)``; the error of a single item is unknown (nan)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values: a mean needs at least one item")
    mean = math.fsum(values) / n
    if n == 1:
        return Estimate(mean, math.nan, 1)
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return Estimate(mean, math.sqrt(variance / n), n)


@dataclass(frozen=True)
class PairedComparison:
    """Model A against model B on the same items: the accuracy difference A - B with its paired standard
    error, the disagreements (``a_only``: A right and B wrong; ``b_only``: the reverse) and McNemar's p-value."""

    difference: Estimate
    a_only: int
    b_only: int
    p_value: float

    def significant(self, level: float = 0.05) -> bool:
        return self.p_value < level


def mcnemar(a_only: int, b_only: int) -> float:
    """McNemar's exact two-sided p-value: how likely a split of the disagreements at least this uneven is
    when each disagreement favours A or B with probability 1/2 (a binomial test, exact in integers)."""
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1))  # P(X <= k) * 2^n, exactly
    return min(1.0, 2 * tail / 2**n)


def compare(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> PairedComparison:
    """Paired comparison of two models' per-item correctness on the same items, in the same order."""
    if len(correct_a) != len(correct_b):
        raise ValueError(f"a paired comparison needs the same items: got {len(correct_a)} and {len(correct_b)} results")
    a_only = sum(bool(a) and not b for a, b in zip(correct_a, correct_b))
    b_only = sum(bool(b) and not a for a, b in zip(correct_a, correct_b))
    difference = mean_with_stderr([float(a) - float(b) for a, b in zip(correct_a, correct_b)])
    return PairedComparison(difference, a_only, b_only, mcnemar(a_only, b_only))
