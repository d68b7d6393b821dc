"""llama.cpp's classic block formats, written out: Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1.

A GGUF row of ``n`` float32 values is cut into blocks of 32; each block is stored on its own as one
or two float16 numbers (a scale ``d``, sometimes a minimum ``m``) and 32 small integers ``q``:

* ``_0`` formats are symmetric: ``w = d * (q - offset)``, the block's largest magnitude sets ``d``;
* ``_1`` formats are asymmetric: ``w = d * q + m``, the block's range ``[min, max]`` sets ``d`` and ``m``.

Every function here produces the same bytes as ``gguf.quants.quantize(x, GGMLQuantizationType.Q4_0)``
(and the same floats as ``gguf.quants.dequantize``): the float32 operations are the same ones, in the
same order, and IEEE float32 arithmetic is exactly rounded, so equal operations give equal bits.
Two details of llama.cpp matter for that:

* the integers are computed with the float32 scale ``d`` *before* it is rounded to float16 (the
  stored scale is then slightly off the one used to round: part of the format's error);
* Q8_0 rounds half away from zero (C's ``roundf``); the 4- and 5-bit formats add ``offset + 0.5``
  and truncate, which is the same rounding for the non-negative numbers they truncate.

Arrays are numpy, as in the ``gguf`` package: ``quantize_*(x)`` takes float32 ``(..., n)`` with ``n``
a multiple of 32 and gives uint8 ``(..., n // 32 * BYTES_PER_BLOCK)``; ``dequantize_*`` goes back.
"""

from __future__ import annotations

import numpy as np
import torch

from .packing import pack_int4, unpack_int4

BLOCK = 32  # values per block, in every format of this module
BYTES_PER_BLOCK = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24}


