"""Feedback for the exercises: ``check_rmsnorm(my_rms_norm)`` and friends.

Each check calls the learner's function on a few inputs, compares with this
package's implementation, and either prints a short confirmation or raises an
``AssertionError`` that says *what* differed: a shape, a type, or the first
element that is off, with the expected and the received value. The
exercises' graded cells are calls to these checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..attention import attention_weights, causal_mask, repeat_kv
from ..generate import next_token_probabilities
from ..rmsnorm import rms_norm
from ..rope import apply_rope, rope_cos_sin
from ..tokenization.bpe import merge, pair_counts


FLOAT32_EPS = torch.finfo(torch.float32).eps  # 1.19e-7: a float32 result is within EPS / 2 of its exact value


def float32_drift(n_roundings: int) -> float:
    """How far float32 rounding may move a result, relative to its size, through ``n_roundings`` roundings.

    Two correct computations of the same numbers (another kernel, another order of a sum, another model
    implementation) differ by rounding alone. Each rounding is off by at most ``EPS / 2`` relative, and
    independent errors add up like a random walk: ``n`` of them typically reach ``sqrt(n) * EPS / 2``.
    Allowing ``2 * EPS * sqrt(n)`` leaves a factor 4 for unlucky orders (for a whole model, ``n`` is about
    ``n_layers * hidden_dim``: chapter 04 measures it), while a real mistake is off by far more.
    """
    return 2 * FLOAT32_EPS * math.sqrt(n_roundings)


class CheckFailed(AssertionError):
    """An exercise's answer differs from the expected one; the message says how."""


def _call(name: str, fn: Callable, *args):
    try:
        return fn(*args)
    except NotImplementedError:
        raise CheckFailed(f"{name}: not implemented yet (the function raised NotImplementedError)") from None


