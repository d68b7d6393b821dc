"""Chapter 03's exercises (RoPE): rotating neighbouring pairs, and a weight from Meta's to the rotate-half layout.

Each check calls the learner's function through the skeleton of :mod:`.feedback`
(:func:`~.feedback.check_cases`), compares with the package's :mod:`..rope` and, when the answer
differs, names the catalogued mistake below that gives what the learner got.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..rope import apply_rope, interleaved_to_half, rope_cos_sin
from .feedback import FLOAT32_EPS, Case, Mistake, check_cases, fail, tensors

# --- the common wrong answers ---------------------------------------------------------------------


def _rope(x, cos, sin, sign=1.0, concatenate=False):
    x0, x1 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos[:, None, :], sign * sin[:, None, :]
    y0, y1 = x0 * cos - x1 * sin, x0 * sin + x1 * cos
    return torch.cat((y0, y1), -1) if concatenate else torch.stack((y0, y1), -1).flatten(-2)


def _rope_halves(x, cos, sin):
    first, second = x.chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)


ROPE_DTYPE = (
    "looks like the result does not keep the dtype of x (float32 for float64 x):\n"
    "build it from x itself (torch.empty_like(x), or arithmetic on x)"
)
ROPE = [
    Mistake(
        "looks like the pairs are (j, j + head_dim/2), the rotate-half layout:\n"
        "this exercise pairs neighbours, (x[2i], x[2i+1])",
        _rope_halves,
    ),
    Mistake(
        "looks like the rotation goes the wrong way (the sign of sin):\n"
        "y[2i] = x[2i]·cos − x[2i+1]·sin and y[2i+1] = x[2i]·sin + x[2i+1]·cos",
        lambda x, cos, sin: _rope(x, cos, sin, sign=-1.0),
    ),
    Mistake(
        "looks like the rotated pairs are concatenated (all first halves, then all second):\n"
        "put y[2i] and y[2i+1] back side by side, at features 2i and 2i+1",
        lambda x, cos, sin: _rope(x, cos, sin, concatenate=True),
    ),
    Mistake(
        "looks like cos and sin are swapped",
        lambda x, cos, sin: _rope(x, sin, cos),
    ),
    Mistake(ROPE_DTYPE, lambda x, cos, sin: _rope(x.float(), cos.float(), sin.float())),
]


def _to_half_one_head(w, n_heads):
    return torch.cat((w[0::2], w[1::2]))


def _half_to_interleaved(w, n_heads):
    head_dim = w.shape[0] // n_heads
    return w.view(n_heads, 2, head_dim // 2, -1).transpose(1, 2).reshape(w.shape)  # rows j, j + head_dim/2 side by side


INTERLEAVED_TO_HALF = [
    Mistake(
        "looks like the rows are reordered across the whole matrix, as one head:\n"
        "reorder them within each head of head_dim = rows / n_heads rows",
        _to_half_one_head,
    ),
    Mistake(
        "looks like the conversion the other way, from rotate-half to interleaved:\n"
        "the even rows of each head come first, then the odd ones",
        _half_to_interleaved,
    ),
]


# --- the checks -----------------------------------------------------------------------------------


def check_rope(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``fn(x, cos, sin)``: rotate neighbouring pairs of ``x`` ``(batch, seq, n_heads, head_dim)``.

    ``cos``/``sin`` are ``(seq, head_dim // 2)``, as from :func:`rope_cos_sin`.
    """
    from ..rope import apply_rope_complex, apply_rope_half

    torch.manual_seed(0)
    cases = []
    for shape in [(1, 4, 1, 2), (2, 7, 3, 8), (1, 5, 2, 16)]:
        x = torch.randn(shape)
        cos, sin = rope_cos_sin(torch.arange(3, 3 + shape[1]), shape[-1], theta=100.0)
        cases.append(Case(f"my_apply_rope(x of shape {shape})", (x, cos, sin), apply_rope(x, cos, sin)))
    # float64, positions 0 ... 299 (position 0 does not turn): the result keeps the dtype of x
    x = torch.randn(2, 300, 3, 32, dtype=torch.float64)
    angles = torch.arange(300, dtype=torch.float64)[:, None] * 10000.0 ** (-torch.arange(0, 32, 2) / 32)
    cos, sin = angles.cos(), angles.sin()
    cases.append(Case("my_apply_rope(x of shape (2, 300, 3, 32), float64)", (x, cos, sin), apply_rope(x, cos, sin)))

    def same_dtype(case, got):
        if got.dtype != case.args[0].dtype:
            raise fail(case.label, f"  dtype {got.dtype}, expected {case.args[0].dtype}", ROPE_DTYPE)

    def compare(label, got, expected, args, mistakes):
        # float64: each output is two products and a sum, within a few 1e-16 of the package's; 1e-12 leaves room
        # while a float32 step inside (1e-7 off) fails, as it fails the hidden tests' float64 property
        atol, rtol = (1e-12, 0) if args[0].dtype == torch.float64 else (1e-5, 1e-5)
        tensors(atol, rtol)(label, got, expected, args, mistakes)

    check_cases(
        "rope",
        "my_apply_rope",
        fn,
        cases,
        compare=compare,
        mistakes=ROPE,
        forbidden=[apply_rope, apply_rope_complex, apply_rope_half],
        after=same_dtype,
    )


