"""RMSNorm: layer normalisation without the mean (Zhang and Sennrich, 2019).

LayerNorm subtracts the mean of the features, divides by their standard
deviation, then scales and shifts. RMSNorm keeps only the rescaling: it divides
by the root mean square ``sqrt(mean(x**2) + eps)`` and multiplies by a learned
gain. No mean, no bias: one reduction instead of two, and it works as well in
practice. LLaMA applies it *before* each sub-layer (pre-normalisation), which
keeps training stable at depth.
"""

from __future__ import annotations

import torch
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalise the last dimension of ``x`` to unit root mean square, then scale by ``weight``.

    The statistics are taken in at least float32 (float64 stays float64) even
    for bf16/fp16 inputs, because a mean of squares in 16 bits loses most of
    its precision.

    Shapes: ``x`` is ``(..., dim)``, ``weight`` is ``(dim,)``; the result has the shape of ``x``.
    """
    x32 = x.to(torch.promote_types(x.dtype, torch.float32))
    normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * normed.type_as(x)


class RMSNorm(nn.Module):
    """Root-mean-square normalisation with a learned per-feature gain (initialised to 1)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., dim) -> (..., dim)``."""
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
