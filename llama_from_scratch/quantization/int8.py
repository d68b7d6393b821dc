"""INT8 weight-only quantization, symmetric, one scale per output channel ("absmax").

Each row ``w[o, :]`` of a ``(out_features, in_features)`` weight (the weights feeding output ``o``)
gets its own scale, chosen so that the row's largest magnitude lands on 127::

    scale[o] = max_i |w[o, i]| / 127
    q[o, i]  = round(w[o, i] / scale[o])          int8 in [-127, 127]
    w[o, i] ~ scale[o] * q[o, i]                  error <= scale[o] / 2

-128 is left unused, so that ``q`` and ``-q`` are both representable and 0 is exact. A row of zeros
has scale 0 and ``q`` = 0. One scale per *output* channel (not per tensor) because rows differ in
size, and a scale per row commutes with the matmul: ``y[o] = scale[o] * (q[o, :] . x)``, which an
integer kernel can exploit, and which :meth:`Int8Linear.matmul_tile` does: it multiplies by the codes (made
float, exact) and scales the outputs, so the float weight is never formed, not even a tile of it (twice as
fast as dequantizing tiles for a serving step of SmolLM2, measured). Storage: 1 byte per weight plus 4 per
row (float32 scales), ~4x less than float32. This is gpt-fast's ``WeightOnlyInt8Linear``.
"""

from __future__ import annotations

import torch

from .linear import QuantizedEmbedding, QuantizedLinear


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, in)`` float -> ``q`` int8 ``(out, in)`` and ``scales`` float32 ``(out,)``."""
    weight = weight.float()
    scales = weight.abs().amax(dim=1) / 127
    divisor = torch.where(scales == 0, torch.ones_like(scales), scales)  # a zero row: q = 0 / 1 = 0
    q = torch.round(weight / divisor[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``scales[o] * q[o, i]`` in float32: ``(out, in)``."""
    return q.float() * scales[:, None]


class Int8Linear(QuantizedLinear):
    """``nn.Linear`` with an int8 weight and a float32 scale per output channel (buffers ``qweight``, ``scales``)."""

    scheme = "int8"

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.empty(out_features, dtype=torch.float32))

    def quantize_(self, weight: torch.Tensor) -> None:
        self.qweight, self.scales = quantize_int8(weight)

    def dequantize(self, rows: torch.Tensor | slice | None = None) -> torch.Tensor:
        if rows is None:
            return dequantize_int8(self.qweight, self.scales)
        return dequantize_int8(self.qweight[rows], self.scales[rows])

    def matmul_tile(self, x: torch.Tensor, rows: slice) -> torch.Tensor:
        # the scale leaves the sum here too: it multiplies the (..., rows) outputs, not the (rows, in) weights
        return torch.nn.functional.linear(x, self.qweight[rows].to(x.dtype)) * self.scales[rows].to(x.dtype)

    def matmul_one_row(self, x: torch.Tensor) -> torch.Tensor:
        # y[o] = scale[o] * sum_i q[o, i] x[i]: the scale leaves the sum, one multiply per output
        return (self.qweight.to(x.dtype) * x).sum(dim=-1) * self.scales.to(x.dtype)  # (out, in) * (in,) -> (out,)


class Int8Embedding(QuantizedEmbedding, Int8Linear):
    """An embedding table stored as :class:`Int8Linear` stores a weight: one scale per token's row."""
