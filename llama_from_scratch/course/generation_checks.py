"""Chapter 06's exercises (KV cache and generation): the cache update, top-p filtering, greedy decoding.

Each check calls the learner's function through :func:`~.feedback.answer` (top-p through the skeleton,
:func:`~.feedback.check_cases`), compares with the package (``KVCache``, ``next_token_probabilities``,
``generate``) and, when the answer differs, names the catalogued mistake below that gives what the
learner got. The cache update is compared on its result and on the caches afterwards; decoding also
counts the tokens of every forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..generate import next_token_probabilities, top_p_filter
from .feedback import (
    FLOAT32_EPS,
    Case,
    Mistake,
    answer,
    as_list,
    check_cases,
    compare_values,
    diagnose,
    fail,
    passed,
    tensor_difference,
    tensors,
)

# --- the common wrong answers ---------------------------------------------------------------------


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


# --- the checks -----------------------------------------------------------------------------------


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
    steps = [(0, 4), (4, 1), (5, 3), (8, 2)]  # the last fills the cache to its end

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

        wrong = [Mistake(m.cause, lambda m=m, run=run: run(m)) for m in KV_CACHE_UPDATE]
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
    cases += [(torch.tensor([0.05, 0.4, 0.3, 0.25]), p) for p in (0.35, 0.65)]
    cases += [(torch.softmax(torch.randn(50) * 2, -1), p) for p in (0.3, 0.9, 1.0)]
    cases += [(torch.softmax(torch.randn(1000), -1), 0.5)]
    cases = [
        Case(
            f"my_top_p_filter(p={p}, vocab={probs.numel()})", (probs, p), next_token_probabilities(probs.log(), top_p=p)
        )
        for probs, p in cases
    ]

    def compare(label, got, expected, args, mistakes):
        # next_token_probabilities goes from log-probabilities through a softmax over the vocabulary: within
        # (vocab + 8) · EPS of each probability, a relative tolerance that also covers the renormalisation
        tensors(atol=0, rtol=(args[0].numel() + 8) * FLOAT32_EPS)(label, got, expected, args, mistakes)

    check_cases(
        "top-p",
        "my_top_p_filter",
        fn,
        cases,
        compare=compare,
        mistakes=TOP_P,
        forbidden=[next_token_probabilities, top_p_filter],
    )


def check_generate(fn: Callable) -> None:
    """``fn(model, prompt, n)``: greedy decoding with a KV cache, the tokens of the package's ``generate``.

    The model must see the prompt once and then one token per step: a hook on the token embedding
    counts the tokens of every forward pass.
    """
    from ..generate import GenerationConfig, generate, generate_stream
    from ..model import Llama

    torch.manual_seed(0)
    model = Llama.from_preset("tiny").eval()
    torch.manual_seed(1)
    multi_query = Llama.from_preset("tiny", n_kv_heads=1).eval()  # one key/value head for all query heads
    cases = [(model, [1, 2, 3], 20), (model, list(b"Once upon a time"), 40), (model, [7], 1)]
    cases += [(multi_query, [9, 8, 7], 30)]
    for model, prompt, n in cases:
        seen: list[int] = []
        hook = model.tok_embeddings.register_forward_hook(
            lambda m, inputs, out, seen=seen: seen.append(inputs[0].shape[-1])
        )
        try:
            got = answer("my_generate", fn, model, list(prompt), n, forbidden=[generate, generate_stream])
        finally:
            hook.remove()
        kind = ", a multi-query model" if model is multi_query else ""
        label = f"my_generate(prompt of {len(prompt)} tokens, n={n}{kind})"
        expected = generate(model, prompt, GenerationConfig(n))
        compare_values(label, as_list(got), expected, (model, prompt, n), GENERATE)
        if seen[:1] != [len(prompt)] or any(s != 1 for s in seen[1:]) or len(seen) > n:
            raise fail(
                label,
                f"  forward passes saw {seen[:8]}{' ...' if len(seen) > 8 else ''} tokens",
                "the cache is not used as it should be:\none pass over the prompt, then one token per pass",
            )
    passed("generate", len(cases))
