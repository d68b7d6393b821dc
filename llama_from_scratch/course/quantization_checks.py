"""Chapter 09's exercises (quantization): group-wise INT4 with packing, and a Q8_0 block quantizer.

Each check calls the learner's function through :func:`~.feedback.answer` (dequantization through the
skeleton, :func:`~.feedback.check_cases`), compares with the package (``quantize_int4`` /
``dequantize_int4``) or with ``gguf.quants.quantize``, and raises :class:`~.feedback.CheckFailed` naming
the case, what differed and, when the answer matches a common mistake listed here, its likely cause.
Every message line fits what ``nbgrader validate`` shows (:data:`.feedback.LINE_WIDTH`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..quantization.int4 import dequantize_int4, quantize_int4
from ..quantization.packing import pack_int4, unpack_int4
from .feedback import (
    Case,
    Mistake,
    answer,
    check_cases,
    diagnose,
    fail,
    passed,
    refuses,
    tensor_difference,
    tensors,
)

# --- the common wrong answers ----------------------------------------------------------------------


def _quantize_int4(
    weight, group_size, layout="halves", steps=15, truncate=False, zero_point=True, guard=True, refuse=True
):
    # each wrong answer refuses a bad group size but one (refuse=False), so that each fails the hidden tests
    # by its own mistake, not by that shared one
    if refuse and weight.shape[1] % group_size:
        raise ValueError(f"in_features {weight.shape[1]} is not a multiple of group_size {group_size}")
    groups = weight.float().reshape(weight.shape[0], -1, group_size)
    lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)
    scales = (hi - lo) / steps
    divisor = torch.where(scales == 0, torch.ones_like(scales), scales) if guard else scales
    shifted = ((groups - lo[..., None]) if zero_point else groups) / divisor[..., None]
    q = (torch.floor(shifted) if truncate else torch.round(shifted)).clamp(0, 15).to(torch.uint8)
    half = group_size // 2
    if layout == "halves":  # byte j = q[j] | q[j + half] << 4
        packed = q[..., :half] | (q[..., half:] << 4)
    elif layout == "neighbours":  # byte j = q[2j] | q[2j + 1] << 4
        packed = q[..., 0::2] | (q[..., 1::2] << 4)
    else:  # "high first": byte j = q[j] << 4 | q[j + half]
        packed = (q[..., :half] << 4) | q[..., half:]
    return packed.reshape(weight.shape[0], -1), scales, lo


NO_GROUP_CHECK = (
    "looks like a group size that does not divide in_features is not refused:\n"
    "raise ValueError naming both numbers when in_features % group_size != 0"
)
ZERO_SCALE = (
    "looks like a constant group divides 0 by a zero scale:\n"
    "hi == lo gives scale 0, (w - lo) / 0 = 0 / 0 = NaN, and what NaN becomes as a\n"
    "uint8 depends on the CPU; divide by 1 where the scale is 0 (every code is then 0)"
)
QUANTIZE_INT4 = [
    Mistake(
        "looks like the minimum is not subtracted before dividing (no zero point):\n"
        "the codes are q = round((w - min) / scale), so that min gets code 0 and max code 15",
        lambda w, g: _quantize_int4(w, g, zero_point=False),
    ),
    Mistake(NO_GROUP_CHECK, lambda w, g: _quantize_int4(w, g, refuse=False)),  # reshape's RuntimeError instead
    Mistake(ZERO_SCALE, lambda w, g: _quantize_int4(w, g, guard=False)),
    Mistake(
        "looks like neighbours share a byte (q[2j] with q[2j+1]):\n"
        "byte j of a group holds code j (low nibble) and code j + group_size/2 (high nibble)",
        lambda w, g: _quantize_int4(w, g, layout="neighbours"),
    ),
    Mistake(
        "looks like the nibbles are swapped:\ncode j goes in the LOW 4 bits, code j + group_size/2 in the high 4 bits",
        lambda w, g: _quantize_int4(w, g, layout="high first"),
    ),
    Mistake(
        "looks like the range is cut into 16 steps:\n4 bits give 16 levels, 0 ... 15: 15 steps, scale = (hi - lo) / 15",
        lambda w, g: _quantize_int4(w, g, steps=16),
    ),
    Mistake(
        "looks like the codes are truncated (floor), not rounded:\nuse torch.round((w - lo) / scale)",
        lambda w, g: _quantize_int4(w, g, truncate=True),
    ),
]


def _dequantize_int4(packed, scales, mins, group_size, layout="halves", centred=False, minimum=True):
    rows, groups = scales.shape
    p = packed.view(rows, groups, group_size // 2)
    if layout == "halves":
        q = torch.cat([p & 0x0F, p >> 4], dim=-1)
    elif layout == "neighbours":
        q = torch.stack([p & 0x0F, p >> 4], dim=-1).reshape(rows, groups, group_size)
    else:
        q = torch.cat([p >> 4, p & 0x0F], dim=-1)
    q = q.float() - (8 if centred else 0)
    return (scales[..., None] * q + (mins[..., None] if minimum else 0)).reshape(rows, groups * group_size)


DEQUANTIZE_INT4 = [
    Mistake(
        "looks like the minimum is not added back:\n"
        "code q stands for w = scale * q + min (code 0 is the group's minimum, not 0)",
        lambda p, s, m, g: _dequantize_int4(p, s, m, g, minimum=False),
    ),
    Mistake(
        "looks like the bytes are read as neighbours (q[2j], q[2j+1]):\n"
        "byte j of a group holds code j (low nibble) and code j + group_size/2 (high nibble)",
        lambda p, s, m, g: _dequantize_int4(p, s, m, g, layout="neighbours"),
    ),
    Mistake(
        "looks like the high nibbles are read first:\nthe low 4 bits are code j, the high 4 bits code j + group_size/2",
        lambda p, s, m, g: _dequantize_int4(p, s, m, g, layout="high first"),
    ),
    Mistake(
        "looks like 8 is subtracted from the codes (the symmetric scheme):\n"
        "the asymmetric scheme is w = scale * q + min, q in 0 ... 15",
        lambda p, s, m, g: _dequantize_int4(p, s, m, g, centred=True),
    ),
]


def _q8_0(x, rounding="away", fp16_first=False, divide=False, levels=127):
    blocks = np.asarray(x, dtype=np.float32).reshape(-1, 32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(levels)
    if fp16_first:
        d = d.astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.where(d == 0, 0, blocks / d) if divide else blocks * np.where(d == 0, 0, 1 / d)
    if rounding == "away":
        q = np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5))
    else:
        q = np.round(scaled)
    q = np.clip(q, -128, 127).astype(np.int8)
    return np.concatenate([d.astype("<f2").view(np.uint8), q.view(np.uint8)], axis=1).reshape(-1)


QUANTIZE_Q8_0 = [
    Mistake(
        "looks like the values are divided by d:\n"
        "llama.cpp multiplies by the inverse, x * (1 / d) (0 where d = 0); in float32\n"
        "x / d and x * (1 / d) can differ in the last bit and round to different codes",
        lambda x: _q8_0(x, divide=True),
    ),
    Mistake(
        "looks like halves are rounded to even (np.round, torch.round):\n"
        "llama.cpp rounds halves away from zero (C's roundf): 0.5 -> 1, 2.5 -> 3, -2.5 -> -3",
        lambda x: _q8_0(x, rounding="even"),
    ),
    Mistake(
        "looks like d is rounded to float16 before the codes are computed:\n"
        "compute q with the float32 d; only the stored copy of d is float16",
        lambda x: _q8_0(x, fp16_first=True),
    ),
    Mistake(
        "looks like the scale is max|x| / 128:\nQ8_0 uses max|x| / 127, so that q stays in -127 ... 127",
        lambda x: _q8_0(x, levels=128),
    ),
]

# --- the checks ------------------------------------------------------------------------------------


def _int4_cases() -> list[tuple[str, torch.Tensor, int]]:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 128, generator=generator) * 0.05
    outliers = weight.clone()
    outliers[1, 5], outliers[4, 70] = 1.5, -2.0  # a few large weights: they stretch only their own group
    constant = torch.full((2, 64), 0.25)  # hi == lo: scale 0, every code 0
    positive = torch.rand(3, 64, generator=generator) + 1.0  # all above zero: the minimum is not 0
    return [
        ("random (6, 128), group 32", weight, 32),
        ("random (6, 128), group 64", weight, 64),
        ("random (6, 128), group 128", weight, 128),
        ("with outliers (6, 128), group 32", outliers, 32),
        ("constant (2, 64), group 32", constant, 32),
        ("all positive (3, 64), group 64", positive, 64),
        ("random (64, 576), group 32", torch.randn(64, 576, generator=generator) * 0.1, 32),
    ]


def _near_tie(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """Where ``(w - lo) / scale`` is within 1e-4 of a half: another correct float32 order may round either way."""
    groups = weight.float().reshape(weight.shape[0], -1, group_size)
    lo, hi = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
    scaled = (groups - lo) / torch.where(hi == lo, torch.ones_like(hi), (hi - lo) / 15)
    return ((scaled - scaled.floor() - 0.5).abs() < 1e-4).reshape(weight.shape)


class NaNToInteger(TorchDispatchMode):
    """Inside the block, records whether an operation turned a NaN into an integer (``.to(torch.uint8)``, say).

    What NaN becomes as an integer is undefined in C and differs between CPUs (0 on some, 255 or 128 on
    others): an answer that gets its codes that way is right by luck, on this machine only.
    """

    def __init__(self):
        super().__init__()
        self.seen = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # an integer result (a bool one, torch.isnan(x) say, is how a NaN is looked for, not turned into a code)
        if isinstance(out, torch.Tensor) and not (out.is_floating_point() or out.is_complex() or out.dtype == torch.bool):
            inputs = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor)]
            self.seen |= any(a.is_floating_point() and bool(torch.isnan(a).any()) for a in inputs)
        return out


# (shape, group_size) that are not a whole number of groups: the function must refuse them
BAD_GROUPS = [((3, 48), 32), ((2, 100), 64)]


def check_quantize_int4(fn: Callable[[torch.Tensor, int], tuple]) -> None:
    """``fn(weight, group_size)`` -> ``(packed, scales, mins)``, as the package's asymmetric ``quantize_int4``.

    Also: the input stays unchanged, no NaN becomes a code (a constant group has scale 0), and a group size
    that does not divide the row is refused with a ``ValueError`` naming both numbers.
    """
    cases = _int4_cases()
    for label, weight, group_size in cases:
        name = f"my_quantize_int4({label})"
        given = weight.clone()
        with NaNToInteger() as nan:
            got = answer("my_quantize_int4", fn, given, group_size, forbidden=[quantize_int4, pack_int4])
        if not torch.equal(given, weight):
            raise fail(name, "  changed its input weight", "return new tensors; leave the weight as it was")
        if nan.seen:
            raise fail(name, "  a NaN was turned into an integer code", ZERO_SCALE)
        packed, scales, mins = quantize_int4(weight, group_size)
        if not isinstance(got, tuple) or len(got) != 3:
            raise fail(name, f"  expected a tuple (packed, scales, mins), got {type(got).__name__}")
        got_packed, got_scales, got_mins = got
        if not isinstance(got_packed, torch.Tensor) or got_packed.dtype != torch.uint8:
            kind = got_packed.dtype if isinstance(got_packed, torch.Tensor) else type(got_packed).__name__
            raise fail(name, f"  packed: expected a torch.uint8 tensor, got {kind}")
        if got_packed.shape != packed.shape:
            raise fail(
                name,
                f"  packed: shape {tuple(got_packed.shape)}, expected {tuple(packed.shape)}",
                "two 4-bit codes share each byte: (out, in) weights -> (out, in // 2) bytes",
            )
        same = lambda a, b: isinstance(a, tuple) and len(a) == 3 and all(  # noqa: E731
            isinstance(x, torch.Tensor) and x.shape == y.shape and torch.allclose(x.float(), y.float(), 1e-6, 0)
            for x, y in zip(a, b)
        )
        # scales and mins: (hi - lo) / 15 and lo; another correct order of float32 operations is 1 ulp off at most
        for part, got_part, expected in [("scales", got_scales, scales), ("mins", got_mins, mins)]:
            difference = tensor_difference(got_part, expected, atol=0, rtol=1e-6)
            if difference is not None:
                raise fail(f"{name}, {part}", difference, diagnose(got, (weight, group_size), QUANTIZE_INT4, same))
        got_q = unpack_int4(got_packed.view(*scales.shape, group_size // 2)).reshape(weight.shape).int()
        q = unpack_int4(packed.view(*scales.shape, group_size // 2)).reshape(weight.shape).int()
        # a code may differ by one only where (w - lo) / scale is a near-tie, which another correct order rounds up
        off = (got_q != q) & ~(((got_q - q).abs() == 1) & _near_tie(weight, group_size))
        if off.any():
            row, column = torch.nonzero(off)[0].tolist()
            raise fail(
                name,
                f"  {int(off.sum())} of {off.numel()} codes differ (read back with unpack_int4);\n"
                f"  the first is weight ({row}, {column}): expected code {int(q[row, column])}, "
                f"got {int(got_q[row, column])}",
                diagnose(got, (weight, group_size), QUANTIZE_INT4, same),
            )
    for shape, group_size in BAD_GROUPS:
        refuses(
            f"my_quantize_int4(weight of shape {shape}, group_size={group_size})", "my_quantize_int4", fn,
            (torch.randn(shape, generator=torch.Generator().manual_seed(1)), group_size),
            [str(shape[1]), str(group_size)], NO_GROUP_CHECK, forbidden=[quantize_int4, pack_int4],
        )
    passed("int4 quantize", len(cases) + len(BAD_GROUPS))


def check_dequantize_int4(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]) -> None:
    """``fn(packed, scales, mins, group_size)`` -> float32 ``(out, in)``, as the package's ``dequantize_int4``."""
    cases = []
    for label, weight, group_size in _int4_cases():
        packed, scales, mins = quantize_int4(weight, group_size)
        expected = dequantize_int4(packed, scales, mins, group_size)
        cases.append(Case(f"my_dequantize_int4(the codes of {label})", (packed, scales, mins, group_size), expected))

    def in_float32(case, got):
        if got.dtype != torch.float32:
            raise fail(case.label, f"  expected dtype torch.float32, got {got.dtype}")

    # scale * q + min: one multiply and one add in float32, off by a rounding at most
    check_cases(
        "int4 dequantize", "my_dequantize_int4", fn, cases, compare=tensors(atol=1e-7, rtol=1e-6),
        mistakes=DEQUANTIZE_INT4, forbidden=[dequantize_int4, unpack_int4], after=in_float32,
    )


