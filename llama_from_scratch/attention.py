"""Causal self-attention with grouped-query attention (GQA) and a KV cache.

Each token builds a *query* ("what am I looking for?"), a *key* ("what do I
contain?") and a *value* ("what do I pass on?"). A token's output is the
average of the values of the tokens it may see, weighted by
``softmax(q . k / sqrt(head_dim))`` (Vaswani et al., 2017). *Causal* means a
token sees itself and earlier tokens only, so the model can be trained to
predict every next token at once. *Multi-head* means this runs ``n_heads``
times in parallel on ``head_dim``-sized slices, each head free to attend to
something different.

Grouped-query attention (Ainslie et al., 2023) lets several query heads share
one key/value head: ``n_kv_heads`` key/value heads serve ``n_heads`` query
heads in groups of ``n_rep = n_heads // n_kv_heads``. With ``n_kv_heads ==
n_heads`` it is ordinary multi-head attention; with ``n_kv_heads == 1`` it is
multi-query attention (Shazeer, 2019). Fewer key/value heads mean a smaller KV
cache, which is what limits long-context decoding.

Shapes below: ``batch``, ``seq`` (new tokens), ``kv_seq`` (all tokens attended
to, cached ones included), ``head_dim``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import LlamaConfig
from .kv_cache import KVCache
from .rope import apply_rope


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Repeat each key/value head ``n_rep`` times so there is one per query head.

    ``(batch, n_kv_heads, kv_seq, head_dim) -> (batch, n_kv_heads * n_rep, kv_seq, head_dim)``;
    query head ``h`` then reads key/value head ``h // n_rep``.
    """
    if n_rep == 1:
        return x
    batch, n_kv_heads, kv_seq, head_dim = x.shape
    return (
        x[:, :, None]
        .expand(batch, n_kv_heads, n_rep, kv_seq, head_dim)
        .reshape(batch, n_kv_heads * n_rep, kv_seq, head_dim)
    )


def causal_mask(seq: int, kv_seq: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Which keys each query may see: a ``(seq, kv_seq)`` boolean tensor, True where allowed.

    The ``seq`` queries are the *last* ``seq`` of the ``kv_seq`` positions
    (earlier ones come from the cache), so query ``i`` sits at position
    ``kv_seq - seq + i`` and may see keys ``0 ..`` that position.
    """
    query_pos = torch.arange(kv_seq - seq, kv_seq, device=device)[:, None]
    key_pos = torch.arange(kv_seq, device=device)[None, :]
    return key_pos <= query_pos


def padded_causal_mask(attention_mask: torch.Tensor, seq: int) -> torch.Tensor:
    """The causal mask of a left-padded batch: ``(batch, 1, seq, kv_seq)`` boolean, True where allowed.

    ``attention_mask`` is ``(batch, kv_seq)``, True for a real token and False for padding (Hugging Face's
    ``attention_mask``, as booleans); the ``seq`` queries are the last ``seq`` positions, as in
    :func:`causal_mask`. A real query sees the real keys up to its own position and never a padding key.
    A padding query would then see no key at all, and a softmax over nothing is NaN, which would leak
    into every later layer through its key and value (0 weight times NaN is NaN): it may see itself.
    Its output is never used. The size-1 dimension broadcasts over the heads.
    """
    batch, kv_seq = attention_mask.shape
    allowed = causal_mask(seq, kv_seq, attention_mask.device)[None] & attention_mask[:, None, :]  # (batch, seq, kv_seq)
    itself = torch.arange(kv_seq - seq, kv_seq, device=attention_mask.device)  # each query's own position
    allowed[:, torch.arange(seq, device=attention_mask.device), itself] = True
    return allowed[:, None]  # (batch, 1, seq, kv_seq)


def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(head_dim))`` with masked positions set to zero weight.

    ``q`` is ``(batch, n_heads, seq, head_dim)``, ``k`` is ``(batch, n_heads,
    kv_seq, head_dim)``, ``mask`` is ``(seq, kv_seq)`` boolean. Returns
    ``(batch, n_heads, seq, kv_seq)``, each row summing to 1. The softmax runs
    in at least float32, for stability.
    """
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1).type_as(q)


class Attention(nn.Module):
    """Multi-head causal self-attention with RoPE, GQA and an optional KV cache.

    Weights follow Meta's names: ``wq`` ``(n_heads * head_dim, dim)``, ``wk``
    and ``wv`` ``(n_kv_heads * head_dim, dim)``, ``wo`` ``(dim, n_heads * head_dim)``.
    ``attend`` is the function that turns queries, keys and values into outputs, with the arguments of
    ``F.scaled_dot_product_attention`` (the default); chapter 14 swaps in a tiled one
    (:func:`llama_from_scratch.long_context.flash_backward.set_attention`).
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.n_rep = config.n_rep
        self.head_dim = config.head_dim
        self.wq = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)
        self.attend = F.scaled_dot_product_attention

    def qkv(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of ``x`` ``(batch, seq, dim)``, RoPE applied, heads as a batch dimension.

        Returns ``q`` ``(batch, n_heads, seq, head_dim)`` and ``k``, ``v`` ``(batch, n_kv_heads, seq, head_dim)``.
        """
        batch, seq, _ = x.shape
        q = self.wq(x).view(batch, seq, self.n_heads, self.head_dim)
        k = self.wk(x).view(batch, seq, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(batch, seq, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (batch, heads, seq, head_dim)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        start_pos: int = 0,
        cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from ``x`` ``(batch, seq, dim)`` at positions ``start_pos ... start_pos + seq - 1``.

        ``cos``/``sin`` are the RoPE tables for those positions, ``(seq, head_dim // 2)``.
        With a ``cache``, the new keys/values are stored in it and the queries
        attend to every cached position as well. ``attention_mask``, for a
        left-padded batch, is ``(batch, start_pos + seq)``: True for real
        tokens, False for padding, which no real token then attends to
        (:func:`padded_causal_mask`). Returns ``(batch, seq, dim)``,
        computed by :attr:`attend` (PyTorch's fused ``scaled_dot_product_attention``
        unless swapped), which never hands out the attention weights
        (:meth:`weights` computes them).
        """
        batch, seq, _ = x.shape
        q, k, v = self.qkv(x, cos, sin)
        if cache is not None:
            k, v = cache.update(start_pos, k, v)
        kv_seq = k.shape[2]
        if attention_mask is not None:
            mask = padded_causal_mask(attention_mask, seq)  # (batch, 1, seq, kv_seq)
            out = self.attend(q, k, v, attn_mask=mask, enable_gqa=self.n_rep > 1)
        elif seq == kv_seq:
            # No cached past: the plain lower-triangular mask, which the fused kernel builds itself.
            out = self.attend(q, k, v, is_causal=True, enable_gqa=self.n_rep > 1)
        else:
            # Cached past: the new queries sit at the end, so the mask is offset (see
            # causal_mask). A single new token may see everything: no mask at all.
            mask = causal_mask(seq, kv_seq, x.device) if seq > 1 else None
            out = self.attend(q, k, v, attn_mask=mask, enable_gqa=self.n_rep > 1)
        out = out.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim)
        return self.wo(out)

    def weights(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The attention weights of ``x`` ``(batch, seq, dim)``, step by step: ``(batch, n_heads, seq, seq)``.

        For pictures: the same queries and keys as :meth:`forward` (positions ``0 .. seq - 1``), each row
        a softmax that sums to 1, zero above the diagonal.
        """
        q, k, _ = self.qkv(x, cos, sin)
        seq = x.shape[1]
        return attention_weights(q, repeat_kv(k, self.n_rep), causal_mask(seq, seq, x.device))
