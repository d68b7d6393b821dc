"""The common wrong answers to each exercise, each written out and named.

Every :class:`~.feedback.Mistake` here is a wrong answer as a learner writes it (RMSNorm without
``eps``, attention without the causal mask, the KV cache without its factor 2, ...), with the
exercise function's arguments. When a check finds a difference it runs these on the same input; the
one that gives exactly what the learner got names the mistake. Each cause is a few lines of at most
:data:`~.feedback.LINE_WIDTH` characters (``nbgrader validate`` cuts longer ones).
tests/test_course_feedback.py answers every check with every mistake listed here and asserts that
the check names it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from itertools import pairwise

import torch
import torch.nn.functional as F

from .feedback import Mistake

# --- 01 · tokenizer --------------------------------------------------------------------------------


def _pairs(ids):
    return list(pairwise(ids))


PAIR_COUNTS = [
    Mistake(
        "looks like each pair is counted once:\ncount every occurrence (a Counter, or += 1 per pair)",
        lambda ids: {pair: 1 for pair in _pairs(ids)},
    ),
    Mistake(
        "looks like the last id is paired with the first:\nonly neighbours count, n − 1 pairs for n ids",
        lambda ids: dict(Counter(_pairs(ids + ids[:1]))) if len(ids) > 1 else {},
    ),
]


def _merge_without_skip(ids, pair, new_id):
    out = []
    for i, current in enumerate(ids):
        out.append(new_id if tuple(ids[i : i + 2]) == tuple(pair) else current)
    return out


def _merge_dropping_last(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


MERGE = [
    Mistake(
        "looks like the second id of a merged pair is kept:\nafter a match, skip both ids (i += 2)",
        _merge_without_skip,
    ),
    Mistake(
        "looks like the last id is dropped when it is not part of a match:\n"
        "after the loop over pairs, keep the id that is left",
        _merge_dropping_last,
    ),
]


# The wrong answers are written as a learner writes them, without the package's functions that the
# exercises rule out (a check would report the forbidden call instead of the mistake).


def _merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _encode(text, merges, start, choose):
    ids = start(text)
    while len(ids) > 1:
        pair = choose(Counter(_pairs(ids)), merges)
        if pair not in merges:
            break
        ids = _merge(ids, pair, merges[pair])
    return ids


def _utf8(text):
    return list(text.encode("utf-8"))


def _earliest(counts, merges):
    return min(counts, key=lambda p: merges.get(p, float("inf")))


def _most_frequent_known(counts, merges):
    known = [p for p in counts if p in merges]
    return min(known, key=lambda p: (-counts[p], p)) if known else None


BPE_ENCODE = [
    Mistake(
        "looks like it starts from code points (ord), not UTF-8 bytes:\n"
        "start from list(text.encode('utf-8')), ids 0-255",
        lambda text, merges: _encode(text, merges, lambda t: [ord(c) for c in t], _earliest),
    ),
    Mistake(
        "looks like the most frequent pair is merged first:\n"
        "encoding applies the merge learned earliest (the smallest new id)",
        lambda text, merges: _encode(text, merges, _utf8, _most_frequent_known),
    ),
    Mistake(
        "looks like the merge learned last is applied first:\nchoose the smallest new id, not the largest",
        lambda text, merges: _encode(
            text, merges, _utf8, lambda c, m: max((p for p in c if p in m), key=m.get, default=None)
        ),
    ),
]


def train_bpe(text: str, n_merges: int, tie_break: Callable = lambda pair: pair) -> dict[tuple[int, int], int]:
    """The trainer of exercise 01: the most frequent pair, ties to the smallest (another ``tie_break``: a mistake)."""
    ids, merges = list(text.encode("utf-8")), {}
    for new_id in range(256, 256 + n_merges):
        counts = Counter(_pairs(ids))
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], tie_break(p)))
        ids, merges[best] = _merge(ids, best, new_id), new_id
    return merges


TRAIN_BPE = [
    Mistake(
        "looks like a tie goes to the largest pair:\nchoose the smallest, min over (-count, pair)",
        lambda text, n: train_bpe(text, n, tie_break=lambda p: (-p[0], -p[1])),
    ),
    Mistake(
        "looks like the new ids start at 255 or 257:\nthe first merge gets 256, the next 257, ...",
        lambda text, n: {pair: i - 1 for pair, i in train_bpe(text, n).items()},
    ),
    Mistake(
        "looks like the new ids start at 255 or 257:\nthe first merge gets 256, the next 257, ...",
        lambda text, n: {pair: i + 1 for pair, i in train_bpe(text, n).items()},
    ),
]


# --- 02 · RMSNorm ----------------------------------------------------------------------------------


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


# --- 03 · RoPE -------------------------------------------------------------------------------------


def _rope(x, cos, sin, sign=1.0, concatenate=False):
    x0, x1 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos[:, None, :], sign * sin[:, None, :]
    y0, y1 = x0 * cos - x1 * sin, x0 * sin + x1 * cos
    return torch.cat((y0, y1), -1) if concatenate else torch.stack((y0, y1), -1).flatten(-2)


def _rope_halves(x, cos, sin):
    first, second = x.chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)


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

# --- 04 · attention --------------------------------------------------------------------------------


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

# --- 05 · SwiGLU -----------------------------------------------------------------------------------


def _silu(a):
    return a * torch.sigmoid(a)


SWIGLU = [
    Mistake(
        "looks like silu is applied to w3 x instead of w1 x:\nthe gate is w1: w2 (silu(w1 x) * w3 x)",
        lambda x, w1, w2, w3: (_silu(x @ w3.T) * (x @ w1.T)) @ w2.T,
    ),
    Mistake(
        "looks like sigmoid(w1 x), not silu(w1 x):\nsilu(a) = a · sigmoid(a)",
        lambda x, w1, w2, w3: (torch.sigmoid(x @ w1.T) * (x @ w3.T)) @ w2.T,
    ),
    Mistake(
        "looks like ReLU, not SiLU:\nsilu(a) = a · sigmoid(a)",
        lambda x, w1, w2, w3: (F.relu(x @ w1.T) * (x @ w3.T)) @ w2.T,
    ),
    Mistake(
        "looks like the w3 x factor is missing:\nSwiGLU multiplies silu(w1 x) by w3 x before w2",
        lambda x, w1, w2, w3: _silu(x @ w1.T) @ w2.T,
    ),
    Mistake(
        "looks like silu is applied after the product:\nit is silu(w1 x) * w3 x, the gate alone goes through silu",
        lambda x, w1, w2, w3: _silu((x @ w1.T) * (x @ w3.T)) @ w2.T,
    ),
]


def _hidden_dim(dim, multiple_of, multiplier, fraction=2 * 4 / 3, rounding="up", apply_multiplier=True):
    hidden = int(fraction * dim)
    if multiplier is not None and apply_multiplier:
        hidden = int(multiplier * hidden)
    if rounding == "down":
        return multiple_of * (hidden // multiple_of)
    if rounding == "always up":
        return multiple_of * (hidden // multiple_of + 1)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


FFN_HIDDEN_DIM = [
    Mistake(
        "looks like it rounds down:\nround up to the next multiple of multiple_of",
        lambda d, m, f: _hidden_dim(d, m, f, rounding="down"),
    ),
    Mistake(
        "looks like a multiple of multiple_of is rounded up too:\na number that is one already stays as it is",
        lambda d, m, f: _hidden_dim(d, m, f, rounding="always up"),
    ),
    Mistake(
        "looks like ffn_dim_multiplier is ignored:\nmultiply by it (when it is not None) before rounding",
        lambda d, m, f: _hidden_dim(d, m, f, apply_multiplier=False),
    ),
    Mistake(
        "looks like two-thirds of dim, not of 4 · dim:\nstart from int(2 * 4 * dim / 3)",
        lambda d, m, f: _hidden_dim(d, m, f, fraction=2 / 3),
    ),
]


def _parameters(c, tied_twice=False, block_norms=True, final_norm=True, kv_heads=None, output=True):
    kv_heads = c.n_kv_heads if kv_heads is None else kv_heads
    attention = 2 * c.dim * c.n_heads * c.head_dim + 2 * c.dim * kv_heads * c.head_dim
    layer = attention + 3 * c.dim * c.hidden_dim + (2 * c.dim if block_norms else 0)
    heads = 2 if (not c.tie_embeddings or tied_twice) and output else 1
    return heads * c.vocab_size * c.dim + c.n_layers * layer + (c.dim if final_norm else 0)


COUNT_PARAMETERS = [
    Mistake(
        "looks like tied embeddings are counted twice:\nwith tie_embeddings the output head is the embedding itself",
        lambda c: _parameters(c, tied_twice=True),
    ),
    Mistake(
        "looks like wk and wv have n_heads heads:\nthey have n_kv_heads heads of head_dim",
        lambda c: _parameters(c, kv_heads=c.n_heads),
    ),
    Mistake(
        "looks like the two RMSNorm gains of each block are missing:\n2 · dim per block",
        lambda c: _parameters(c, block_norms=False),
    ),
    Mistake("looks like the final RMSNorm gain is missing:\ndim more", lambda c: _parameters(c, final_norm=False)),
    Mistake(
        "looks like the output head is missing:\nvocab_size × dim, unless the embeddings are tied",
        lambda c: _parameters(c, output=False),
    ),
]


# --- 06 · KV cache and generation ------------------------------------------------------------------


def _cache_update(cache_k, cache_v, k, v, start_pos, at=None, in_place=True, returned="cached"):
    at = start_pos if at is None else at
    end = at + k.shape[2]
    if in_place:
        cache_k[:, :, at:end], cache_v[:, :, at:end] = k, v
        filled_k, filled_v = cache_k, cache_v
    else:
        filled_k, filled_v = cache_k.clone(), cache_v.clone()
        filled_k[:, :, at:end], filled_v[:, :, at:end] = k, v
    if returned == "new":
        return k, v
    if returned == "all":
        return filled_k, filled_v
    return filled_k[:, :, :end], filled_v[:, :, :end]


KV_CACHE_UPDATE = [
    Mistake(
        "looks like it returns the whole cache:\nreturn positions 0 … start_pos + seq − 1 only (slice the third dimension)",
        lambda ck, cv, k, v, s: _cache_update(ck, cv, k, v, s, returned="all"),
    ),
    Mistake(
        "looks like it returns only the new keys and values:\n"
        "attention needs every cached position, 0 … start_pos + seq − 1",
        lambda ck, cv, k, v, s: _cache_update(ck, cv, k, v, s, returned="new"),
    ),
    Mistake(
        "looks like the caches themselves are not written:\n"
        "store k and v in place, cache_k[:, :, start:end] = k, so the next call finds them",
        lambda ck, cv, k, v, s: _cache_update(ck, cv, k, v, s, in_place=False),
    ),
    Mistake(
        "looks like the new entries are written at position 0:\nwrite them at start_pos … start_pos + seq − 1",
        lambda ck, cv, k, v, s: _cache_update(ck, cv, k, v, s, at=0),
    ),
]


def _top_p(probs, p, drop="reached", renormalise=True, sorted_order=False):
    sorted_probs, order = torch.sort(probs, descending=True)
    mass = torch.cumsum(sorted_probs, -1)
    dropped = {
        "reached": mass - sorted_probs >= p,  # correct: drop a token once the better ones reach p
        "crossing": mass > p,  # drops the token that makes the mass reach p
        "one_more": torch.cat((torch.zeros(1, dtype=torch.bool), (mass - sorted_probs >= p)[:-1])),
    }[drop]
    kept = sorted_probs.masked_fill(dropped, 0.0)
    result = kept if sorted_order else torch.zeros_like(probs).scatter(-1, order, kept)
    return result / result.sum() if renormalise else result


TOP_P = [
    Mistake(
        "looks like top-p keeps one token too few:\n"
        "keep the token that makes the mass reach p; drop a token only when\n"
        "the tokens before it already hold p",
        lambda probs, p: _top_p(probs, p, drop="crossing"),
    ),
    Mistake(
        "looks like top-p keeps one token too many:\n"
        "drop every token whose better tokens already hold p, including the first such one",
        lambda probs, p: _top_p(probs, p, drop="one_more"),
    ),
    Mistake(
        "looks like the kept probabilities are not renormalised:\ndivide them by their sum so they add up to 1",
        lambda probs, p: _top_p(probs, p, renormalise=False),
    ),
    Mistake(
        "looks like the result is in sorted order:\nput the probabilities back in token order (scatter with the sort's indices)",
        lambda probs, p: _top_p(probs, p, sorted_order=True),
    ),
]


def _greedy(model, prompt, n, with_prompt=False, first_position=False, fixed_start=False):
    caches = model.new_kv_caches(batch_size=1, max_seq_len=len(prompt) + n)
    out = []
    with torch.no_grad():
        logits = model(torch.tensor([prompt]), 0, caches)
        start = len(prompt)
        while len(out) < n:
            out.append(int(logits[0, 0 if first_position else -1].argmax()))
            if len(out) < n:
                logits = model(torch.tensor([[out[-1]]]), start, caches)
                start += 0 if fixed_start else 1
    return list(prompt) + out if with_prompt else out


GENERATE = [
    Mistake(
        "looks like the prompt is returned too:\nreturn only the n new tokens", lambda *a: _greedy(*a, with_prompt=True)
    ),
    Mistake(
        "looks like the first position's logits are used after the prefill:\n"
        "the next token comes from the last position, logits[0, -1]",
        lambda *a: _greedy(*a, first_position=True),
    ),
    Mistake(
        "looks like start_pos does not advance:\neach new token goes in at the number of tokens seen so far",
        lambda *a: _greedy(*a, fixed_start=True),
    ),
]


# --- 07 · training ---------------------------------------------------------------------------------


def _lr(step, warmup, total, lr, min_lr, warm_from_zero=False, decay_end=0, floor=True, to_zero=False, linear=False):
    if step < warmup:
        return lr * (step if warm_from_zero else step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup - decay_end)
    progress = min(1.0, progress) if floor else progress
    low = 0.0 if to_zero else min_lr
    shape = 1.0 - progress if linear else 0.5 * (1.0 + math.cos(math.pi * progress))
    return low + shape * (lr - low)


LR_SCHEDULE = [
    Mistake(
        "looks like the warm-up starts at 0:\nstep 0 gets lr / warmup_steps and step warmup_steps − 1 the peak:\n"
        "lr · (step + 1) / warmup_steps",
        lambda s, w, t, lr, m: _lr(s, w, t, lr, m, warm_from_zero=True),
    ),
    Mistake(
        "looks like the cosine reaches min_lr one step early:\n"
        "progress is (step − warmup_steps) / (total_steps − warmup_steps)",
        lambda s, w, t, lr, m: _lr(s, w, t, lr, m, decay_end=1),
    ),
    Mistake(
        "looks like the rate rises again after total_steps:\nclamp the progress at 1, so later steps stay at min_lr",
        lambda s, w, t, lr, m: _lr(s, w, t, lr, m, floor=False),
    ),
    Mistake(
        "looks like the cosine decays to 0, not to min_lr:\nmin_lr + (lr − min_lr) · (1 + cos(π · progress)) / 2",
        lambda s, w, t, lr, m: _lr(s, w, t, lr, m, to_zero=True),
    ),
    Mistake(
        "looks like a linear decay:\nafter the warm-up the rate follows half a cosine, (1 + cos(π · progress)) / 2",
        lambda s, w, t, lr, m: _lr(s, w, t, lr, m, linear=True),
    ),
]


def _clip(parameters, max_norm, per_tensor=False, always=False, return_after=False, in_place=True):
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = float(torch.sqrt(sum((g**2).sum() for g in grads)))
    for g in grads:
        own = float(g.norm())
        factor = max_norm / ((own if per_tensor else norm) + 1e-6)
        if always or (own if per_tensor else norm) > max_norm:
            if in_place:
                g.mul_(factor)
            else:
                g = g * factor  # a new tensor: p.grad is unchanged
    return min(norm, max_norm) if return_after else norm


CLIP_GRADIENTS = [
    Mistake(
        "looks like each gradient is clipped on its own:\n"
        "the norm is global, of all gradients together, and one factor scales them all",
        lambda parameters, max_norm: _clip(parameters, max_norm, per_tensor=True),
    ),
    Mistake(
        "looks like the gradients are scaled even when the norm is below max_norm:\n"
        "clip only when the norm exceeds it (small gradients stay as they are)",
        lambda parameters, max_norm: _clip(parameters, max_norm, always=True),
    ),
    Mistake(
        "looks like it returns the norm after clipping:\nreturn the norm the gradients had before",
        lambda parameters, max_norm: _clip(parameters, max_norm, return_after=True),
    ),
    Mistake(
        "looks like the gradients are not changed in place:\n"
        "scale each p.grad itself (p.grad.mul_(factor)): the optimizer reads them there",
        lambda parameters, max_norm: _clip(parameters, max_norm, in_place=False),
    ),
]


def _step_variant(model, optimizer, inputs, targets, lr, max_norm, zero=True, clip=True, set_lr=True):
    if set_lr:
        for group in optimizer.param_groups:
            group["lr"] = lr
    if zero:
        optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss.item()


TRAIN_STEP = [
    Mistake(
        "looks like the gradients are not cleared first:\n"
        "call optimizer.zero_grad() before backward, or they add up across steps",
        lambda *a: _step_variant(*a, zero=False),
    ),
    Mistake(
        "looks like the gradients are not clipped:\nclip them to max_norm after backward, before optimizer.step()",
        lambda *a: _step_variant(*a, clip=False),
    ),
    Mistake(
        "looks like the learning rate is not set:\nset group['lr'] = lr for every group in optimizer.param_groups",
        lambda *a: _step_variant(*a, set_lr=False),
    ),
]


# --- 08 · real checkpoints -------------------------------------------------------------------------


def _renamed(swaps: dict[str, str]):
    def wrong(hf_name):
        from ..checkpoints.names import TENSOR_NAMES

        for meta, (hf, _) in TENSOR_NAMES.items():
            match = re.fullmatch(re.escape(hf).replace(re.escape("{i}"), r"(\d+)"), hf_name)
            if match:
                meta = meta.format(i=match.group(1)) if match.groups() else meta
                for a, b in swaps.items():
                    if meta.endswith(a):
                        return meta[: -len(a)] + b
                return meta
        return None

    return wrong


HF_TO_META_NAME = [
    Mistake(
        "looks like gate_proj and up_proj are swapped:\ngate_proj is w1 (inside silu), up_proj is w3",
        _renamed({"w1.weight": "w3.weight", "w3.weight": "w1.weight"}),
    ),
    Mistake(
        "looks like the two norms of a layer are swapped:\n"
        "input_layernorm is attention_norm, post_attention_layernorm is ffn_norm",
        _renamed({"attention_norm.weight": "ffn_norm.weight", "ffn_norm.weight": "attention_norm.weight"}),
    ),
    Mistake(
        "looks like down_proj and up_proj are swapped:\ndown_proj (hidden → dim) is w2, up_proj is w3",
        _renamed({"w2.weight": "w3.weight", "w3.weight": "w2.weight"}),
    ),
]


def _merged(name, shards, row=(), column=(), whole_norms=True):
    if len(shards) == 1:
        return shards[0]
    if name.endswith(row):
        return torch.cat(shards, 1)
    if name.endswith(column) or not whole_norms:
        return torch.cat(shards, 0)
    return shards[0]


_COLUMN = ("wq.weight", "wk.weight", "wv.weight", "w1.weight", "w3.weight", "output.weight")
_ROW = ("wo.weight", "w2.weight")

MERGE_SHARDS = [
    Mistake(
        "looks like wo and w2 are glued along dimension 0:\n"
        "they are row-parallel, split along their inputs: torch.cat(shards, dim=1)",
        lambda name, shards: _merged(name, shards, row=("tok_embeddings.weight",), column=_COLUMN + _ROW),
    ),
    Mistake(
        "looks like the embedding is glued along dimension 0:\n"
        "Meta split tok_embeddings along the embedding dimension: torch.cat(shards, dim=1)",
        lambda name, shards: _merged(name, shards, row=_ROW, column=_COLUMN + ("tok_embeddings.weight",)),
    ),
    Mistake(
        "looks like the column-parallel weights are glued along dimension 1:\n"
        "wq, wk, wv, w1, w3 and output were split along their outputs: dim=0",
        lambda name, shards: _merged(name, shards, row=_ROW + _COLUMN + ("tok_embeddings.weight",)),
    ),
    Mistake(
        "looks like the norms are concatenated:\nevery shard holds the whole norm; return one copy",
        lambda name, shards: _merged(
            name, shards, row=_ROW + ("tok_embeddings.weight",), column=_COLUMN, whole_norms=False
        ),
    ),
]


def _q4_1(raw: bytes, nibbles="halves", swap=False, half=False):
    import numpy as np

    d = np.frombuffer(raw[0:2], dtype="<f2")[0]
    m = np.frombuffer(raw[2:4], dtype="<f2")[0]
    d, m = (m, d) if swap else (d, m)
    packed = np.frombuffer(raw[4:20], dtype=np.uint8)
    if nibbles == "halves":
        q = np.concatenate([packed & 0x0F, packed >> 4])
    elif nibbles == "high first":
        q = np.concatenate([packed >> 4, packed & 0x0F])
    else:  # interleaved: low, high of byte 0, then of byte 1, ...
        q = np.stack([packed & 0x0F, packed >> 4], axis=1).reshape(-1)
    if half:
        return (d * q.astype(np.float16) + m).astype(np.float32)
    return d.astype(np.float32) * q.astype(np.float32) + m.astype(np.float32)


Q4_1 = [
    Mistake(
        "looks like the nibbles are read byte by byte (low, high, low, high, ...):\n"
        "byte 4 + j holds weight j (low bits) and weight j + 16 (high bits)",
        lambda raw: _q4_1(raw, nibbles="interleaved"),
    ),
    Mistake(
        "looks like the high nibbles come first:\nthe low 4 bits of byte 4 + j are weight j, the high ones weight j + 16",
        lambda raw: _q4_1(raw, nibbles="high first"),
    ),
    Mistake(
        "looks like d and m are swapped:\nbytes 0-1 are the scale d, bytes 2-3 the minimum m",
        lambda raw: _q4_1(raw, swap=True),
    ),
    Mistake(
        "looks like the arithmetic is in float16:\nconvert d and m to float32 first, as llama.cpp does",
        lambda raw: _q4_1(raw, half=True),
    ),
]
