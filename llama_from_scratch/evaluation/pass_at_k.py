"""pass@k: the chance that at least one of ``k`` samples solves a problem, estimated from ``n >= k`` samples.

Drawing exactly ``k`` samples per problem and checking whether one passes is a noisy estimate. Chen et al.
(2021, "Evaluating Large Language Models Trained on Code") draw ``n`` samples, count the ``c`` that pass,
and average over every subset of ``k`` of them: a subset fails only if all its ``k`` samples come from the
``n - c`` failures, so

    pass@k = 1 - C(n - c, k) / C(n, k),

unbiased for every ``n >= k``. The binomial coefficients overflow a float for ``n`` in the hundreds, so the
ratio is computed as a product of ``c`` factors, each in (0, 1]:

    C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i).

The tempting ``1 - (1 - c / n)^k`` (sampling with replacement) is biased low.
"""

from __future__ import annotations

import math

from ..errors import is_int


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased, numerically stable estimate of pass@k from ``n`` samples of which ``c`` passed."""
    if not (is_int(n) and is_int(c) and is_int(k)) or not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs integers 0 <= c <= n and 1 <= k <= n, got n={n!r}, c={c!r}, k={k!r}")
    if n - c < k:
        return 1.0  # every k-subset holds a passing sample
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