def compare_tensors(name: str, got: object, expected: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """Raise :class:`CheckFailed` naming the first difference between ``got`` and ``expected``.

    The default tolerance leaves room for any correct order of float32 arithmetic: the checks use small
    inputs (sums of at most 64 terms, values below 20), whose rounding in any order stays within a few
    units of 1.2e-7 relative, some 20 times below 1e-5; a real mistake is off by 1e-2 or more.
    """
    if not isinstance(got, torch.Tensor):
        raise CheckFailed(f"{name}: expected a torch.Tensor, got {type(got).__name__}")
    if got.shape != expected.shape:
        raise CheckFailed(f"{name}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    got, expected = got.detach().float().cpu(), expected.detach().float().cpu()
    if torch.isnan(got).any() and not torch.isnan(expected).any():
        index = tuple(torch.nonzero(torch.isnan(got))[0].tolist())
        raise CheckFailed(f"{name}: NaN at index {index} (expected {expected[index].item():.6g})")
    off = ~torch.isclose(got, expected, atol=atol, rtol=rtol, equal_nan=True)
    if off.any():
        index = tuple(torch.nonzero(off)[0].tolist())
        raise CheckFailed(
            f"{name}: {int(off.sum())} of {off.numel()} elements differ; first at index {index}: "
            f"expected {expected[index].item():.6g}, got {got[index].item():.6g}"
        )


def _passed(name: str, cases: int) -> None:
    print(f"✓ {name}: correct on {cases} test cases")


def check_rmsnorm(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> None:
    """``fn(x, weight, eps)``: RMS-normalise the last dimension of ``x`` and scale by ``weight``."""
    torch.manual_seed(0)
    cases = [((2, 3, 8), 1e-5), ((5, 16), 1e-6), ((1, 1, 4), 1e-2)]
    for shape, eps in cases:
        x = torch.randn(shape) * 3 + 0.5
        weight = torch.rand(shape[-1]) + 0.5
        compare_tensors(f"rmsnorm{shape}, eps={eps}", _call("rmsnorm", fn, x, weight, eps), rms_norm(x, weight, eps))
    _passed("rmsnorm", len(cases))


def check_rope(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``fn(x, cos, sin)``: rotate neighbouring pairs of ``x`` ``(batch, seq, n_heads, head_dim)``.

    ``cos``/``sin`` are ``(seq, head_dim // 2)``, as from :func:`rope_cos_sin`.
    """
    torch.manual_seed(0)
    cases = [(1, 4, 1, 2), (2, 7, 3, 8), (1, 5, 2, 16)]
    for shape in cases:
        x = torch.randn(shape)
        cos, sin = rope_cos_sin(torch.arange(3, 3 + shape[1]), shape[-1], theta=100.0)
        compare_tensors(f"rope{shape}", _call("rope", fn, x, cos, sin), apply_rope(x, cos, sin))
    _passed("rope", len(cases))


def check_causal_attention(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``fn(q, k, v)``: causal attention with grouped-query heads.

    ``q`` is ``(batch, n_heads, seq, head_dim)``; ``k`` and ``v`` are
    ``(batch, n_kv_heads, seq, head_dim)`` with ``n_heads`` a multiple of
    ``n_kv_heads``. Returns ``(batch, n_heads, seq, head_dim)``.
    """
    torch.manual_seed(0)
    cases = [(1, 1, 1, 3, 4), (2, 4, 4, 5, 8), (2, 4, 2, 6, 8), (1, 6, 1, 4, 4)]  # batch, heads, kv heads, seq, dim
    for batch, n_heads, n_kv_heads, seq, head_dim in cases:
        q = torch.randn(batch, n_heads, seq, head_dim)
        k, v = torch.randn(2, batch, n_kv_heads, seq, head_dim)
        n_rep = n_heads // n_kv_heads
        expected = attention_weights(q, repeat_kv(k, n_rep), causal_mask(seq, seq)) @ repeat_kv(v, n_rep)
        label = f"attention (heads={n_heads}, kv_heads={n_kv_heads}, seq={seq})"
        compare_tensors(label, _call("attention", fn, q, k, v), expected)
    _passed("causal attention", len(cases))


def check_swiglu(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(x, w1, w2, w3)``: ``w2 (silu(w1 x) * w3 x)`` with weights stored as ``(out, in)``."""
    torch.manual_seed(0)
    cases = [(3, 4, 8), (2, 16, 40)]  # tokens, dim, hidden
    for tokens, dim, hidden in cases:
        x = torch.randn(tokens, dim)
        w1, w3, w2 = torch.randn(hidden, dim), torch.randn(hidden, dim), torch.randn(dim, hidden)
        expected = (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T
        compare_tensors(f"swiglu (dim={dim}, hidden={hidden})", _call("swiglu", fn, x, w1, w2, w3), expected, atol=1e-4)
    _passed("swiglu", len(cases))


def check_kv_cache_update(fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> None:
    """``fn(cache_k, cache_v, k, v, start_pos)``: write new keys/values, return all up to them.

    Caches are ``(batch, n_kv_heads, max_seq_len, head_dim)``, new ``k``/``v``
    ``(batch, n_kv_heads, seq, head_dim)``. Returns ``(keys, values)`` of
    shape ``(batch, n_kv_heads, start_pos + seq, head_dim)``, and the caches
    hold the new entries afterwards.
    """
    torch.manual_seed(0)
    cache_k, cache_v = torch.zeros(2, 2, 3, 10, 4)
    expected_k, expected_v = torch.zeros(2, 2, 3, 10, 4)
    steps = [(0, 4), (4, 1), (5, 3)]
    for start_pos, seq in steps:
        k, v = torch.randn(2, 2, 3, seq, 4)
        expected_k[:, :, start_pos : start_pos + seq], expected_v[:, :, start_pos : start_pos + seq] = k, v
        result = _call("kv cache update", fn, cache_k, cache_v, k, v, start_pos)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise CheckFailed(f"kv cache update: expected a (keys, values) tuple, got {type(result).__name__}")
        end = start_pos + seq
        compare_tensors(
            f"keys returned after writing positions {start_pos}..{end - 1}", result[0], expected_k[:, :, :end]
        )
        compare_tensors(
            f"values returned after writing positions {start_pos}..{end - 1}", result[1], expected_v[:, :, :end]
        )
        compare_tensors(f"cache_k after writing positions {start_pos}..{end - 1}", cache_k, expected_k)
        compare_tensors(f"cache_v after writing positions {start_pos}..{end - 1}", cache_v, expected_v)
    _passed("kv cache update", len(steps))


def check_top_p(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """``fn(probs, p)``: keep the smallest set of most likely tokens whose mass reaches ``p``; renormalise."""
    torch.manual_seed(0)
    cases = [(torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]), 0.8), (torch.tensor([0.1, 0.6, 0.3]), 0.5)]
    cases += [(torch.softmax(torch.randn(50) * 2, -1), p) for p in (0.3, 0.9, 1.0)]
    for probs, p in cases:
        expected = next_token_probabilities(probs.log(), top_p=p)
        compare_tensors(
            f"top_p(p={p}, vocab={probs.numel()})", _call("top_p", fn, probs.clone(), p), expected, atol=1e-6
        )
    _passed("top-p", len(cases))


def check_pair_counts(fn: Callable[[list[int]], dict[tuple[int, int], int]]) -> None:
    """``fn(ids)``: how often each pair of neighbouring ids occurs, as ``{(a, b): count}``."""
    cases = [[], [1], [1, 2, 3, 1, 2], [5, 5, 5, 5], list(b"the cat in the hat")]
    for ids in cases:
        got = _call("pair counts", fn, list(ids))
        expected = dict(pair_counts(ids))
        if dict(got) != expected:
            wrong = sorted(set(got) ^ set(expected) | {k for k in expected if got.get(k) != expected[k]})
            pair = wrong[0]
            raise CheckFailed(
                f"pair counts of {ids}: pair {pair} should occur {expected.get(pair, 0)} times, got {dict(got).get(pair, 0)}"
            )
    _passed("pair counts", len(cases))


def check_merge(fn: Callable[[list[int], tuple[int, int], int], list[int]]) -> None:
    """``fn(ids, pair, new_id)``: replace every non-overlapping occurrence of ``pair``, left to right."""
    cases = [([1, 2, 3, 1, 2], (1, 2), 9), ([5, 5, 5], (5, 5), 7), ([1, 2], (2, 1), 3), ([], (1, 2), 3)]
    for ids, pair, new_id in cases:
        got = _call("merge", fn, list(ids), pair, new_id)
        expected = merge(ids, pair, new_id)
        if list(got) != expected:
            raise CheckFailed(f"merge({ids}, {pair}, {new_id}): expected {expected}, got {got}")
    _passed("merge", len(cases))


def check_bpe_encode(fn: Callable[[str, dict[tuple[int, int], int]], list[int]]) -> None:
    """``fn(text, merges)``: byte-level BPE encoding.

    Start from the UTF-8 bytes of ``text`` (ids 0-255), then repeatedly apply
    the learned merge with the lowest new id (the earliest learned) among the
    pairs present, until no pair has a merge. ``merges`` maps ``(a, b)`` to
    the new id.
    """
    merges = {(116, 104): 256, (256, 101): 257, (97, 116): 258, (32, 257): 259, (104, 258): 260}
    cases = ["", "the hat", "the cat in the hat", "héllo wörld", "thethe"]
    for text in cases:
        ids = list(text.encode("utf-8"))
        while len(ids) > 1:
            pair = min(pair_counts(ids), key=lambda p: merges.get(p, float("inf")))
            if pair not in merges:
                break
            ids = merge(ids, pair, merges[pair])
        got = _call("encode", fn, text, dict(merges))
        if list(got) != ids:
            raise CheckFailed(f"encode({text!r}): expected {ids}, got {got}")
    _passed("bpe encode", len(cases))


def check_lr_schedule(fn: Callable[[int, int, int, float, float], float]) -> None:
    """``fn(step, warmup_steps, total_steps, lr, min_lr)``: linear warm-up, then cosine decay to ``min_lr``."""
    from ..training.train import TrainConfig, learning_rate

    cases = [(100, 1000, 1e-3, 1e-4), (10, 50, 3e-3, 0.0), (1, 20, 1.0, 0.5)]
    for warmup, total, lr, min_lr in cases:
        config = TrainConfig(steps=total, warmup_steps=warmup, lr=lr, min_lr=min_lr)
        for step in sorted({0, warmup - 1, warmup, (warmup + total) // 2, total - 1, total}):
            got = _call("lr schedule", fn, step, warmup, total, lr, min_lr)
            expected = learning_rate(step, config)
            if not isinstance(got, (int, float)) or abs(got - expected) > 1e-9 + 1e-6 * abs(expected):
                raise CheckFailed(
                    f"lr at step {step} (warmup={warmup}, total={total}, lr={lr}, min_lr={min_lr}): "
                    f"expected {expected:.6g}, got {got!r}"
                )
    _passed("lr schedule", len(cases))


def check_clip_gradients(fn: Callable[[list[torch.Tensor], float], float]) -> None:
    """``fn(parameters, max_norm)``: scale all gradients so their global L2 norm is at most ``max_norm``.

    Returns the norm *before* clipping and changes the ``.grad`` tensors in place.
    """
    torch.manual_seed(0)
    cases = [(0.5, 3.0), (10.0, 1.0), (1.0, 1e-3)]  # (max_norm, gradient scale): clipped, untouched, tiny
    for max_norm, scale in cases:
        params = [torch.nn.Parameter(torch.randn(shape)) for shape in ((4, 3), (5,), (2, 2, 2))]
        for p in params:
            p.grad = torch.randn_like(p) * scale
        reference = [p.grad.clone() for p in params]
        expected_norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in reference])))
        factor = min(1.0, max_norm / (expected_norm + 1e-6))  # the small constant avoids dividing by zero
        got = _call("clip gradients", fn, params, max_norm)
        if not isinstance(got, (int, float, torch.Tensor)) or abs(float(got) - expected_norm) > 1e-4 * expected_norm:
            raise CheckFailed(
                f"clip gradients (max_norm={max_norm}): should return the norm before clipping, "
                f"{expected_norm:.6g}, got {got!r}"
            )
        for i, (p, g) in enumerate(zip(params, reference)):
            compare_tensors(f"gradient {i} after clipping to max_norm={max_norm}", p.grad, g * factor, atol=1e-6)
    _passed("clip gradients", len(cases))


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
    for step, (lr, max_norm) in enumerate([(1e-2, 1.0), (5e-3, 0.1)]):
        inputs, targets = data[step, :, :-1], data[step, :, 1:]
        got = _call("train step", fn, models[0], optimizers[0], inputs, targets, lr, max_norm)
        expected, _ = train_step(models[1], optimizers[1], [(inputs, targets)], lr, max_norm)
        if not isinstance(got, (int, float, torch.Tensor)) or abs(float(got) - expected) > 1e-5:
            raise CheckFailed(f"train step {step}: loss should be {expected:.6f}, got {got!r}")
        for name, p in models[1].named_parameters():
            compare_tensors(f"weight {name} after step {step}", models[0].get_parameter(name), p, atol=1e-5)
    _passed("train step", 2)


def check_hf_to_meta_name(fn: Callable[[str], str]) -> None:
    """``fn(hf_name)``: a Hugging Face weight name -> this package's (Meta's) name."""
    from ..config import LlamaConfig
    from ..checkpoints.hf import hf_to_meta_name, meta_to_hf_name
    from ..model import Llama

    with torch.device("meta"):
        names = [name for name, _ in Llama(LlamaConfig(dim=8, n_layers=12, n_heads=2, vocab_size=4)).named_parameters()]
    for meta_name in names:
        hf_name = meta_to_hf_name(meta_name)
        got = _call("name mapping", fn, hf_name)
        if got != hf_to_meta_name(hf_name):
            raise CheckFailed(f"name mapping: {hf_name!r} should become {hf_to_meta_name(hf_name)!r}, got {got!r}")
    _passed("name mapping", len(names))


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
            compare_tensors(f"merge of {name} from {n_shards} shards", _call("merge shards", fn, name, shards), full)
    _passed("merge shards", 2 * len(shapes))