def blocks_of(x: np.ndarray, fmt: str) -> np.ndarray:
    """``(..., n)`` float values -> ``(n_blocks, 32)`` float32, refusing what no block format can hold."""
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[-1] % BLOCK != 0:
        raise ValueError(f"{fmt}: rows of {x.shape[-1] if x.ndim else 'a scalar'} values; need a multiple of {BLOCK}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x.ravel()))
        raise ValueError(
            f"{fmt}: {bad.size} value(s) are NaN or infinite (first at flat index {bad[0]}); cannot quantize"
        )
    return x.reshape(-1, BLOCK)


def byte_blocks(data: np.ndarray, fmt: str, block_bytes: int) -> np.ndarray:
    """``(..., n_bytes)`` uint8 -> ``(n_blocks, block_bytes)``, refusing a length that is not whole blocks."""
    data = np.asarray(data)
    if data.dtype != np.uint8:
        raise ValueError(f"{fmt}: expected uint8 bytes, got {data.dtype}")
    if data.ndim == 0 or data.shape[-1] % block_bytes != 0:
        raise ValueError(
            f"{fmt}: rows of {data.shape[-1] if data.ndim else 'a scalar'} bytes; "
            f"need a multiple of {block_bytes} (the bytes of one block)"
        )
    return data.reshape(-1, block_bytes)


def as_rows(parts: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Join the ``(n_blocks, k)`` byte fields of each block and lay the blocks out in ``x``'s rows."""
    return np.concatenate(parts, axis=-1).reshape(*np.shape(x)[:-1], -1)


def values_shape(data: np.ndarray, block_bytes: int, block_values: int) -> tuple[int, ...]:
    """The float shape ``(..., n)`` that bytes ``(..., n_bytes)`` decode to."""
    return (*data.shape[:-1], data.shape[-1] // block_bytes * block_values)


def fp16_bytes(d: np.ndarray) -> np.ndarray:
    """``(n_blocks, 1)`` float32 -> ``(n_blocks, 2)`` uint8: the float16 number, little-endian."""
    return d.astype("<f2").view(np.uint8)


def fp16_value(b: np.ndarray) -> np.ndarray:
    """``(n_blocks, 2)`` uint8 -> ``(n_blocks, 1)`` float32: the inverse of :func:`fp16_bytes`."""
    return np.ascontiguousarray(b).view("<f2").astype(np.float32)


def inverse(d: np.ndarray) -> np.ndarray:
    """``1 / d`` in float32, and 0 where ``d == 0`` (an all-zero block: every ``q`` then encodes 0)."""
    out = np.zeros_like(d)
    np.divide(np.float32(1), d, out=out, where=d != 0)
    return out


def round_half_away(x: np.ndarray) -> np.ndarray:
    """C's ``roundf``: to the nearest integer, halves away from zero (``np.round`` sends halves to even).

    ``x - trunc(x)`` is exact in floating point, so the comparison with 0.5 is too.
    """
    whole = np.trunc(x)
    return np.where(np.abs(x - whole) >= 0.5, whole + np.sign(x), whole)


def signed_max(blocks: np.ndarray) -> np.ndarray:
    """Each block's value of largest magnitude, sign kept (the first one on a tie): ``(n_blocks, 1)``."""
    return np.take_along_axis(blocks, np.abs(blocks).argmax(axis=-1, keepdims=True), axis=-1)


def pack_halves(q: np.ndarray) -> np.ndarray:
    """``(n_blocks, 32)`` values whose low 4 bits matter -> ``(n_blocks, 16)`` bytes, ggml's nibble order.

    Byte ``j`` holds value ``j`` in its low nibble and value ``j + 16`` in its high nibble: the layout of
    :func:`.packing.pack_int4`, which our own int4 layers use too (the docstring there says why)::

        byte j:  [ q[j+16] & 0xF | q[j] & 0xF ]
                   bits 7..4       bits 3..0
    """
    return pack_int4(torch.from_numpy(np.ascontiguousarray(q & 0x0F))).numpy()


def unpack_halves(qs: np.ndarray) -> np.ndarray:
    """``(n_blocks, 16)`` bytes -> ``(n_blocks, 32)`` nibbles (uint8 0..15): the inverse of :func:`pack_halves`."""
    return unpack_int4(torch.from_numpy(np.array(qs, dtype=np.uint8))).numpy()  # a copy: qs may be read-only


def fifth_bits(q: np.ndarray) -> np.ndarray:
    """``(n_blocks, 32)`` 5-bit values -> ``(n_blocks, 4)`` bytes: bit 4 of value ``i`` is bit ``i`` of a
    little-endian uint32, i.e. bit ``i % 8`` of byte ``i // 8``."""
    return np.packbits((q >> 4) & 1, axis=-1, bitorder="little")


def unfifth_bits(qh: np.ndarray) -> np.ndarray:
    """``(n_blocks, 4)`` bytes -> ``(n_blocks, 32)`` values 0 or 16: the inverse of :func:`fifth_bits`."""
    return np.unpackbits(qh, axis=-1, bitorder="little") << 4


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """Q8_0: 8-bit symmetric, ``w = d * q`` with ``q`` int8 in [-127, 127] and ``d = max|w| / 127``.

    One block, 34 bytes::

        | d: float16 | q[0] q[1] ... q[31]: int8 |
          2 bytes      32 bytes
    """
    blocks = blocks_of(x, "Q8_0")
    d = np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127)
    q = round_half_away(blocks * inverse(d)).astype(np.int8)
    return as_rows([fp16_bytes(d), q.view(np.uint8)], x)


def dequantize_q8_0(data: np.ndarray) -> np.ndarray:
    """Q8_0 bytes -> float32: ``d * q`` (see :func:`quantize_q8_0` for the layout)."""
    blocks = byte_blocks(data, "Q8_0", 34)
    d, q = fp16_value(blocks[:, :2]), blocks[:, 2:].view(np.int8)
    return (q.astype(np.float32) * d).reshape(values_shape(data, 34, BLOCK))


def quantize_q4_0(x: np.ndarray) -> np.ndarray:
    """Q4_0: 4-bit symmetric, ``w = d * (q - 8)`` with ``q`` in 0..15.

    ``d = m / -8`` where ``m`` is the block's value of largest magnitude, *with its sign*: ``m`` itself
    becomes ``q = 0`` (``-8 * d = m``), exactly, and the opposite end gets ``q = 15`` (``+7 d``, one
    step short of ``-m``). Using all 16 codes this way beats ``max|w| / 7``, which leaves one unused.

    One block, 18 bytes (nibble order: :func:`pack_halves`)::

        | d: float16 | 16 bytes: q[j] low nibble, q[j+16] high nibble |
    """
    blocks = blocks_of(x, "Q4_0")
    d = signed_max(blocks) / np.float32(-8)
    q = np.clip(np.trunc(blocks * inverse(d) + np.float32(8.5)), 0, 15).astype(np.uint8)
    return as_rows([fp16_bytes(d), pack_halves(q)], x)


def dequantize_q4_0(data: np.ndarray) -> np.ndarray:
    """Q4_0 bytes -> float32: ``d * (q - 8)`` (see :func:`quantize_q4_0`)."""
    blocks = byte_blocks(data, "Q4_0", 18)
    d, q = fp16_value(blocks[:, :2]), unpack_halves(blocks[:, 2:]).astype(np.int8) - 8
    return (d * q.astype(np.float32)).reshape(values_shape(data, 18, BLOCK))


def quantize_q4_1(x: np.ndarray) -> np.ndarray:
    """Q4_1: 4-bit asymmetric, ``w = d * q + m`` with ``q`` in 0..15, ``m = min``, ``d = (max - min) / 15``.

    One block, 20 bytes::

        | d: float16 | m: float16 | 16 bytes: q[j] low nibble, q[j+16] high nibble |
    """
    blocks = blocks_of(x, "Q4_1")
    lo, hi = blocks.min(axis=-1, keepdims=True), blocks.max(axis=-1, keepdims=True)
    d = (hi - lo) / np.float32(15)
    q = np.clip(np.trunc((blocks - lo) * inverse(d) + np.float32(0.5)), 0, 15).astype(np.uint8)
    return as_rows([fp16_bytes(d), fp16_bytes(lo), pack_halves(q)], x)


def dequantize_q4_1(data: np.ndarray) -> np.ndarray:
    """Q4_1 bytes -> float32: ``d * q + m`` (see :func:`quantize_q4_1`)."""
    blocks = byte_blocks(data, "Q4_1", 20)
    d, m = fp16_value(blocks[:, :2]), fp16_value(blocks[:, 2:4])
    q = unpack_halves(blocks[:, 4:]).astype(np.float32)
    return (d * q + m).reshape(values_shape(data, 20, BLOCK))


def quantize_q5_0(x: np.ndarray) -> np.ndarray:
    """Q5_0: 5-bit symmetric, ``w = d * (q - 16)``, ``q`` in 0..31, ``d = m / -16`` (as Q4_0, one bit more).

    The low 4 bits of each ``q`` are packed as in Q4_0; the 32 fifth bits make one uint32 ``qh``.
    One block, 22 bytes::

        | d: float16 | qh: 4 bytes, bit i = bit 4 of q[i] | 16 bytes: low nibbles as in Q4_0 |
    """
    blocks = blocks_of(x, "Q5_0")
    d = signed_max(blocks) / np.float32(-16)
    q = np.clip(np.trunc(blocks * inverse(d) + np.float32(16.5)), 0, 31).astype(np.uint8)
    return as_rows([fp16_bytes(d), fifth_bits(q), pack_halves(q)], x)


def dequantize_q5_0(data: np.ndarray) -> np.ndarray:
    """Q5_0 bytes -> float32: ``d * (q - 16)`` (see :func:`quantize_q5_0`)."""
    blocks = byte_blocks(data, "Q5_0", 22)
    d = fp16_value(blocks[:, :2])
    q = (unpack_halves(blocks[:, 6:]) | unfifth_bits(blocks[:, 2:6])).astype(np.int8) - 16
    return (d * q.astype(np.float32)).reshape(values_shape(data, 22, BLOCK))


def quantize_q5_1(x: np.ndarray) -> np.ndarray:
    """Q5_1: 5-bit asymmetric, ``w = d * q + m``, ``q`` in 0..31, ``d = (max - min) / 31`` (Q4_1, one bit more).

    One block, 24 bytes::

        | d: float16 | m: float16 | qh: 4 bytes, bit i = bit 4 of q[i] | 16 bytes: low nibbles |
    """
    blocks = blocks_of(x, "Q5_1")
    lo, hi = blocks.min(axis=-1, keepdims=True), blocks.max(axis=-1, keepdims=True)
    d = (hi - lo) / np.float32(31)
    q = np.clip(np.trunc((blocks - lo) * inverse(d) + np.float32(0.5)), 0, 31).astype(np.uint8)
    return as_rows([fp16_bytes(d), fp16_bytes(lo), fifth_bits(q), pack_halves(q)], x)


def dequantize_q5_1(data: np.ndarray) -> np.ndarray:
    """Q5_1 bytes -> float32: ``d * q + m`` (see :func:`quantize_q5_1`)."""
    blocks = byte_blocks(data, "Q5_1", 24)
    d, m = fp16_value(blocks[:, :2]), fp16_value(blocks[:, 2:4])
    q = (unpack_halves(blocks[:, 8:]) | unfifth_bits(blocks[:, 4:8])).astype(np.float32)
    return (d * q + m).reshape(values_shape(data, 24, BLOCK))
