"""Chapter 04's exercises (attention): causal attention with grouped-query heads, and the KV cache's size in bytes.

Each check calls the learner's function through the skeleton of :mod:`.feedback`
(:func:`~.feedback.check_cases`), compares with the package (``attention_weights``, ``KVCache``) and,
when the answer differs, names the catalogued mistake below that gives what the learner got.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..attention import Attention, attention_weights, causal_mask, repeat_kv
from .feedback import Case, Mistake, check_cases, diagnose, fail, tensors

# --- the common wrong answers ---------------------------------------------------------------------


def _attention(q, k, v, scale="root", mask="causal", expand="interleave", fill=float("-inf"), softmax_dim=-1):
    n_rep = q.shape[1] // k.shape[1]
    if expand == "interleave":
        k, v = k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1)
    else:  # tiled: heads 0, 1, ..., 0, 1, ...
        k, v = k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1)
    head_dim, seq = q.shape[-1], q.shape[-2]
    scores = q @ k.transpose(-2, -1)  # (batch, n_heads, seq, seq)
    scores = scores / {"root": math.sqrt(head_dim), "head_dim": head_dim, "none": 1.0}[scale]
    allowed = {
        "causal": torch.ones(seq, seq, dtype=torch.bool).tril(),
        "none": torch.ones(seq, seq, dtype=torch.bool),
        "strict": torch.ones(seq, seq, dtype=torch.bool).tril(-1),
        "future": torch.ones(seq, seq, dtype=torch.bool).triu(),
    }[mask]
    scores = scores.masked_fill(~allowed, fill)
    return torch.softmax(scores, dim=softmax_dim) @ v


CAUSAL_ATTENTION = [
    Mistake(
        "looks like the causal mask is missing:\nposition 0 attends to later tokens",
        lambda q, k, v: _attention(q, k, v, mask="none"),
    ),
    Mistake(
        "looks like the scores are divided by head_dim:\ndivide them by its square root, √head_dim",
        lambda q, k, v: _attention(q, k, v, scale="head_dim"),
    ),
    Mistake(
        "looks like the scores are not scaled:\ndivide q·k by √head_dim before the softmax",
        lambda q, k, v: _attention(q, k, v, scale="none"),
    ),
    Mistake(
        "looks like the key/value heads are tiled with `repeat`:\n"
        "query head h uses key/value head h // n_rep; use repeat_interleave",
        lambda q, k, v: _attention(q, k, v, expand="tile"),
    ),
    Mistake(
        "looks like the masked scores are set to 0, not -inf:\n"
        "the softmax still gives them weight (exp(0) = 1); fill with float('-inf')",
        lambda q, k, v: _attention(q, k, v, fill=0.0),
    ),
    Mistake(
        "looks like the mask also hides the diagonal:\nposition i must see itself (tril(), not tril(-1))",
        lambda q, k, v: _attention(q, k, v, mask="strict"),
    ),
    Mistake(
        "looks like the mask is the wrong way round:\nposition i must see positions 0 … i, not i … seq − 1",
        lambda q, k, v: _attention(q, k, v, mask="future"),
    ),
    Mistake(
        "looks like the softmax is over the queries:\nnormalise over the keys, the last dimension (dim=-1)",
        lambda q, k, v: _attention(q, k, v, softmax_dim=-2),
    ),
]


def _cache_bytes(config, seq_len, bytes_per_value, batch_size=1, factor=2, heads=None, layers=None):
    heads = config.n_kv_heads if heads is None else heads
    layers = config.n_layers if layers is None else layers
    return factor * layers * heads * config.head_dim * seq_len * batch_size * bytes_per_value


KV_CACHE_BYTES = [
    Mistake(
        "looks like the factor 2 is missing:\nevery token stores a key *and* a value",
        lambda c, s, b, n=1: _cache_bytes(c, s, b, n, factor=1),
    ),
    Mistake(
        "looks like n_heads is used instead of n_kv_heads:\n"
        "the cache holds the key/value heads only (that is what GQA saves)",
        lambda c, s, b, n=1: _cache_bytes(c, s, b, n, heads=c.n_heads),
    ),
    Mistake(
        "looks like n_heads is used instead of n_kv_heads, and the factor 2 is missing:\n"
        "every token stores a key and a value, for each key/value head",
        lambda c, s, b, n=1: _cache_bytes(c, s, b, n, factor=1, heads=c.n_heads),
    ),
    Mistake(
        "looks like the layers are missing:\nevery layer keeps its own keys and values (× n_layers)",
        lambda c, s, b, n=1: _cache_bytes(c, s, b, n, layers=1),
    ),
    Mistake(
        "looks like batch_size is missing:\nevery sequence in the batch has its own cache",
        lambda c, s, b, n=1: _cache_bytes(c, s, b, 1),
    ),
    Mistake(
        "looks like this counts numbers, not bytes:\nmultiply by bytes_per_value",
        lambda c, s, b, n=1: _cache_bytes(c, s, 1, n),
    ),
]


# --- the checks -----------------------------------------------------------------------------------


def check_causal_attention(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``fn(q, k, v)``: causal attention with grouped-query heads.

    ``q`` is ``(batch, n_heads, seq, head_dim)``; ``k`` and ``v`` are
    ``(batch, n_kv_heads, seq, head_dim)`` with ``n_heads`` a multiple of
    ``n_kv_heads``. Returns ``(batch, n_heads, seq, head_dim)``.
    """
    torch.manual_seed(0)
    cases = []
    for batch, n_heads, n_kv_heads, seq, head_dim in [
        (1, 1, 1, 3, 4),
        (2, 4, 4, 5, 8),
        (2, 4, 2, 6, 8),
        (1, 6, 1, 4, 4),
        (3, 8, 2, 33, 64),
    ]:
        q = torch.randn(batch, n_heads, seq, head_dim)
        k, v = torch.randn(2, batch, n_kv_heads, seq, head_dim)
        n_rep = n_heads // n_kv_heads
        expected = attention_weights(q, repeat_kv(k, n_rep), causal_mask(seq, seq)) @ repeat_kv(v, n_rep)
        label = (
            f"my_scaled_dot_product_attention(heads={n_heads}, kv_heads={n_kv_heads}, seq={seq}, head_dim={head_dim})"
        )
        cases.append(Case(label, (q, k, v), expected))
    check_cases(
        "causal attention",
        "my_scaled_dot_product_attention",
        fn,
        cases,
        compare=tensors(),
        mistakes=CAUSAL_ATTENTION,
        forbidden=[repeat_kv, attention_weights, Attention, F.scaled_dot_product_attention],
    )


