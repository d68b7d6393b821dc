"""Scaling laws: the loss of a model of ``N`` parameters trained on ``D`` tokens, fitted and used.

Hoffmann et al. (2022, "Chinchilla") model the final loss as

    L(N, D) = E + A / N^alpha + B / D^beta

``E`` is the loss of a perfect model (the entropy of text), ``A / N^alpha`` what a finite model cannot
represent, ``B / D^beta`` what finitely many tokens cannot teach. Their **approach 3** fits the five
numbers to many (N, D, L) runs by minimising a Huber loss (delta = 1e-3) between ``log L`` and the log of
the prediction, written as ``LSE(a - alpha log N, b - beta log D, e)`` with ``A = exp(a)``, ``B = exp(b)``,
``E = exp(e)`` (a log-sum-exp keeps every term positive and the fit well scaled), with L-BFGS from a grid
of starting points, keeping the best: the objective has several local minima. scipy is not a dependency
of the course, so L-BFGS is PyTorch's (``torch.optim.LBFGS``, float64).

**Compute-optimal frontier.** Training costs about ``C = 6 N D`` FLOPs (:mod:`.flops`). On an *iso-FLOP
curve* (C fixed, N varied, D = C / 6N) the loss has a minimum; setting the derivative to zero gives

    N_opt(C) = G (C / 6)^(beta / (alpha + beta)),   D_opt(C) = (C / 6)^(alpha / (alpha + beta)) / G,
    G = (alpha A / (beta B))^(1 / (alpha + beta)).

LLaMA's argument starts here: the frontier minimises *training* compute, but a model is trained once and
run many times, so for a fixed inference budget a smaller model trained on far more tokens than
``D_opt`` (LLaMA 7B on 1T tokens, seven times Chinchilla's rule of thumb of 20 tokens per parameter) is
the better buy.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

HUBER_DELTA = 1e-3  # Chinchilla's


@dataclass(frozen=True)
class ScalingLaw:
    """``L(N, D) = E + A / N^alpha + B / D^beta`` (nats per token)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n_parameters, n_tokens):
        """The predicted final loss (numbers or numpy arrays, broadcast)."""
        return self.E + self.A / np.power(n_parameters, self.alpha) + self.B / np.power(n_tokens, self.beta)

    def compute_optimal(self, flops):
        """``(N_opt, D_opt)``: the model size and token count of least loss for ``flops = 6 N D`` (module docstring)."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        c = np.asarray(flops, dtype=float) / 6
        return g * c ** (self.beta / (self.alpha + self.beta)), c ** (self.alpha / (self.alpha + self.beta)) / g

    def iso_flop(self, flops: float, n_parameters):
        """The loss along the iso-FLOP curve ``flops = 6 N D``, at the given model sizes."""
        n = np.asarray(n_parameters, dtype=float)
        return self.loss(n, flops / (6 * n))


def _log_prediction(theta: torch.Tensor, log_n: torch.Tensor, log_d: torch.Tensor) -> torch.Tensor:
    """``log L`` for ``theta = (e, a, b, alpha, beta)``: ``LSE(a - alpha log N, b - beta log D, e)``."""
    e, a, b, alpha, beta = theta
    return torch.logsumexp(torch.stack([a - alpha * log_n, b - beta * log_d, e.expand_as(log_n)]), dim=0)


def default_starts() -> list[tuple[float, float, float, float, float]]:
    """A grid of initial ``(e, a, b, alpha, beta)`` in the spirit of Chinchilla's (which has 4,500 points),
    thinned to 3 x 3 x 3 x 2 x 2 = 108 starts: a few seconds each on a busy laptop CPU core in all."""
    return list(itertools.product([-1.0, 0.0, 1.0], [0.0, 5.0, 15.0], [0.0, 5.0, 15.0], [0.25, 1.0], [0.25, 1.0]))


def fit_scaling_law(
    n_parameters,
    n_tokens,
    losses,
    starts: list[tuple[float, float, float, float, float]] | None = None,
    delta: float = HUBER_DELTA,
) -> ScalingLaw:
    """Fit :class:`ScalingLaw` to runs of ``n_parameters`` x ``n_tokens`` reaching ``losses`` (sequences of
    one length, at least 5 runs): Chinchilla's approach 3 (module docstring), from each of ``starts``
    (initial ``(e, a, b, alpha, beta)``; default :func:`default_starts`), keeping the least Huber loss."""
    n, d, y = (torch.as_tensor(np.asarray(x, dtype=float)) for x in (n_parameters, n_tokens, losses))
    if not (n.ndim == d.ndim == y.ndim == 1 and len(n) == len(d) == len(y) >= 5):
        raise ValueError(
            "fit_scaling_law needs three sequences of one length, at least 5 runs; "
            f"got lengths {len(n)}, {len(d)}, {len(y)}"
        )
    if not (bool((n > 0).all()) and bool((d > 0).all()) and bool((y > 0).all()) and bool(torch.isfinite(y).all())):
        raise ValueError("fit_scaling_law needs positive model sizes, token counts and finite positive losses")
    log_n, log_d, log_y = n.log(), d.log(), y.log()

    def objective(theta: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.huber_loss(_log_prediction(theta, log_n, log_d), log_y, delta=delta, reduction="sum")

    best, best_value = None, math.inf
    for start in starts if starts is not None else default_starts():
        theta = _minimise(objective, torch.tensor(start, dtype=torch.float64))
        with torch.no_grad():
            value = float(objective(theta))
        if math.isfinite(value) and value < best_value:
            best, best_value = theta, value
    if best is None:
        raise ValueError("fit_scaling_law: no starting point gave a finite fit")
    e, a, b, alpha, beta = best.tolist()
    return ScalingLaw(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)


def _minimise(objective, start: torch.Tensor) -> torch.Tensor:
    """L-BFGS (strong Wolfe line search) on ``objective`` from ``start``; the parameters it ends at."""
    theta = start.clone().requires_grad_()
    optimizer = torch.optim.LBFGS(
        [theta], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = objective(theta)
        value.backward()
        return value

    optimizer.step(closure)
    return theta.detach()
