"""FlashAttention's backward pass (Dao et al., 2022; Dao, 2023): gradients without the score matrix.

Chapter 11's :func:`.flash_attention.flash_attention` never holds the ``(seq, kv_seq)`` scores in the
forward pass, but autograd, differentiating its loop, would keep every score block for the backward
pass: the whole matrix again. :class:`FlashAttention` saves only ``q``, ``k``, ``v``, the output ``o``
and one number per query row, the log-sum-exp ``lse = m + log(l)`` of its scaled scores, and in the
backward pass recomputes each block of softmax weights from them: ``P = exp(S - lse)``, exactly the
weights of the forward pass, since ``lse`` is the log of the softmax's denominator.

**The gradients.** With ``S = q k^T / sqrt(d)``, ``P = softmax(S)`` row by row and ``o = P v``, given
``dO`` (the gradient of the loss with respect to ``o``):

* ``dV = P^T dO`` (``o`` is linear in ``v``);
* ``dP = dO V^T``;
* ``dS = P * (dP - D)`` with ``D_i = sum_j P_ij dP_ij``: the softmax's Jacobian, ``dS_ij = P_ij (dP_ij -
  sum_k P_ik dP_ik)``. ``D_i`` needs a whole row of ``P``, which we never hold; but ``sum_j P_ij dP_ij =
  sum_j P_ij (dO_i . v_j) = dO_i . o_i``: it is the dot product of two rows we *do* have;
* ``dQ = dS K / sqrt(d)`` and ``dK = dS^T Q / sqrt(d)``.

Each is a sum over blocks, so the loop walks the same (query block, key block) pairs as the forward
pass, skipping those above the causal diagonal: ``dQ`` of a query block accumulates over its key blocks,
``dK`` and ``dV`` of a key block over the query blocks (and, with grouped-query attention, over the
``n_rep`` query heads that share each key/value head). The backward pass computes the scores once more:
about 2.5 times the forward pass's work instead of 2, for memory that no longer grows with ``seq * kv_seq``.

:func:`tiled_attention` is the differentiable function; :func:`set_attention` puts it inside a model's
attention layers, for training with ``attention="tiled"``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import Attention
from .flash_attention import block_scores, flash_attention_forward, grouped, key_blocks

ATTENTION = ("sdpa", "tiled")


class FlashAttention(torch.autograd.Function):
    """Chapter 11's tiled forward pass with a backward pass that recomputes the tiles."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, block_size: int) -> torch.Tensor:
        out, lse = flash_attention_forward(q, k, v, causal, block_size)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)  # lse: (batch, n_heads, seq), the only extra memory
        ctx.causal, ctx.block_size = causal, block_size
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        return (*flash_attention_backward(q, k, v, out, lse, grad_out, ctx.causal, ctx.block_size), None, None)


def tiled_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, block_size: int = 64
) -> torch.Tensor:
    """:func:`.flash_attention.flash_attention` (same shapes and arguments), differentiable with
    :func:`flash_attention_backward`."""
    return FlashAttention.apply(q, k, v, causal, block_size)


def flash_attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
    causal: bool,
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` of attention, block by block (module docstring).

    ``q``, ``out`` and ``grad_out`` ``(batch, n_heads, seq, head_dim)``, ``k`` and ``v`` ``(batch, n_kv_heads,
    kv_seq, head_dim)``, ``lse`` ``(batch, n_heads, seq)`` from :func:`.flash_attention.flash_attention_forward`.
    The gradients come in the inputs' dtypes and shapes; the sums run in at least float32.
    """
    seq, head_dim, kv_seq = q.shape[2], q.shape[3], k.shape[2]
    dtype = lse.dtype
    qs, ks, vs = grouped(q, k, v, dtype)  # qs is scaled: (batch, n_kv_heads, n_rep, seq, head_dim)
    n_groups = qs.shape[1:3]
    do = grad_out.to(dtype).unflatten(1, n_groups)
    lse = lse.unflatten(1, n_groups)[..., None]  # (batch, n_kv_heads, n_rep, seq, 1)
    delta = (do * out.to(dtype).unflatten(1, n_groups)).sum(dim=-1, keepdim=True)  # D_i = dO_i . o_i
    dq, dk, dv = torch.zeros_like(qs), torch.zeros_like(ks[:, :, 0]), torch.zeros_like(vs[:, :, 0])
    for q_start in range(0, seq, block_size):
        q_end = min(q_start + block_size, seq)
        q_block, do_block = qs[..., q_start:q_end, :], do[..., q_start:q_end, :]
        for k_start, k_end in key_blocks(q_start, q_end, seq, kv_seq, causal, block_size):
            p = torch.exp(
                block_scores(q_block, ks, q_start, q_end, k_start, k_end, seq, causal) - lse[..., q_start:q_end, :]
            )
            dv[..., k_start:k_end, :] += (p.transpose(-2, -1) @ do_block).sum(dim=2)  # summed over the n_rep heads
            dp = do_block @ vs[..., k_start:k_end, :].transpose(-2, -1)
            ds = p * (dp - delta[..., q_start:q_end, :])
            dq[..., q_start:q_end, :] += ds @ ks[..., k_start:k_end, :]
            dk[..., k_start:k_end, :] += (ds.transpose(-2, -1) @ q_block).sum(dim=2)  # q_block holds 1/sqrt(d)
    dq = dq.flatten(1, 2) / math.sqrt(head_dim)  # S = (q / sqrt(d)) k^T: the chain rule's 1/sqrt(d)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def tiled_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    enable_gqa: bool = False,
    block_size: int = 64,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention``'s arguments, as :class:`.Attention` passes them, computed by
    :func:`tiled_attention`. An explicit mask (a left-padded batch, the offset diagonal of a KV cache) goes
    to the fused kernel instead: the tiles handle only the plain causal diagonal and no mask."""
    if attn_mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=enable_gqa)
    return tiled_attention(q, k, v, is_causal, block_size)


def set_attention(model: nn.Module, attention: str, block_size: int = 64) -> None:
    """Make every attention layer of ``model`` compute with ``attention``: ``"sdpa"`` (PyTorch's fused
    kernel, the default) or ``"tiled"`` (:func:`tiled_attention`, ``block_size`` queries and keys at a time).
    The weights are untouched: only the function each layer's :attr:`.Attention.attend` calls changes."""
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, got {attention!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    attend = (
        F.scaled_dot_product_attention if attention == "sdpa" else functools.partial(tiled_sdpa, block_size=block_size)
    )
    for module in model.modules():
        if isinstance(module, Attention):
            module.attend = attend