def check_interleaved_to_half(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """``fn(w, n_heads)``: reorder the rows of a ``wq``/``wk`` weight from the interleaved to the rotate-half layout.

    Row ``r`` of the test weight holds ``r * in_features, r * in_features + 1, ...``: every row says where
    it came from, so a wrong row is named. Then the attention scores: converted weights with the
    rotate-half RoPE must give the scores of the original weights with the interleaved RoPE.
    """
    from ..rope import apply_rope_half, half_to_interleaved

    shapes = [(1, 8, 3), (2, 4, 5), (4, 16, 64), (8, 2, 1), (3, 128, 2)]
    cases = []
    for n_heads, head_dim, in_features in shapes:
        w = torch.arange(n_heads * head_dim * in_features, dtype=torch.float32).reshape(-1, in_features)
        label = f"my_interleaved_to_half(w of shape {tuple(w.shape)}, n_heads={n_heads})"
        cases.append(Case(label, (w, n_heads), interleaved_to_half(w, n_heads)))
    check_cases(
        None,
        "my_interleaved_to_half",
        fn,
        cases,
        compare=tensors(atol=0, rtol=0),
        mistakes=INTERLEAVED_TO_HALF,
        forbidden=[interleaved_to_half, half_to_interleaved],
    )

    torch.manual_seed(0)
    n_heads, head_dim, dim, seq = 4, 16, 64, 10
    wq, wk = torch.randn(2, n_heads * head_dim, dim) / math.sqrt(dim)
    x = torch.randn(1, seq, dim)
    cos, sin = rope_cos_sin(torch.arange(seq), head_dim)

    def scores(wq, wk, rotate):
        q = rotate((x @ wq.T).view(1, seq, n_heads, head_dim), cos, sin)  # (batch, seq, heads, head_dim)
        k = rotate((x @ wk.T).view(1, seq, n_heads, head_dim), cos, sin)
        return torch.einsum("bmhd,bnhd->bhmn", q, k)

    converted = scores(fn(wq, n_heads), fn(wk, n_heads), apply_rope_half)
    # float32 rounding: a score adds head_dim products of rotated features, each of which adds dim products, of
    # terms no bigger in all than |q|·|k| (Cauchy-Schwarz; rotations keep lengths): (dim + head_dim) · EPS of that.
    q_length = (x @ wq.T).view(1, seq, n_heads, head_dim).norm(dim=-1)
    k_length = (x @ wk.T).view(1, seq, n_heads, head_dim).norm(dim=-1)
    tolerance = (dim + head_dim) * FLOAT32_EPS * torch.einsum("bmh,bnh->bhmn", q_length, k_length)
    if not ((converted - scores(wq, wk, apply_rope)).abs() <= tolerance).all():
        raise fail(
            "attention scores with the converted weights",
            "  the rotate-half RoPE on converted weights should give the scores\n"
            "  of the interleaved RoPE on the originals",
        )
    print(f"✓ interleaved to half: correct on {len(shapes)} weight shapes, and the attention scores are unchanged")
