"""INT4 weight-only quantization, group-wise: a scale (and a minimum) per ``group_size`` weights.

Sixteen levels are too few for a whole row: one large weight would stretch the scale and round
every small weight of the row to zero. So each row of ``(out_features, in_features)`` is cut into
groups of ``group_size`` consecutive inputs (32, 64 or 128), each with its own scale: an outlier
costs precision only in its group. Smaller groups: lower error, more scales to store.

Asymmetric (default; "scale and minimum", as llama.cpp's Q4_1): the group's range ``[lo, hi]``
is cut into 15 steps::

    scale = (hi - lo) / 15,   q = round((w - lo) / scale) in 0..15,   w ~ scale * q + lo

Symmetric (as GPTQ's default, llama.cpp's Q4_0 is a variant): ``0`` maps to ``0``::

    scale = max|w| / 7,       q = round(w / scale) in -7..7,          w ~ scale * q

stored as ``q + 8`` in 1..15 (the code 0, i.e. -8, stays unused so that the range is symmetric).
Either way the rounding error is at most ``scale / 2``. The asymmetric scale is always the finer,
``(hi - lo) / 15 <= 2 max|w| / 15 < max|w| / 7``, paid for with a stored minimum per group. Two codes share a byte
(:mod:`.packing`). Storage at ``group_size`` 64 with float32 scales: 0.5 byte per weight +
8 bytes per 64 weights (4 symmetric), i.e. 5 (4.5) bits per weight, ~6.4x (7.1x) less than float32.
"""

from __future__ import annotations

import torch

from ..errors import is_int
from . import int4_kernel
from .linear import QuantizedEmbedding, QuantizedLinear
from .packing import pack_int4, unpack_int4

GROUP_SIZES = (32, 64, 128)