@functools.cache
def _smollm2_row() -> np.ndarray | None:
    """Real weights: row 0 of layer 0's down projection, dequantized from SmolLM2's file (read once)."""
    import gguf

    from ..checkpoints.offline import smollm2_path

    path = smollm2_path()
    if path is None:
        return None
    tensor = next(t for t in gguf.GGUFReader(path).tensors if t.name == "blk.0.ffn_down.weight")
    return gguf.quants.dequantize(np.array(tensor.data[:1]), tensor.tensor_type)[0].astype(np.float32)


def rounding_apart(amax: float = 1.0) -> np.ndarray:
    """A block of 32 float32 values where ``x / d`` and ``x * (1 / d)`` round to different codes (``d = amax / 127``).

    Found by search, not written down: the values within a few float32 steps of a half-way point
    ``(k + 0.5) * d``, where the last bit of ``x * (1 / d)`` (what llama.cpp computes) can fall on the other
    side of the half from ``x / d``. The block's first value is ``amax`` itself, so that it sets ``d``.
    """
    d = np.float32(amax) / np.float32(127)
    points = ((np.arange(127) + 0.5).astype(np.float32) * d).astype(np.float32)
    near, up, down = [points], points, points
    for _ in range(8):  # up to 8 float32 steps either side
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
        near += [up, down]
    x = np.unique(np.concatenate(near))
    x = x[x < amax]

    def codes(scaled):
        return np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5))

    apart = x[codes(x / d) != codes(x * (np.float32(1) / d))]
    return np.concatenate([[np.float32(amax)], np.resize(apart, 31)]).astype(np.float32)


