"""Chapter 11's exercises (long context): attention with an online softmax, linear RoPE scaling, dynamic NTK's base.

Each check calls the learner's function through the skeleton of :mod:`.feedback`
(:func:`~.feedback.check_cases`, which enforces the exercise's forbidden calls), compares with the package
(``flash_attention``'s result computed the plain way in float64, ``linear_scaling``, ``dynamic_ntk_theta``)
and raises :class:`~.feedback.CheckFailed` naming the case, what differed and, when the answer matches a
common mistake listed here, its likely cause. The attention check also watches the size of every tensor the
answer makes: a tiled attention never holds a ``(seq, kv_seq)`` matrix. Every message line fits what
``nbgrader validate`` shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ..attention import Attention, attention_weights, causal_mask, repeat_kv
from ..long_context import flash_attention
from ..rope_scaling import dynamic_ntk_theta, linear_scaling, scaled_rope_frequencies
from ..rope import rope_frequencies
from .feedback import Case, Mistake, check_cases, diagnose, fail, tensors

# --- the common wrong answers ----------------------------------------------------------------------


def _flash_attention(
    q, k, v, causal=True, block_size=16, rescale="both", correction="old - new", offset=True, mask="global",
    normalise="end", scale=True, heads="interleave", running_max=True,
):
    """The tiled attention of :func:`~..long_context.flash_attention` with one step done as a learner might.

    In float64 (its rounding far below a learner's float32), except without a running max: that one is in
    float32, where ``exp`` of a large score overflows as the learner's does.
    """
    n_heads, seq, head_dim = q.shape[1], q.shape[2], q.shape[3]
    n_kv_heads, kv_seq = k.shape[1], k.shape[2]
    n_rep = n_heads // n_kv_heads
    if heads == "interleave":  # query head h reads key/value head h // n_rep
        k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    else:  # tiled copies: query head h reads h % n_kv_heads
        k, v = k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1)
    dtype = torch.float64 if running_max else torch.float32
    q = q.to(dtype) / (math.sqrt(head_dim) if scale else 1)
    k, v = k.to(dtype), v.to(dtype)
    first = kv_seq - seq if offset else 0  # position of query 0
    out = torch.empty_like(q)
    for q_start in range(0, seq, block_size):
        q_end = min(q_start + block_size, seq)
        m = torch.full((*q.shape[:2], q_end - q_start, 1), -math.inf, dtype=q.dtype)
        l, acc = torch.zeros_like(m), torch.zeros_like(q[..., q_start:q_end, :])  # noqa: E741
        for k_start in range(0, kv_seq, block_size):
            k_end = min(k_start + block_size, kv_seq)
            scores = q[..., q_start:q_end, :] @ k[..., k_start:k_end, :].transpose(-2, -1)
            if causal:
                if mask != "local":
                    query_pos = torch.arange(first + q_start, first + q_end)[:, None]
                    key_pos = torch.arange(k_start, k_end)[None, :]
                else:  # positions counted from the start of each block
                    query_pos = torch.arange(q_end - q_start)[:, None]
                    key_pos = torch.arange(k_end - k_start)[None, :]
                hidden = key_pos >= query_pos if mask == "strict" else key_pos > query_pos
                if mask == "blocks only":  # whole blocks above the diagonal skipped, the crossing block not masked
                    hidden = torch.full_like(hidden, k_start > first + q_end - 1)
                scores = scores.masked_fill(hidden, -math.inf)
            m_new = torch.maximum(m, scores.amax(dim=-1, keepdim=True)) if running_max else torch.zeros_like(m)
            c = torch.exp(m - m_new) if correction == "old - new" else torch.exp(m_new - m)
            # a row with no visible key yet adds nothing (exp(-inf - (-inf)) is NaN); an overflow stays inf
            p = torch.exp(scores - m_new)
            p = torch.where(torch.isnan(p), 0.0, p)
            c = torch.where(torch.isnan(c), 0.0, c) if correction == "old - new" else c
            l = (c * l if rescale in ("both", "l") else l) + p.sum(dim=-1, keepdim=True)  # noqa: E741
            acc = c * acc if rescale in ("both", "acc") else acc  # rescale "l": l only, not acc
            acc = acc + (p @ v[..., k_start:k_end, :] / (l if normalise == "early" else 1))
            m = m_new
        out[..., q_start:q_end, :] = acc / l if normalise == "end" else acc
    return out.to(torch.float32)


FLASH_ATTENTION = [
    Mistake(
        "looks like there is no running max (exp of the raw scores):\n"
        "exp(s) overflows float32 once a score passes 88; subtract the largest\n"
        "score so far, m, and rescale l and acc by exp(m_old - m_new) when it grows",
        lambda q, k, v, causal, block_size: _flash_attention(q, k, v, causal, block_size, running_max=False),
    ),
    Mistake(
        "looks like only l is rescaled when the max changes, not acc:\n"
        "acc was summed relative to the old max too; multiply it by\n"
        "c = exp(m_old - m_new) before adding p @ v_block, as you do for l",
        lambda q, k, v, causal, block_size: _flash_attention(q, k, v, causal, block_size, rescale="l"),
    ),
    Mistake(
        "looks like the mask also hides the diagonal (key == query):\n"
        "a query sees its own key; hide only the keys after it (key_pos > query_pos)",
        lambda q, k, v, causal, block_size: _flash_attention(q, k, v, causal, block_size, mask="strict"),
    ),
    Mistake(
        "looks like the running sum l is not rescaled when the max changes:\n"
        "l was summed relative to the old max; multiply it by exp(m_old - m_new)\n"
        "before adding the new block's sum, as you do for acc",
        lambda q, k, v, causal, block_size: _flash_attention(q, k, v, causal, block_size, rescale="acc"),
    ),
    Mistake(
        "looks like nothing is rescaled when the max changes:\n"
        "l and acc were summed relative to the old max m_old; multiply both by\n"
        "exp(m_old - m_new) before adding the new block",
        lambda q, k, v, causal, block_size: _flash_attention(q, k, v, causal, block_size, rescale="none"),
    ),
    Mistake(
        "looks like the correction is exp(m_new - m_old), the wrong way round:\n"
        "it must be exp(m_old - m_new) <= 1 (and 0 on the first block, where m_old = -inf)",
        lambda q, k, v, causal, block_size: _flash_attention(q, k, v, causal, block_size, correction="new - old"),
    ),
    Mistake(
        "looks like the values are divided by the running sum too early:\n"
        "keep acc unnormalised (the sum of p @ v) and divide by l once,\n"
        "after the last key block: later blocks still change l",
        lambda q, k, v, causal, block_size: _flash_attention(q, k, v, causal, block_size, normalise="early"),
    ),
    Mistake(
        "looks like query i is placed at position i, ignoring the cache:\n"
        "the queries are the LAST seq of kv_seq positions: query i sits at\n"
        "position kv_seq - seq + i and sees keys 0 ... kv_seq - seq + i",
        lambda q, k, v, causal, block_size: _flash_attention(q, k, v, causal, block_size, offset=False),
    ),
    Mistake(
        "looks like the mask compares positions counted inside each block:\n"
        "compare the global positions, key k_start + j against query\n"
        "(kv_seq - seq) + q_start + i; blocks off the diagonal or after a cache differ",
        lambda q, k, v, causal, block_size: _flash_attention(q, k, v, causal, block_size, mask="local"),
    ),
    Mistake(
        "looks like the block crossing the diagonal is not masked:\n"
        "skipping the blocks above the diagonal is not enough; inside the block that\n"
        "crosses it, set the scores of keys after the query to -inf",
        lambda q, k, v, causal, block_size: _flash_attention(q, k, v, causal, block_size, mask="blocks only"),
    ),
    Mistake(
        "looks like the scores are not scaled:\ndivide q·k by √head_dim before the exponential",
        lambda q, k, v, causal, block_size: _flash_attention(q, k, v, causal, block_size, scale=False),
    ),
    Mistake(
        "looks like the key/value heads are tiled with `repeat`:\n"
        "query head h uses key/value head h // n_rep; use repeat_interleave",
        lambda q, k, v, causal, block_size: _flash_attention(q, k, v, causal, block_size, heads="tile"),
    ),
]

NOT_FLOAT32 = (
    "looks like the frequencies come back in another dtype:\n"
    "return float32, the dtype of inv_freq (RoPE's angles are computed with it)"
)
LINEAR_SCALING = [
    Mistake(NOT_FLOAT32, lambda inv_freq, factor: inv_freq.double() / factor),
    Mistake(
        "looks like the frequencies are multiplied by factor:\n"
        "interpolation makes every pair turn factor times SLOWER: divide by factor",
        lambda inv_freq, factor: inv_freq * factor,
    ),
]


def _ntk_theta(theta, head_dim, factor, L, seq_len, exponent=None, clamp=True, shift=True, scaled=True, dynamic=True):
    """The base of dynamic NTK, right or with one of the common mistakes (the keyword arguments)."""
    exponent = head_dim / (head_dim - 2) if exponent is None else exponent
    length = max(seq_len, L) if clamp else seq_len
    growth = (factor if scaled else 1.0) * length / L - ((factor - 1) if shift else 0.0)
    return theta * (growth if dynamic else factor) ** exponent


NOT_A_FLOAT = (
    "looks like theta comes back as a tensor:\n"
    "return a Python float, as theta is one (float(...) or .item())"
)
DYNAMIC_NTK_THETA = [
    Mistake(
        NOT_A_FLOAT,
        lambda *args: torch.tensor(_ntk_theta(*args), dtype=torch.float64),
    ),
    Mistake(
        "looks like the exponent is (head_dim - 2) / head_dim, upside down:\n"
        "the base becomes theta * g ** (head_dim / (head_dim - 2)), so that the\n"
        "slowest pair, theta ** -((head_dim - 2) / head_dim), is divided by exactly g",
        lambda theta, d, factor, L, seq_len: _ntk_theta(theta, d, factor, L, seq_len, exponent=(d - 2) / d),
    ),
    Mistake(
        "looks like the base is multiplied by the growth g alone:\n"
        "raise g to the power head_dim / (head_dim - 2):\n"
        "theta' = theta * g ** (head_dim / (head_dim - 2))",
        lambda theta, d, factor, L, seq_len: _ntk_theta(theta, d, factor, L, seq_len, exponent=1.0),
    ),
    Mistake(
        "looks like the base changes below the original context:\n"
        "up to L = original_max_position_embeddings nothing changes: use max(seq_len, L)",
        lambda theta, d, factor, L, seq_len: _ntk_theta(theta, d, factor, L, seq_len, clamp=False),
    ),
    Mistake(
        "looks like the growth is factor * seq_len / L:\n"
        "subtract factor - 1, so that g is 1 at seq_len = L (no jump when the\n"
        "original context is first exceeded)",
        lambda theta, d, factor, L, seq_len: _ntk_theta(theta, d, factor, L, seq_len, shift=False),
    ),
    Mistake(
        "looks like factor is left out of the growth:\ng = factor * max(seq_len, L) / L - (factor - 1)",
        lambda theta, d, factor, L, seq_len: _ntk_theta(theta, d, factor, L, seq_len, scaled=False, shift=False),
    ),
    Mistake(
        "looks like the growth is factor alone (static NTK):\n"
        "dynamic NTK follows the length: g = factor * max(seq_len, L) / L - (factor - 1)",
        lambda theta, d, factor, L, seq_len: _ntk_theta(theta, d, factor, L, seq_len, dynamic=False),
    ),
]

# --- a tiled attention never holds the score matrix ------------------------------------------------


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operation produces inside the block."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


# --- the checks ------------------------------------------------------------------------------------


def _plain_attention(q, k, v, causal):
    """Chapter 04's attention in float64 (rounding ~1e-16): the exact answer, as float32."""
    q, k, v = q.double(), k.double(), v.double()
    n_rep = q.shape[1] // k.shape[1]
    seq, kv_seq = q.shape[2], k.shape[2]
    mask = causal_mask(seq, kv_seq) if causal else torch.ones(seq, kv_seq, dtype=torch.bool)
    return (attention_weights(q, repeat_kv(k, n_rep), mask) @ repeat_kv(v, n_rep)).float()


# (label, batch, n_heads, n_kv_heads, seq, kv_seq, head_dim, causal, block_size); kv_seq > seq: keys from a cache
ATTENTION_CASES = [
    ("causal, 2 heads, seq 32, block 8", 2, 2, 2, 32, 32, 8, True, 8),
    ("causal, GQA 4 heads / 2 kv heads, seq 37, block 8", 1, 4, 2, 37, 37, 8, True, 8),
    ("causal, MQA 3 heads / 1 kv head, seq 20, block 7", 2, 3, 1, 20, 20, 8, True, 7),
    ("not causal, 2 heads, seq 19, block 5", 1, 2, 2, 19, 19, 8, False, 5),
    ("causal, 5 new queries after 27 cached keys, block 8", 1, 2, 2, 5, 32, 8, True, 8),
    ("causal, 1 query after 28 cached keys (decoding), block 8", 2, 4, 2, 1, 29, 8, True, 8),
    ("causal, 12 queries after 18 cached keys, block 4", 1, 2, 1, 12, 30, 8, True, 4),
    ("causal, seq 12, block 64 (larger than the sequence)", 1, 2, 2, 12, 12, 8, True, 64),
]
# Scores up to about 200 (q and k times 8): exp without the running max overflows float32 (exp(89) > 3.4e38).
# A float32 score of size 200 is off by ~200 * 2**-24 * sqrt(8) = 3e-5, which moves the weights by that fraction
# and the output (|v| < 4) by ~1e-4 at most: atol 1e-3 leaves room (the hidden tests use the same); a mistake
# moves it by 0.1 or gives inf and NaN.
LARGE_SCORES = ("causal, large scores (q and k times 8), seq 40, block 16", 1, 2, 2, 40, 40, 8, True, 16)
LARGE_SCORES_ATOL = 1e-3
# One case long enough that the full score matrix dwarfs every tensor a tiled attention needs:
# q, k and v (heads * seq * head_dim), a score block (heads * block²), a row of blocks (heads * seq * block).
MEMORY_CASE = ("causal, 2 heads, seq 96, block 16", 1, 2, 2, 96, 96, 16, True, 16)


def check_flash_attention(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(q, k, v, causal, block_size)``: attention over key blocks with an online softmax.

    ``q`` ``(batch, n_heads, seq, head_dim)``, ``k`` and ``v`` ``(batch, n_kv_heads, kv_seq, head_dim)``
    float32; returns ``(batch, n_heads, seq, head_dim)``, equal to ``softmax(q k^T / √head_dim) v``.
    SDPA, the package's attention and ``flash_attention`` are ruled out, and no tensor of ``seq * kv_seq``
    elements may appear.
    """
    cases = []
    for case in [*ATTENTION_CASES, LARGE_SCORES, MEMORY_CASE]:
        label, batch, n_heads, n_kv_heads, seq, kv_seq, head_dim, causal, block_size = case
        generator = torch.Generator().manual_seed(seq * 100 + kv_seq)
        q = torch.randn(batch, n_heads, seq, head_dim, generator=generator)
        k, v = torch.randn(2, batch, n_kv_heads, kv_seq, head_dim, generator=generator)
        if case is LARGE_SCORES:
            q, k = q * 8, k * 8
        name = f"my_flash_attention({label})"
        cases.append(Case(name, (q, k, v, causal, block_size), _plain_attention(q, k, v, causal)))
    largest = []  # the largest tensor of each call, in elements

    def watched(*args):
        with _LargestTensor() as sizes:
            try:
                return fn(*args)
            finally:
                largest.append(sizes.largest)

    def small(case, given, got):
        if not all(torch.equal(a, b) for a, b in zip(given[:3], case.args[:3])):
            raise fail(case.label, "  changed its input q, k or v", "work on new tensors (q / √d, not q /= √d)")
        seq, kv_seq, block_size = case.args[0].shape[2], case.args[1].shape[2], case.args[4]
        if case is cases[-1] and largest[-1] >= seq * kv_seq:  # the memory case
            raise fail(
                case.label,
                f"  a tensor of {largest[-1]:,} elements appeared; the whole (seq, kv_seq) score\n"
                f"  matrix of one head has {seq * kv_seq:,} (a score block of {block_size} x {block_size}: "
                f"{block_size * block_size})",
                "looks like the full score matrix (or a full mask) is built:\n"
                "compute the scores one block of keys at a time, q_block @ k_block^T",
            )

    # float32 inputs, sums of at most 96 terms of size < 30: a few units of 1.2e-7 relative in any
    # correct order, far inside the default 1e-5; every mistake above moves the output by 1e-2 or more
    def compare(label, got, expected, args, mistakes):
        atol, rtol = (LARGE_SCORES_ATOL, 0) if label == cases[-2].label else (1e-5, 1e-5)  # cases[-2]: large scores
        tensors(atol, rtol)(label, got, expected, args, mistakes)

    check_cases(
        "flash attention", "my_flash_attention", watched, cases, compare=compare,
        mistakes=FLASH_ATTENTION, before=small,
        forbidden=[F.scaled_dot_product_attention, flash_attention, attention_weights, Attention],
    )


# (head_dim, theta, factor): small and real head sizes and bases, factor 1 (no change) and a fractional one
LINEAR_CASES = [(64, 10000.0, 2.0), (128, 500000.0, 8.0), (8, 100.0, 4.0), (64, 100000.0, 1.0), (16, 10000.0, 2.5)]


def check_linear_scaling(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """``fn(inv_freq, factor)``: position interpolation, as the package's ``linear_scaling``."""
    cases = []
    for head_dim, theta, factor in LINEAR_CASES:
        inv_freq = rope_frequencies(head_dim, theta)
        name = f"my_linear_scaling(frequencies of head_dim {head_dim}, theta {theta:g}, factor {factor:g})"
        cases.append(Case(name, (inv_freq, factor), linear_scaling(inv_freq, factor)))

    def unchanged(case, given, got):
        if not torch.equal(given[0], case.args[0]):
            raise fail(
                case.label,
                "  changed its input inv_freq (an in-place /= ?)",
                "return a new tensor, inv_freq / factor:\nthe caller still needs the plain frequencies",
            )
        if isinstance(got, torch.Tensor) and got.dtype != case.args[0].dtype:
            raise fail(case.label, f"  dtype {got.dtype}, expected {case.args[0].dtype}", NOT_FLOAT32)

    # one division per element, as the package does it: equal up to one rounding
    check_cases(
        "linear scaling", "my_linear_scaling", fn, cases, compare=tensors(atol=0, rtol=1e-6), mistakes=LINEAR_SCALING,
        forbidden=[linear_scaling, scaled_rope_frequencies], before=unchanged,
    )


# (theta, head_dim, factor, L, seq_len): 2x and 8x the context with factor 1, a factor that is not 1 (every
# mistaken growth differs there), a sequence shorter than L and one of exactly L (the base stays), a fraction
NTK_CASES = [
    (10000.0, 64, 1.0, 1000, 2000),
    (500000.0, 128, 1.0, 8192, 65536),
    (100.0, 8, 2.0, 64, 256),
    (10000.0, 64, 2.0, 1000, 500),
    (10000.0, 64, 4.0, 1000, 1000),
    (100000.0, 16, 1.5, 4096, 10000),
]


def _same_float(label: str, got: object, expected: float, args: tuple, mistakes) -> None:
    """Equal up to float64 rounding: a power and a few products, each within 1.1e-16 relative, so another correct
    order is some 1e-15 off; 1e-9 leaves room, and every catalogued mistake is off by 5% or more."""

    def same(a, b):
        return isinstance(a, (int, float)) and math.isclose(a, b, rel_tol=1e-9)

    if not isinstance(got, (int, float)):
        raise fail(label, f"  expected a float, got {type(got).__name__}", NOT_A_FLOAT)
    if not same(got, expected):
        raise fail(label, f"  expected {expected!r}, got {got!r}", diagnose(got, args, mistakes, same))


def check_dynamic_ntk_theta(fn: Callable[[float, int, float, int, int], float]) -> None:
    """``fn(theta, head_dim, factor, original_max_position_embeddings, seq_len)``: the base of dynamic NTK-aware
    scaling for ``seq_len`` tokens, as the package's ``dynamic_ntk_theta``."""
    cases = [
        Case(f"my_dynamic_ntk_theta({theta:g}, head_dim={d}, factor={f:g}, L={L}, seq_len={n})", (theta, d, f, L, n),
             dynamic_ntk_theta(theta, d, f, L, n))
        for theta, d, f, L, n in NTK_CASES
    ]  # fmt: skip
    check_cases(
        "dynamic NTK base", "my_dynamic_ntk_theta", fn, cases, compare=_same_float, mistakes=DYNAMIC_NTK_THETA,
        forbidden=[dynamic_ntk_theta, scaled_rope_frequencies],
    )
