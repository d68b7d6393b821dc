"""Two 4-bit integers in one byte: ``pack_int4`` and ``unpack_int4``.

PyTorch has no 4-bit dtype, so 4-bit weights travel as uint8, two per byte. Which two share a byte
is a choice; we make llama.cpp's: the first half of a run of ``n`` values goes to the low nibbles,
the second half to the high nibbles, so byte ``j`` holds values ``j`` and ``j + n/2``::

    values   q[0] q[1] ... q[n/2-1] | q[n/2] ... q[n-1]
    byte j   [ q[j + n/2] | q[j] ]      high nibble | low nibble

    pack:    byte[j] = q[j] | (q[j + n/2] << 4)     (shift the second value up 4 places, OR them)
    unpack:  q[j]       = byte[j] & 0x0F             (keep the low 4 bits)
             q[j + n/2] = byte[j] >> 4               (shift the high 4 bits down; uint8 shifts in zeros)

Why not neighbours (``q[2j]`` with ``q[2j+1]``)? Speed. A kernel that multiplies packed weights by
an input ``x`` unpacks all low nibbles at once and multiplies them by ``x[0 : n/2]``, then all high
nibbles by ``x[n/2 : n]``: two contiguous slices, which vector instructions load in one go.
Neighbours would pair each byte with ``x[0::2]`` and ``x[1::2]``, strided reads that a compiler
vectorises badly (chapter 09 times both: several times slower). The int4 layers pack each group of 32/64/128
weights this way, exactly as llama.cpp packs each block of 32 (:func:`.ggml_blocks.pack_halves`).
"""

from __future__ import annotations

import torch


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """``(..., n)`` integers in 0..15 -> ``(..., n // 2)`` uint8: byte ``j`` = ``q[j] | q[j + n/2] << 4``."""
    if q.dtype.is_floating_point or q.dtype.is_complex or q.dtype == torch.bool:
        raise ValueError(f"pack_int4 takes integer values 0..15, got a {q.dtype} tensor")
    if q.ndim == 0 or q.shape[-1] % 2 != 0:
        raise ValueError(f"pack_int4 needs an even number of values in the last dimension, got shape {tuple(q.shape)}")
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > 15):
        raise ValueError(f"pack_int4 takes values 0..15, got values from {int(q.min())} to {int(q.max())}")
    q = q.to(torch.uint8)
    half = q.shape[-1] // 2
    return q[..., :half] | (q[..., half:] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """``(..., n // 2)`` uint8 -> ``(..., n)`` uint8 values 0..15: the inverse of :func:`pack_int4`."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_int4 takes uint8 bytes, got a {packed.dtype} tensor")
    return torch.cat([packed & 0x0F, packed >> 4], dim=-1)