def n_groups(in_features: int, group_size: int) -> int:
    """Groups per row: the last one is padded when ``group_size`` does not divide ``in_features``
    (SmolLM2's 576 = 4.5 groups of 128)."""
    if not is_int(group_size) or group_size not in GROUP_SIZES:  # 64.0 == 64, but is no group size
        raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {group_size!r}")
    return -(-in_features // group_size)  # ceiling division


def quantize_int4(
    weight: torch.Tensor, group_size: int, symmetric: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(out, in)`` float -> packed uint8 ``(out, groups * group_size // 2)``, ``scales`` and ``mins``.

    ``scales`` and ``mins`` are float32 ``(out, groups)``; ``mins`` is None when ``symmetric``. A partial last
    group is padded by repeating the row's last weight, which leaves that group's range, and so its scale,
    as it is; the padded codes meet zeros in the input (:meth:`Int4Linear.matmul_one_row`) or are cut off
    (:func:`dequantize_int4`).
    """
    out_features, in_features = weight.shape
    groups = n_groups(in_features, group_size)
    padded = torch.nn.functional.pad(weight.float()[None], (0, groups * group_size - in_features), mode="replicate")[0]
    groups = padded.reshape(out_features, groups, group_size)
    if symmetric:
        scales = groups.abs().amax(dim=-1) / 7
        lo = None
        shifted = groups
    else:
        lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)
        scales = (hi - lo) / 15
        shifted = groups - lo[..., None]
    divisor = torch.where(scales == 0, torch.ones_like(scales), scales)  # a constant group: q = 0 (+ lo)
    q = torch.round(shifted / divisor[..., None])
    q = q.clamp(-7, 7) + 8 if symmetric else q.clamp(0, 15)
    packed = pack_int4(q.to(torch.uint8))  # (out, groups, group_size) -> (out, groups, group_size // 2)
    return packed.reshape(out_features, -1), scales, lo


def dequantize_int4(
    packed: torch.Tensor,
    scales: torch.Tensor,
    mins: torch.Tensor | None,
    group_size: int,
    in_features: int | None = None,
) -> torch.Tensor:
    """``scale * q + min`` (asymmetric) or ``scale * (q - 8)`` (symmetric) in float32: ``(out, in_features)``,
    the padding of a partial last group cut off (``in_features`` defaults to every stored column)."""
    rows, groups = scales.shape
    q = unpack_int4(packed.view(rows, groups, group_size // 2)).float()  # (rows, groups, group_size)
    w = scales[..., None] * (q if mins is not None else q - 8)
    if mins is not None:
        w = w + mins[..., None]
    return w.view(rows, groups * group_size)[:, :in_features]


class Int4Linear(QuantizedLinear):
    """``nn.Linear`` with group-wise 4-bit weights: buffers ``qweight`` (uint8, two per byte), ``scales``
    and, unless ``symmetric``, ``mins``."""

    scheme = "int4"
    setting_names = ("group_size", "symmetric")
    use_kernel = True  # set False on a layer (not saved) to keep it on the PyTorch path, as the benchmark's baseline

    def __init__(self, in_features: int, out_features: int, group_size: int = 64, symmetric: bool = False):
        super().__init__(in_features, out_features)
        self.group_size = group_size
        self.symmetric = symmetric
        groups = n_groups(in_features, group_size)
        self.register_buffer("qweight", torch.empty(out_features, groups * group_size // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.empty(out_features, groups, dtype=torch.float32))
        # a symmetric layer has no minimums: a None buffer is left out of the state_dict
        self.register_buffer("mins", None if symmetric else torch.empty(out_features, groups, dtype=torch.float32))

    def quantize_(self, weight: torch.Tensor) -> None:
        qweight, scales, mins = quantize_int4(weight, self.group_size, self.symmetric)
        self.qweight, self.scales = qweight, scales
        if mins is not None:
            self.mins = mins

    def dequantize(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        pick = slice(None) if rows is None else rows
        mins = None if self.mins is None else self.mins[pick]
        return dequantize_int4(self.qweight[pick], self.scales[pick], mins, self.group_size, self.in_features)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``: through the C++ kernel (:mod:`.int4_kernel`: int8
        activations, integer dot products) for float32 CPU inputs of at most ``int4_kernel.MAX_ROWS`` rows
        (decoding) that need no gradient, unless :attr:`use_kernel` is False, where it is built; otherwise as every
        quantized layer does."""
        rows = x.numel() // self.in_features
        if (
            self.use_kernel
            and x.dtype == torch.float32
            and x.device.type == "cpu"
            and rows <= int4_kernel.MAX_ROWS
            and not (x.requires_grad and torch.is_grad_enabled())  # the op has no backward
            and kernel_available()
        ):
            y = int4_kernel.int4_matmul(
                x.reshape(rows, self.in_features), self.qweight, self.scales, self.mins, self.group_size
            )
            return y.view(*x.shape[:-1], self.out_features)
        return super().matmul(x)

    def matmul_one_row(self, x: torch.Tensor) -> torch.Tensor:
        # Each byte holds code j of a group (low nibble) and code j + group_size/2 (high nibble), so the
        # low nibbles meet the first half of each group of x and the high nibbles its second half.
        half = self.group_size // 2
        packed = self.qweight.view(self.out_features, -1, half)  # (out, groups, half)
        x = torch.nn.functional.pad(x, (0, packed.shape[1] * self.group_size - self.in_features))  # zeros meet padding
        x = x.view(-1, 2, half)  # (groups, 2, half): [:, 0] first halves, [:, 1] second halves
        scales = self.scales[..., None].to(x.dtype)  # (out, groups, 1)
        offset = self.mins[..., None].to(x.dtype) if self.mins is not None else -8 * scales
        w_first = (packed & 0x0F).to(x.dtype) * scales + offset  # (out, groups, half): the weights, never stored
        w_second = (packed >> 4).to(x.dtype) * scales + offset
        return (w_first * x[:, 0] + w_second * x[:, 1]).sum(dim=(-1, -2))  # (out,)


@torch.compiler.assume_constant_result  # torch.compile asks once, while tracing, and keeps the answer
def kernel_available() -> bool:
    return int4_kernel.available()


class Int4Embedding(QuantizedEmbedding, Int4Linear):
    """An embedding table stored as :class:`Int4Linear` stores a weight: groups along each token's row."""
