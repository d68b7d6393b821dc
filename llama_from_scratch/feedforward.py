"""The SwiGLU feed-forward network (Shazeer, 2020), as used in every LLaMA block.

A transformer's feed-forward layer transforms each token on its own. The
classic version is ``W2 relu(W1 x)``. SwiGLU replaces the single activation by
a *gated* one: one projection ``W1 x`` goes through SiLU (``x * sigmoid(x)``,
also called Swish), a second projection ``W3 x`` is left linear, and their
element-wise product is projected back by ``W2``:

    SwiGLU(x) = W2 (silu(W1 x) * W3 x)

The gate lets the network switch features on and off smoothly; PaLM and LLaMA
found it trains to lower loss than ReLU or GELU at the same compute. Because
there are now three matrices, the hidden size is 2/3 of the usual ``4 * dim``
(see :func:`llama_from_scratch.config.ffn_hidden_dim`).

Names follow Meta's code: ``w1`` (gate), ``w3`` (up), ``w2`` (down). Hugging
Face calls them ``gate_proj``, ``up_proj`` and ``down_proj``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """``(..., dim) -> (..., dim)`` through a gated hidden layer of size ``hidden_dim``."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
