"""llama.cpp's block formats written by hand (``llama_from_scratch.quantization.ggml_*``) against ``gguf``.

Quantizing must give the *same bytes* as ``gguf.quants.quantize``, and dequantizing the *same floats* as
``gguf.quants.dequantize``, compared exactly: both sides perform the same float32 operations in the same
order (a division by 127, a multiplication, a float16 conversion...), and IEEE 754 rounds each such
operation exactly, so equal operations on equal inputs give equal bits. No tolerance is needed.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from llama_from_scratch.quantization import ggml_blocks, ggml_k_quants

LEGACY = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


def ours(direction: str, fmt: str):
    module = ggml_k_quants if fmt.endswith("_K") else ggml_blocks
    return getattr(module, f"{direction}_{fmt.lower()}")


def random_rows(rng: np.random.Generator) -> np.ndarray:
    """(4, 256) float32 with each block of 32 at its own magnitude, so the scales vary widely."""
    x = rng.standard_normal((4, 8, 32)) * np.exp(rng.uniform(-8, 4, size=(4, 8, 1)))
    return x.reshape(4, 256).astype(np.float32)


def edge_blocks() -> np.ndarray:
    """One block per row: the cases where the arithmetic is most fragile."""
    rng = np.random.default_rng(1)
    ramp = np.linspace(-1, 1, 32, dtype=np.float32)
    return np.stack(
        [
            np.zeros(32),  # d = 0: the inverse scale must be 0, not inf
            np.full(32, 0.7),  # one repeated value: max == min for the _1 formats
            np.full(32, -3.25),
            1e30 * ramp,  # huge: d overflows float16 to inf, as in llama.cpp
            1e-30 * ramp,  # tiny: d underflows float16 to 0
            -np.abs(rng.standard_normal(32)),  # negative only
            np.abs(rng.standard_normal(32)),  # positive only
            np.concatenate([np.full(16, 0.5), np.full(16, -0.5)]),  # ties between magnitudes
            np.arange(32) - 15.5,  # halves: round-half-away-from-zero territory for Q8_0
        ]
    ).astype(np.float32)


@pytest.mark.parametrize("fmt", LEGACY)
@pytest.mark.parametrize("data", ["random", "edges"])
def test_quantize_bytes_equal_gguf(fmt, data):
    x = random_rows(np.random.default_rng(0)) if data == "random" else edge_blocks()
    qtype = GGMLQuantizationType[fmt]
    with np.errstate(over="ignore", invalid="ignore"):  # 1e30 / 127 overflows float16 on both sides
        expected = gguf_quantize(x, qtype)
        got = ours("quantize", fmt)(x)
        assert got.dtype == np.uint8 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
        # dequantizing the same bytes: the same float32 operations, so the same bits (NaN where d is inf and q = 0)
        np.testing.assert_array_equal(ours("dequantize", fmt)(got), gguf_dequantize(expected, qtype))


def valid_k_blocks(fmt: str, n_blocks: int, seed: int = 0) -> np.ndarray:
    """Super-blocks built byte by byte (``gguf`` cannot write K-quants): random codes and scales, finite float16 d's."""
    rng = np.random.default_rng(seed)
    size = {"Q4_K": ggml_k_quants.Q4_K_BYTES, "Q6_K": ggml_k_quants.Q6_K_BYTES}[fmt]
    blocks = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    d = (rng.standard_normal((n_blocks, 2)) * 0.01).astype("<f2").view(np.uint8)  # d (and dmin) of each block
    if fmt == "Q4_K":
        blocks[:, 0:4] = d  # d, dmin; then 12 bytes of 6-bit scales/mins (any bytes are valid), 128 of codes
    else:
        blocks[:, 208:210] = d[:, :2]  # ql, qh, int8 scales (any bytes are valid), then d last
    return blocks.reshape(2, -1)


@pytest.mark.parametrize("fmt", ["Q4_K", "Q6_K"])
def test_k_quants_dequantize_equal_gguf(fmt):
    data = valid_k_blocks(fmt, 6)
    got = ours("dequantize", fmt)(data)
    expected = gguf_dequantize(data, GGMLQuantizationType[fmt])
    assert got.dtype == np.float32 and got.shape == expected.shape == (2, 3 * 256)
    np.testing.assert_array_equal(got, expected)  # same float32 operations in the same order: the same bits


