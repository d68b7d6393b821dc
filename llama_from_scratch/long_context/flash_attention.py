"""FlashAttention's forward pass (Dao et al., 2022), from scratch: attention without the score matrix.

Plain attention computes all ``seq x kv_seq`` scores ``q . k / sqrt(head_dim)``, softmaxes each row, and
multiplies by the values. At 128K tokens that matrix has 17 billion entries per head, far more memory
than the model. FlashAttention walks over the keys in blocks instead and keeps, per query, only three
running quantities. This is what makes long contexts affordable; the fused kernels of
``torch.nn.functional.scaled_dot_product_attention`` do the same thing in fast code.

**The online softmax, step by step.** For one query, let ``s_1 .. s_n`` be its scores and ``v_j`` the
values. The output is ``o = sum_j exp(s_j) v_j / sum_j exp(s_j)``. To keep ``exp`` from overflowing,
subtract the largest score ``M`` first (it cancels between numerator and denominator):
``o = sum_j exp(s_j - M) v_j / sum_j exp(s_j - M)``. We do not know ``M`` before we have seen every key,
but we can correct for it afterwards. After the key blocks seen so far, keep

* ``m``, the largest score so far,
* ``l = sum_j exp(s_j - m)``, the softmax denominator relative to ``m``,
* ``acc = sum_j exp(s_j - m) v_j``, the unnormalised output relative to ``m``.

A new block with scores ``s_j`` (``j`` in the block) arrives. Then

1. ``m_new = max(m, max_j s_j)``;
2. everything summed so far was relative to ``m``; rescaling by ``c = exp(m - m_new)`` makes it relative
   to ``m_new``, since ``exp(s - m) * exp(m - m_new) = exp(s - m_new)``;
3. ``p_j = exp(s_j - m_new)`` for the block (each at most 1: no overflow);
4. ``l = c * l + sum_j p_j`` and ``acc = c * acc + sum_j p_j v_j``; ``m = m_new``.

After the last block ``acc / l`` is exactly the softmax-weighted average: only the order of the sums
differs. Start from ``m = -inf``, ``l = 0``, ``acc = 0``: then ``c = exp(-inf) = 0`` on the first block.

**Causal blocks.** The ``seq`` queries are the last ``seq`` of ``kv_seq`` positions (earlier keys come
from a KV cache), so query ``i`` sits at position ``kv_seq - seq + i`` and sees keys up to it. A key block
that starts after the last position of the query block is skipped entirely: about half the work of a
full prefill. Blocks crossing the diagonal are masked with ``-inf``; every query sees key 0, which lies
in the first block, so ``m`` is finite from the first block on and ``-inf - (-inf)`` never occurs.

Memory: beyond the inputs and the output, one query block's ``(block, head_dim)`` accumulator and one
``(block, block)`` score block per head, whatever the sequence length. Differentiating through this loop
with autograd would keep every score block for the backward pass, the very matrix avoided here:
:mod:`.flash_backward` (chapter 14) gives it a backward pass that recomputes them instead, from the
output and each row's log-sum-exp ``m + log(l)``, which :func:`flash_attention_forward` returns.
"""

from __future__ import annotations

import math