def check_kv_cache_bytes(fn: Callable[..., int]) -> None:
    """``fn(config, seq_len, bytes_per_value, batch_size=1)``: bytes of the keys and values, every layer.

    Compared with what the package's :class:`KVCache` allocates for the config (on the meta device:
    shapes only, no memory).
    """
    from ..config import PRESETS
    from ..kv_cache import KVCache, kv_cache_bytes

    # smollm2 first, with a batch of 3 in float32: 30 layers, 9 query and 3 key/value heads, 4 bytes, so that
    # every catalogued mistake (a factor 2, n_heads, n_layers, batch_size, bytes) gives a different number
    cases = [
        ("smollm2-135m", 1000, torch.float32, 3),
        ("llama2-7b", 4096, torch.float16, 1),
        ("llama2-70b", 4096, torch.float16, 1),
        ("smollm2-135m", 8192, torch.float32, 1),
        ("tiny", 100, torch.float32, 3),
        ("llama2-13b", 7, torch.float16, 5),
        ("llama2-7b", 1, torch.float16, 1),
        ("tiny", 10, torch.float32, 2),
    ]
    configs = {name: PRESETS[name] for name, *_ in cases}
    # Llama 2 70B with every query head its own key/value head (MHA), and with one for all (MQA)
    configs |= {"llama2-70b, 64 kv heads": PRESETS["llama2-70b"].replace(n_kv_heads=64)}
    configs |= {"llama2-70b, 1 kv head": PRESETS["llama2-70b"].replace(n_kv_heads=1)}
    cases += [("llama2-70b, 64 kv heads", 4096, torch.float16, 1), ("llama2-70b, 1 kv head", 4096, torch.float16, 1)]

    def compare(label, got, expected, args, mistakes):
        if got != expected:
            shown = f"{got:,}" if isinstance(got, (int, float)) else repr(got)
            raise fail(
                label, f"  expected {expected:,} bytes, got {shown}", diagnose(got, args, mistakes, lambda a, b: a == b)
            )
        if not isinstance(got, int):
            raise fail(label, f"  expected an int, got {type(got).__name__} {got!r}", "use // or int(), not /")

    checked = []
    for name, seq_len, dtype, batch_size in cases:
        config = configs[name]
        caches = [
            KVCache(batch_size, seq_len, config.n_kv_heads, config.head_dim, dtype, "meta")
            for _ in range(config.n_layers)
        ]
        expected = sum(cache.k.nbytes + cache.v.nbytes for cache in caches)
        label = f"my_kv_cache_bytes({name}, {seq_len} tokens, {dtype}, batch {batch_size})"
        checked.append(Case(label, (config, seq_len, dtype.itemsize, batch_size), expected))
    check_cases(
        "kv cache bytes",
        "my_kv_cache_bytes",
        fn,
        checked,
        compare=compare,
        mistakes=KV_CACHE_BYTES,
        forbidden=[kv_cache_bytes],
    )
