"""Chapter 02's exercises (embeddings and RMSNorm): RMSNorm, and a pre-norm transformer block from its parts.

Each check calls the learner's function through the skeleton of :mod:`.feedback`
(:func:`~.feedback.check_cases`), compares with the package (``rms_norm``, ``TransformerBlock``) and,
when the answer differs, names the catalogued mistake below that gives what the learner got.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..rmsnorm import RMSNorm, rms_norm
from ..rope import rope_cos_sin
from .feedback import FLOAT32_EPS, Case, Mistake, check_cases, compare_tensors, tensors

# --- the common wrong answers ---------------------------------------------------------------------


def _mean_square(x):
    return x.pow(2).mean(-1, keepdim=True)


def _rms_norm(x, weight, eps):
    return x * torch.rsqrt(_mean_square(x) + eps) * weight


RMSNORM = [
    Mistake(
        "looks like eps is missing:\nthe root should be of mean(x²) + eps, not of mean(x²) alone",
        lambda x, w, eps: x * torch.rsqrt(_mean_square(x)) * w,
    ),
    Mistake(
        "looks like eps is added after the square root:\ndivide by sqrt(mean(x²) + eps), eps inside the root",
        lambda x, w, eps: x / (_mean_square(x).sqrt() + eps) * w,
    ),
    Mistake(
        "looks like the mean is subtracted (that is LayerNorm):\n"
        "RMSNorm divides x itself by its root mean square, without centring it",
        lambda x, w, eps: (
            (x - x.mean(-1, keepdim=True)) * torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + eps) * w
        ),
    ),
    Mistake(
        "looks like the mean is subtracted (that is LayerNorm):\n"
        "RMSNorm divides x itself by its root mean square, without centring it",
        lambda x, w, eps: (x - x.mean(-1, keepdim=True)) * torch.rsqrt(_mean_square(x) + eps) * w,
    ),
    Mistake(
        "looks like the gain is missing:\nmultiply the normalised x by weight",
        lambda x, w, eps: x * torch.rsqrt(_mean_square(x) + eps),
    ),
    Mistake(
        "looks like the sum of the squares, not their mean:\ndivide the sum by dim (or use .mean(dim=-1))",
        lambda x, w, eps: x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps) * w,
    ),
    Mistake(
        "looks like the square root is missing:\ndivide by sqrt(mean(x²) + eps), not by mean(x²) + eps",
        lambda x, w, eps: x / (_mean_square(x) + eps) * w,
    ),
    Mistake(
        "looks like the mean is over the wrong dimensions:\n"
        "normalise each vector over the last dimension only (dim=-1, keepdim=True)",
        lambda x, w, eps: x * torch.rsqrt(x.pow(2).mean() + eps) * w,
    ),
]


def _block(x, block, cos, sin, post_norm=False, residual=True, one_norm=False, parallel=False, swapped=False):
    first, second = block.attention_norm, block.ffn_norm
    if swapped:
        first, second = second, first
    if one_norm:
        second = first
    if post_norm:
        h = _rms_norm(x + block.attention(x, cos, sin), first.weight, first.eps)
        return _rms_norm(h + block.feed_forward(h), second.weight, second.eps)
    h = (x if residual else 0) + block.attention(_rms_norm(x, first.weight, first.eps), cos, sin)
    inner = x if parallel else h
    return (h if residual else 0) + block.feed_forward(_rms_norm(inner, second.weight, second.eps))


TRANSFORMER_BLOCK = [
    Mistake(
        "looks like a post-norm block (normalising after adding):\n"
        "pre-norm normalises each sub-layer's input: h = x + attention(norm(x))",
        lambda *a: _block(*a, post_norm=True),
    ),
    Mistake(
        "looks like the residual connections are missing:\nadd each sub-layer's output to its input",
        lambda *a: _block(*a, residual=False),
    ),
    Mistake(
        "looks like attention_norm is used twice:\nthe feed-forward network gets ffn_norm(h), with its own gain",
        lambda *a: _block(*a, one_norm=True),
    ),
    Mistake(
        "looks like the two norms are swapped:\nattention_norm goes before the attention, ffn_norm before the feed-forward",
        lambda *a: _block(*a, swapped=True),
    ),
    Mistake(
        "looks like the feed-forward network reads x, not h:\n"
        "it normalises h = x + attention(...), the stream after the attention",
        lambda *a: _block(*a, parallel=True),
    ),
]


# --- the checks -----------------------------------------------------------------------------------

RMSNORM_RULES = [rms_norm, RMSNorm, F.rms_norm, torch.rms_norm, torch.nn.RMSNorm]


def check_rmsnorm(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> None:
    """``fn(x, weight, eps)``: RMS-normalise the last dimension of ``x`` and scale by ``weight``."""
    torch.manual_seed(0)
    cases = []
    # (shape, eps, scale, shift): values of size 3, then of size 50 around -7 (where eps is negligible)
    for shape, eps, scale, shift in [((2, 3, 8), 1e-5, 3, 0.5), ((5, 16), 1e-6, 3, 0.5), ((1, 1, 4), 1e-2, 3, 0.5),
                                     ((3, 4), 1.0, 3, 0.5), ((3, 4, 32), 1e-6, 50, -7)]:  # fmt: skip
        x = torch.randn(shape) * scale + shift
        weight = torch.rand(shape[-1]) + 0.5
        label = f"my_rms_norm(x of shape {shape}{', values of size 50' if scale == 50 else ''}, eps={eps})"
        cases.append(Case(label, (x, weight, eps), rms_norm(x, weight, eps)))
    x = torch.tensor([[3.0, 4.0]])  # mean(x²) = 12.5: eps = 1 inside the root gives 3 / sqrt(13.5)
    weight = torch.ones(2)
    cases.append(Case("my_rms_norm(x = [[3, 4]], weight 1, eps=1.0)", (x, weight, 1.0), rms_norm(x, weight, 1.0)))
    def compare(label, got, expected, args, mistakes):
        # float32 rounding: a mean of dim squares, a square root and a few operations, (dim/2 + 4) · EPS of each
        # value apart at most between two correct versions (chapter 02; the hidden tests allow the same)
        tensors(atol=0, rtol=(args[0].shape[-1] / 2 + 4) * FLOAT32_EPS)(label, got, expected, args, mistakes)

    check_cases("rmsnorm", "my_rms_norm", fn, cases, compare=compare, mistakes=RMSNORM, forbidden=RMSNORM_RULES)


def _block_rounding(name: str, got: object, expected: torch.Tensor, args: tuple, mistakes) -> None:
    """Compare a block's output up to float32 rounding.

    Your norms round differently from the package's (chapter 02), and the difference travels through the
    block's chains of additions, each rounding to EPS/2 of what it adds: the two norms' means and the
    projections (dim each), wo (n_heads · head_dim) and w2 (hidden_dim).
    """
    block = args[1]
    dim = block.attention_norm.weight.numel()
    chain = 4 * dim + block.attention.wo.in_features + block.feed_forward.w2.in_features
    atol = chain * FLOAT32_EPS * expected.abs().max().item()
    compare_tensors(name, got, expected, atol=atol, rtol=0, args=args, mistakes=mistakes)


def check_transformer_block(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(x, block, cos, sin)``: a pre-norm block from the parts of the package's ``TransformerBlock``."""
    from ..config import PRESETS
    from ..model import TransformerBlock

    cases = []
    with torch.no_grad():
        for preset, changes in (("tiny", {}), ("tiny", {"norm_eps": 0.5}), ("small", {})):
            config = PRESETS[preset].replace(**changes)
            torch.manual_seed(0)
            block = TransformerBlock(config).eval()
            # gains other than 1, and different for the two norms: a swapped or skipped norm shows
            block.attention_norm.weight.uniform_(0.5, 1.5)
            block.ffn_norm.weight.uniform_(0.5, 1.5)
            for seq in (1, 6) if preset == "tiny" else (9,):
                x = torch.randn(3 if preset == "small" else 2, seq, config.dim) * 3
                cos, sin = rope_cos_sin(torch.arange(seq), config.head_dim, config.rope_theta)
                label = f"my_transformer_block({preset}, norm_eps={config.norm_eps}, seq={seq})"
                cases.append(Case(label, (x, block, cos, sin), block(x, cos, sin)))
        check_cases(
            "transformer block",
            "my_transformer_block",
            fn,
            cases,
            compare=_block_rounding,
            mistakes=TRANSFORMER_BLOCK,
            forbidden=[TransformerBlock, *RMSNORM_RULES],
        )