def _q8_0_cases() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    halves = np.zeros(32, dtype=np.float32)  # d = 127 / 127 = 1: every value below is its own code
    halves[:8] = [127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 3.5, -126.5]
    cases = [
        ("random, 64 values", (rng.standard_normal(64) * 0.02).astype(np.float32)),
        ("random, 256 values, larger", (rng.standard_normal(256) * 3.0).astype(np.float32)),
        ("all zero, 32 values", np.zeros(32, dtype=np.float32)),
        ("one repeated value, 32", np.full(32, -0.75, dtype=np.float32)),
        ("exact halves, 32 values", halves),
        ("huge and tiny, 64 values", np.concatenate([np.full(32, 3e4), np.full(32, 1e-6)]).astype(np.float32)),
        ("-1 ... 0.5, 64 values (the largest |x| is negative)", np.linspace(-1.0, 0.5, 64, dtype=np.float32)),
        ("32 values where x / d and x * (1 / d) round apart", rounding_apart()),
    ]
    row = _smollm2_row()
    if row is not None:
        cases.append(("SmolLM2 blk.0.ffn_down.weight, row 0", row))
    return cases


def _fp16(raw: np.ndarray) -> float:
    return float(raw.view("<f2")[0])


def check_quantize_q8_0(fn: Callable[[np.ndarray], np.ndarray]) -> None:
    """``fn(x)``: ``(n,)`` float32 (``n`` a multiple of 32) -> ``(n // 32 * 34,)`` uint8, exactly ``gguf``'s Q8_0;
    another ``n`` is refused with a ``ValueError`` naming it."""
    import gguf

    from ..quantization.ggml_blocks import quantize_q8_0

    q8_0 = gguf.GGMLQuantizationType.Q8_0
    rules = [gguf.quants.quantize, quantize_q8_0]
    cases = _q8_0_cases()
    for label, x in cases:
        name = f"my_quantize_q8_0({label})"
        got = answer("my_quantize_q8_0", fn, x.copy(), forbidden=rules)
        expected = gguf.quants.quantize(x, q8_0)
        if not isinstance(got, np.ndarray):
            raise fail(name, f"  expected a numpy array of uint8, got {type(got).__name__}")
        if got.dtype != np.uint8 or got.shape != expected.shape:
            raise fail(
                name,
                f"  expected uint8 of shape {expected.shape}, got {got.dtype} of shape {got.shape}",
                f"{len(x) // 32} block(s) of 34 bytes: 2 bytes of float16 d, then 32 int8 codes\n"
                "(view the int8 codes as uint8: codes.view(np.uint8))",
            )
        if not np.array_equal(got, expected):
            first = int(np.flatnonzero(got != expected)[0])
            block, offset = divmod(first, 34)
            start = block * 34
            if offset < 2:  # the scale: its value, not its bytes
                where = f"d (float16): expected {_fp16(expected[start:start + 2]):.6g}, " \
                        f"got {_fp16(got[start:start + 2]):.6g}"
            else:
                code = lambda b: int(b.view(np.int8))  # noqa: E731
                where = f"code {offset - 2}: expected {code(expected[first])}, got {code(got[first])}"
            raise fail(
                name,
                f"  {int((got != expected).sum())} of {got.size} bytes differ; the first in block {block},\n"
                f"  {where}",
                diagnose(got, (x,), QUANTIZE_Q8_0, lambda a, b: np.array_equal(a, b)),
            )
    for n in (31, 33, 100):
        refuses(
            f"my_quantize_q8_0({n} values)", "my_quantize_q8_0", fn, (np.zeros(n, dtype=np.float32),), [str(n)],
            "Q8_0 quantizes whole blocks of 32: raise ValueError naming n otherwise", forbidden=rules,
        )
    passed("Q8_0 quantize", len(cases) + 3)