def test_q4_k_scale_unpacking_by_hand():
    """The 6-bit packing, one case worked out: scale 4 = 0b10_1101 is split into bytes 8 (low) and 0 (top 2 bits)."""
    packed = np.zeros((1, 12), dtype=np.uint8)
    packed[0, 0] = 0b10_000011  # scale 0 = 3, top bits of scale 4 = 0b10
    packed[0, 8] = 0b0111_1101  # low nibble: scale 4's bits 3..0 = 0b1101; high nibble: min 4's bits = 0b0111
    scales, mins = ggml_k_quants.q4_k_scales_and_mins(packed)
    assert scales[0, 0] == 3 and scales[0, 4] == 0b10_1101 and mins[0, 4] == 0b00_0111


@pytest.mark.parametrize("fmt", LEGACY)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(fmt, bad):
    x = np.zeros(64, dtype=np.float32)
    x[37] = bad
    with pytest.raises(ValueError, match=rf"{fmt}: 1 value\(s\) are NaN or infinite \(first at flat index 37\)"):
        ours("quantize", fmt)(x)


@pytest.mark.parametrize("fmt", LEGACY)
def test_a_row_that_is_not_whole_blocks_is_refused(fmt):
    with pytest.raises(ValueError, match=rf"{fmt}: rows of 40 values; need a multiple of 32"):
        ours("quantize", fmt)(np.zeros(40, dtype=np.float32))


@pytest.mark.parametrize("fmt", [*LEGACY, "Q4_K", "Q6_K"])
def test_bytes_of_the_wrong_length_are_refused(fmt):
    size = {**ggml_blocks.BYTES_PER_BLOCK, "Q4_K": 144, "Q6_K": 210}[fmt]
    with pytest.raises(ValueError, match=rf"{fmt}: rows of {size + 1} bytes; need a multiple of {size}"):
        ours("dequantize", fmt)(np.zeros(size + 1, dtype=np.uint8))
    with pytest.raises(ValueError, match=rf"{fmt}: expected uint8 bytes, got float32"):
        ours("dequantize", fmt)(np.zeros(size, dtype=np.float32))


H = 2.0**-11  # float16 unit roundoff: a stored scale or minimum is within a relative H of the float32 one
U = 2.0**-24  # float32 unit roundoff


@pytest.mark.parametrize("fmt", LEGACY)
def test_round_trip_error_is_bounded_by_the_step(fmt):
    """|dequantize(quantize(w)) - w| per block, from the arithmetic, with ``d`` the float32 step of the block.

    Rounding to the nearest code costs d/2. Symmetric Q4_0 / Q5_0 give the value of largest magnitude
    code 0 exactly, so its opposite (-m) falls on code 16 (32), clipped to 15 (31): a whole step there.
    Then llama.cpp stores d (and m) in float16, each off by a relative H, which moves a value with code
    q by q * H * d (+ H * |min|); float32 operations add a few u * d (and u * |w| for the addition of m).
    """
    x = np.random.default_rng(2).standard_normal((16, 32)).astype(np.float32)  # float16 scales stay normal
    w = ours("dequantize", fmt)(ours("quantize", fmt)(x))
    error = np.abs(w - x)
    absmax, lo, hi = np.abs(x).max(-1, keepdims=True), x.min(-1, keepdims=True), x.max(-1, keepdims=True)
    bound = {
        "Q8_0": absmax / 127 * (0.5 + 127 * H + 256 * U),
        "Q4_0": absmax / 8 * (1 + 8 * H + 64 * U),
        "Q5_0": absmax / 16 * (1 + 16 * H + 64 * U),
        "Q4_1": (hi - lo) / 15 * (0.5 + 15 * H + 64 * U) + H * np.abs(lo) + 4 * U * absmax,
        "Q5_1": (hi - lo) / 31 * (0.5 + 31 * H + 64 * U) + H * np.abs(lo) + 4 * U * absmax,
    }[fmt]
    assert (error <= bound).all(), f"largest excess {(error - bound).max():.3g}"
