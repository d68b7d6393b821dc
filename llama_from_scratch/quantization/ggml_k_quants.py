"""llama.cpp's "K-quants", read: Q4_K and Q6_K dequantized by hand.

K-quants (llama.cpp PR #1684) group 256 values into a *super-block*, cut into sub-blocks of 32
(Q4_K) or 16 (Q6_K). Each sub-block has its own scale, but the scales themselves are small integers
(6 or 8 bits) multiplied by one float16 per super-block: two levels of scales, so the scales cost
about 0.2-0.5 bits per weight instead of the 0.5-1 bit of Q4_0's float16 per 32 values.

Only the reading direction is here: choosing the sub-block scales well is an optimisation search
(llama.cpp's ``make_qkx2_quants``), and ``gguf`` cannot write K-quants either. Each function gives the
same float32 values as ``gguf.quants.dequantize`` (the same float32 operations in the same order).
"""

from __future__ import annotations

import numpy as np

from .ggml_blocks import byte_blocks, fp16_value, values_shape

SUPER_BLOCK = 256  # values per super-block (QK_K)
Q4_K_BYTES = 144  # 2 + 2 + 12 + 128
Q6_K_BYTES = 210  # 128 + 64 + 16 + 2


def q4_k_scales_and_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 12)`` bytes -> the eight 6-bit scales and eight 6-bit mins, each ``(n, 8)`` uint8.

    Sixteen 6-bit numbers fit in 12 bytes. Scales/mins 0-3 sit whole in the low 6 bits of bytes
    0-3 / 4-7; scales/mins 4-7 keep their low 4 bits in bytes 8-11 and their top 2 bits in the
    spare top bits of bytes 0-3 / 4-7 (upper case: scales, lower case: mins, letter = which one)::

        byte  0..3 :  S S s s s s s s   scale j (j < 4) = low 6 bits; S = bits 5..4 of scale j+4
        byte  4..7 :  M M m m m m m m   min j (j < 4)   = low 6 bits; M = bits 5..4 of min j+4
        byte  8..11:  m m m m s s s s   low nibble = bits 3..0 of scale j+4, high = of min j+4
    """
    a, b, c = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate([a & 0x3F, (c & 0x0F) | ((a >> 6) << 4)], axis=-1)
    mins = np.concatenate([b & 0x3F, (c >> 4) | ((b >> 6) << 4)], axis=-1)
    return scales, mins


def dequantize_q4_k(data: np.ndarray) -> np.ndarray:
    """Q4_K bytes -> float32: sub-block ``j`` of 32 values is ``(d * scale_j) * q - (dmin * min_j)``.

    One super-block, 144 bytes, 8 sub-blocks of 32 4-bit ``q``::

        | d: f16 | dmin: f16 | 12 bytes: 8 scales + 8 mins, 6 bits each | 128 bytes of q |

    The 128 bytes of ``q`` are four runs of 32 bytes; run ``r`` holds sub-block ``2r`` in its low
    nibbles and sub-block ``2r + 1`` in its high nibbles.
    """
    blocks = byte_blocks(data, "Q4_K", Q4_K_BYTES)
    n = blocks.shape[0]
    d, dmin = fp16_value(blocks[:, 0:2]), fp16_value(blocks[:, 2:4])
    scales, mins = q4_k_scales_and_mins(blocks[:, 4:16])
    runs = blocks[:, 16:].reshape(n, 4, 1, 32)
    q = np.concatenate([runs & 0x0F, runs >> 4], axis=2).reshape(n, 8, 32).astype(np.float32)
    step = (d * scales.astype(np.float32))[:, :, None]  # (n, 8, 1)
    offset = (dmin * mins.astype(np.float32))[:, :, None]
    return (step * q - offset).reshape(values_shape(data, Q4_K_BYTES, SUPER_BLOCK))


def dequantize_q6_k(data: np.ndarray) -> np.ndarray:
    """Q6_K bytes -> float32: sub-block ``j`` of 16 values is ``(d * scale_j) * (q - 32)``, ``q`` 6 bits.

    One super-block, 210 bytes, 16 sub-blocks of 16, ``scale_j`` an int8::

        | ql: 128 bytes, low 4 bits | qh: 64 bytes, top 2 bits | scales: 16 x int8 | d: f16 |

    Each half of 128 values (``h`` = 0, 1) reads ``ql[64h : 64h + 64]`` and ``qh[32h : 32h + 32]``;
    for ``l`` in 0..31 it forms four values from one ``qh`` byte (two bits each, from the bottom)::

        value 128h + l      = ql[64h + l]      low nibble  | (qh[32h + l] bits 1..0) << 4
        value 128h + l + 32 = ql[64h + l + 32] low nibble  | (qh[32h + l] bits 3..2) << 4
        value 128h + l + 64 = ql[64h + l]      high nibble | (qh[32h + l] bits 5..4) << 4
        value 128h + l + 96 = ql[64h + l + 32] high nibble | (qh[32h + l] bits 7..6) << 4
    """
    blocks = byte_blocks(data, "Q6_K", Q6_K_BYTES)
    n = blocks.shape[0]
    ql = blocks[:, :128].reshape(n, 2, 1, 64)  # (block, half, -, 64)
    qh = blocks[:, 128:192].reshape(n, 2, 1, 32)
    scales = blocks[:, 192:208].view(np.int8).astype(np.float32)
    d = fp16_value(blocks[:, 208:210])
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=2).reshape(n, 2, 4, 32)  # rows: l, l+32, l+64, l+96
    high = np.concatenate([(qh >> shift) & 0x03 for shift in (0, 2, 4, 6)], axis=2)  # (n, 2, 4, 32)
    q = (low | (high << 4)).astype(np.int8) - 32
    step = (d * scales).reshape(n, 16, 1)
    return (step * q.reshape(n, 16, 16).astype(np.float32)).reshape(values_shape(data, Q6_K_BYTES, SUPER_BLOCK))