import torch


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, block_size: int = 64
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(head_dim)) v``, computed block by block with an online softmax.

    Shapes as in ``scaled_dot_product_attention``: ``q`` ``(batch, n_heads, seq, head_dim)``, ``k`` and
    ``v`` ``(batch, n_kv_heads, kv_seq, head_dim)``, where ``n_heads`` is a multiple of ``n_kv_heads``
    (GQA; 1 is MQA) and, if ``causal``, ``kv_seq >= seq`` with the queries at the last ``seq`` positions.
    Returns ``(batch, n_heads, seq, head_dim)`` in ``q``'s dtype; the sums run in at least float32.
    ``block_size`` queries and keys are handled at a time.
    """
    return flash_attention_forward(q, k, v, causal, block_size)[0].to(q.dtype)


def flash_attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, block_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`flash_attention`'s loop: the output ``(batch, n_heads, seq, head_dim)`` and each row's
    log-sum-exp of the scaled scores ``(batch, n_heads, seq)``, both in the dtype of the sums (at least
    float32). The log-sum-exp is all a backward pass needs to rebuild any block of softmax weights:
    ``p = exp(score - lse)``."""
    _check_shapes(q, k, v, causal, block_size)
    seq, kv_seq = q.shape[2], k.shape[2]
    dtype = torch.promote_types(q.dtype, torch.float32)
    q, k, v = grouped(q, k, v, dtype)
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:-1], dtype=dtype, device=q.device)
    for q_start in range(0, seq, block_size):
        q_end = min(q_start + block_size, seq)
        q_block = q[..., q_start:q_end, :]
        m = torch.full((*q_block.shape[:-1], 1), float("-inf"), dtype=dtype, device=q.device)
        l = torch.zeros_like(m)  # noqa: E741 (the paper's name)
        acc = torch.zeros_like(q_block)
        for k_start, k_end in key_blocks(q_start, q_end, seq, kv_seq, causal, block_size):
            scores = block_scores(q_block, k, q_start, q_end, k_start, k_end, seq, causal)
            m_new = torch.maximum(m, scores.amax(dim=-1, keepdim=True))
            correction = torch.exp(m - m_new)
            p = torch.exp(scores - m_new)
            l = correction * l + p.sum(dim=-1, keepdim=True)  # noqa: E741
            acc = correction * acc + p @ v[..., k_start:k_end, :]
            m = m_new
        out[..., q_start:q_end, :] = acc / l
        lse[..., q_start:q_end] = (m + torch.log(l)).squeeze(-1)
    return out.flatten(1, 2), lse.flatten(1, 2)


def grouped(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query head h reads key/value head h // n_rep: group the query heads instead of copying k and v.

    Returns ``q`` ``(batch, n_kv_heads, n_rep, seq, head_dim)``, scaled by ``1 / sqrt(head_dim)`` once here
    rather than in every score block, and ``k``, ``v`` ``(batch, n_kv_heads, 1, kv_seq, head_dim)``, in ``dtype``.
    """
    n_heads, n_kv_heads, head_dim = q.shape[1], k.shape[1], q.shape[3]
    q = q.to(dtype).unflatten(1, (n_kv_heads, n_heads // n_kv_heads)) / math.sqrt(head_dim)
    return q, k.to(dtype)[:, :, None], v.to(dtype)[:, :, None]


def key_blocks(
    q_start: int, q_end: int, seq: int, kv_seq: int, causal: bool, block_size: int
) -> list[tuple[int, int]]:
    """``(k_start, k_end)`` of the key blocks the queries ``q_start .. q_end - 1`` see: all of them, or, if
    ``causal``, those that start at or before the block's last position (query 0 sits at ``kv_seq - seq``)."""
    keys_seen = kv_seq - seq + q_end if causal else kv_seq  # keys at or after this are above the diagonal
    return [(k_start, min(k_start + block_size, kv_seq)) for k_start in range(0, keys_seen, block_size)]


def block_scores(
    q_block: torch.Tensor, k: torch.Tensor, q_start: int, q_end: int, k_start: int, k_end: int, seq: int, causal: bool
) -> torch.Tensor:
    """The scaled scores of a query block against keys ``k_start .. k_end - 1``: ``(..., q block, k block)``,
    ``-inf`` above the diagonal when ``causal``."""
    offset = k.shape[-2] - seq  # position of query 0
    scores = q_block @ k[..., k_start:k_end, :].transpose(-2, -1)
    if causal and k_end - 1 > offset + q_start:  # the block crosses the diagonal
        query_pos = torch.arange(offset + q_start, offset + q_end, device=q_block.device)[:, None]
        key_pos = torch.arange(k_start, k_end, device=q_block.device)[None, :]
        scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
    return scores


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, block_size: int) -> None:
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
        raise ValueError(
            "flash_attention expects q (batch, n_heads, seq, head_dim) and k, v of one shape "
            f"(batch, n_kv_heads, kv_seq, head_dim), got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(
            f"flash_attention: k and v must have q's batch ({q.shape[0]}) and head_dim ({q.shape[3]}), "
            f"got k of shape {tuple(k.shape)}"
        )
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"flash_attention: n_heads ({q.shape[1]}) must be a multiple of n_kv_heads ({k.shape[1]})")
    if causal and k.shape[2] < q.shape[2]:
        raise ValueError(
            f"flash_attention: causal attention needs kv_seq >= seq (queries are the last positions), "
            f"got kv_seq {k.shape[2]} and seq {q.shape[2]}"
        )
    if k.shape[2] == 0 and q.shape[2] > 0:
        raise ValueError("flash_attention: queries need at least one key, got kv_seq 0")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"flash_attention: block_size must be a positive int, got {block_size!r}")
