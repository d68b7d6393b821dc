"""Two 4-bit integers in one byte: ``pack_int4`` and ``unpack_int4``.

PyTorch has no 4-bit dtype, so 4-bit weights travel as uint8, two per byte. Neighbours share a
byte: value ``2i`` in the low nibble, value ``2i + 1`` in the high nibble::

    values  q[0]=0b0011 (3)   q[1]=0b1010 (10)
    byte    1010 0011  = 0xA3 = 163
            ^^^^ ^^^^
            q[1] q[0]

    pack:    byte = q[2i] | (q[2i+1] << 4)      (shift the second value up 4 places, OR them)
    unpack:  q[2i] = byte & 0x0F                 (keep the low 4 bits)
             q[2i+1] = byte >> 4                 (shift the high 4 bits down; uint8 shifts in zeros)

(llama.cpp's blocks pair value ``j`` with value ``j + 16`` instead, see
:func:`.ggml_blocks.pack_halves`: a layout chosen for its SIMD kernels. Any fixed pairing works.)
"""

from __future__ import annotations

import torch


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """``(..., n)`` integers in 0..15 -> ``(..., n // 2)`` uint8, two values per byte; ``n`` must be even."""
    if q.dtype.is_floating_point or q.dtype.is_complex or q.dtype == torch.bool:
        raise ValueError(f"pack_int4 takes integer values 0..15, got a {q.dtype} tensor")
    if q.ndim == 0 or q.shape[-1] % 2 != 0:
        raise ValueError(f"pack_int4 needs an even number of values in the last dimension, got shape {tuple(q.shape)}")
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > 15):
        raise ValueError(f"pack_int4 takes values 0..15, got values from {int(q.min())} to {int(q.max())}")
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """``(..., n // 2)`` uint8 -> ``(..., n)`` uint8 values 0..15: the inverse of :func:`pack_int4`."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_int4 takes uint8 bytes, got a {packed.dtype} tensor")
    return torch.stack([packed & 0x0F, packed >> 4], dim=-1).flatten(-2)
