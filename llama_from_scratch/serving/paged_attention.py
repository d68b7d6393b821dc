"""Attention through block tables, for a step that mixes many sequences (Orca's selective batching).

A serving step runs the new tokens of many sequences at once: the whole prompt of a request just admitted,
one token of each request already decoding. They sit at different positions and attend to different
pasts, so they cannot form a rectangular ``(batch, seq)`` tensor without padding. Orca (Yu et al., 2022)
noticed that only attention cares which sequence a token belongs to: the linear layers, norms and SwiGLU
act on each token alone. So the step's tokens are *flattened* into one row ``(1, total_tokens)`` for
everything else, and attention alone is done per sequence.

:class:`PagedAttention` takes the place of each layer's :class:`~llama_from_scratch.attention.Attention`
(swapped in from outside by :func:`use_paged_attention`, as quantization and LoRA swap their layers; it
wraps the original, whose projections it calls, so a quantized or merged model serves as it is). Per
layer it

1. computes queries, keys and values of the flattened tokens, each rotated by RoPE at *its own* position
   (the model's ``start_pos`` means nothing here: :class:`StepBatch` carries every token's position);
2. writes the new keys and values into their slots of the paged pool (:mod:`.paged_kv_cache`);
3. gathers each sequence's keys and values through its block table, ``(sequences, n_kv_heads,
   max_blocks * block_size, head_dim)``, and runs one masked ``scaled_dot_product_attention`` for all
   sequences: query ``i`` of a sequence sees that sequence's keys up to its own position, nothing else.

vLLM does step 3 in a CUDA kernel that reads the blocks in place; gathering them into a padded tensor is
the same arithmetic in plain PyTorch.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import Attention
from ..model import Llama
from ..rope_scaling import rope_cos_sin_scaled
from ..swap import swap_layers
from .paged_kv_cache import PagedKVCache


@dataclass
class StepBatch:
    """What one step computes, in tensors on the model's device (vLLM's ``AttentionMetadata``).

    ``T`` tokens in all, from ``S`` sequences, each sequence's new tokens consecutive:

    * ``tokens`` ``(1, T)``, ``positions`` ``(T,)``, ``slot_mapping`` ``(T,)``: each token's id, position
      and slot in the flattened pool;
    * ``block_tables`` ``(S, max_blocks)``: each sequence's blocks, padded with block 0 (masked out);
    * ``query_index`` ``(S, max_new)``: which of the ``T`` tokens is a sequence's ``i``-th new one (padding
      repeats its last), ``query_valid`` ``(S, max_new)``: which entries are real;
    * ``last_index`` ``(S,)``: each sequence's last token, whose logits give its next token;
    * ``cos``, ``sin`` ``(T, head_dim // 2)``: RoPE at each token's position. (With ``dynamic`` RoPE scaling
      the scale follows the longest sequence of the step rather than each sequence's own length.)
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    query_index: torch.Tensor
    query_valid: torch.Tensor
    last_index: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor

    @classmethod
    def build(
        cls, model: Llama, cache: PagedKVCache, work: Sequence[tuple[Hashable, Sequence[int], int]]
    ) -> StepBatch:
        """The batch for ``work``: per sequence ``(seq_id, all its tokens, start)``, computing ``tokens[start:]``.

        The sequence's blocks must already hold room for all its tokens (:meth:`PagedKVCache.allocate`,
        :meth:`PagedKVCache.append_slot`).
        """
        ids, positions, slots, tables, index, last = [], [], [], [], [], []
        for seq_id, tokens, start in work:
            first = len(ids)
            ids += tokens[start:]
            positions += range(start, len(tokens))
            slots += cache.slots(seq_id, start, len(tokens))
            tables.append(cache.block_tables[seq_id])
            index.append(list(range(first, len(ids))))
            last.append(len(ids) - 1)
        longest_table, longest_new = max(map(len, tables)), max(map(len, index))
        valid = [[True] * len(i) + [False] * (longest_new - len(i)) for i in index]
        c, device = model.config, model.device

        def tensor(rows):
            return torch.tensor(rows, dtype=torch.long, device=device)

        position_tensor = tensor(positions)
        cos, sin = rope_cos_sin_scaled(position_tensor, c.head_dim, c.rope_theta, c.rope_scaling)
        return cls(
            tokens=tensor([ids]),
            positions=position_tensor,
            slot_mapping=tensor(slots),
            block_tables=tensor([t + [0] * (longest_table - len(t)) for t in tables]),
            query_index=tensor([i + [i[-1]] * (longest_new - len(i)) for i in index]),
            query_valid=torch.tensor(valid, device=device),
            last_index=tensor(last),
            cos=cos,
            sin=sin,
        )


class PagedLayerCache:
    """What a :class:`PagedAttention` layer gets where a :class:`KVCache` would go: its layer's pools, and the step."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, batch: StepBatch):
        self.k, self.v, self.batch = k, v, batch


class PagedAttention(nn.Module):
    """:class:`Attention` reading and writing a paged KV cache, for a flattened step of many sequences."""

    def __init__(self, attention: Attention):
        super().__init__()
        self.attention = attention

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        start_pos: int = 0,
        cache: PagedLayerCache | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` ``(1, T, dim)``, the step's flattened tokens -> ``(1, T, dim)``.

        The model's ``cos``, ``sin`` and ``start_pos`` assume one sequence at positions ``0 .. T - 1`` and are
        ignored: each token's RoPE comes from ``cache.batch``.
        """
        if cache is None or attention_mask is not None:
            raise ValueError("PagedAttention runs only inside a serving step (paged_forward), with its PagedLayerCache")
        a, batch = self.attention, cache.batch
        q, k, v = a.qkv(x, batch.cos, batch.sin)  # (1, n_heads, T, head_dim), (1, n_kv_heads, T, head_dim) x 2
        n_blocks, block_size, n_kv_heads, head_dim = cache.k.shape
        # 2. store the new keys and values in their slots: the pool seen as (num_blocks * block_size, ...)
        cache.k.view(-1, n_kv_heads, head_dim).index_copy_(0, batch.slot_mapping, k[0].transpose(0, 1))
        cache.v.view(-1, n_kv_heads, head_dim).index_copy_(0, batch.slot_mapping, v[0].transpose(0, 1))
        # 3. each sequence's past through its block table: (S, max_blocks, block_size, ...) -> (S, n_kv, L, hd)
        n_seqs = batch.block_tables.shape[0]
        keys = cache.k[batch.block_tables].reshape(n_seqs, -1, n_kv_heads, head_dim).transpose(1, 2)
        values = cache.v[batch.block_tables].reshape(n_seqs, -1, n_kv_heads, head_dim).transpose(1, 2)
        queries = q[0].transpose(0, 1)[batch.query_index].transpose(1, 2)  # (S, n_heads, max_new, head_dim)
        query_pos = batch.positions[batch.query_index]  # (S, max_new)
        key_pos = torch.arange(keys.shape[2], device=x.device)
        # A key is seen up to the query's own position: later slots of the table (and padding blocks, which
        # lie beyond every position of the sequence) are not. Padding queries repeat a real one, so no row
        # of the mask is empty (a softmax over nothing would be NaN); their outputs are dropped.
        mask = key_pos[None, None, :] <= query_pos[:, :, None]  # (S, max_new, L)
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask[:, None], enable_gqa=a.n_rep > 1)
        out = out.transpose(1, 2)[batch.query_valid]  # the real queries, in order: (T, n_heads, head_dim)
        return a.wo(out.reshape(1, -1, a.n_heads * a.head_dim))


def use_paged_attention(model: Llama) -> Llama:
    """Swap every layer's :class:`Attention` for a :class:`PagedAttention` around it, in place; returns ``model``.

    Afterwards the model computes only serving steps (:func:`paged_forward`); :func:`use_plain_attention`
    swaps the originals back.
    """
    if any(isinstance(m, PagedAttention) for m in model.modules()):
        raise ValueError("the model's attention is paged already (an LLMEngine owns it): "
                         "use_plain_attention(model) first, or give the engine a copy")
    swap_layers(model, lambda name, m: PagedAttention(m) if isinstance(m, Attention) else None)
    return model


def use_plain_attention(model: Llama) -> Llama:
    """Undo :func:`use_paged_attention`: the original attention layers, in place; returns ``model``."""
    swap_layers(model, lambda name, m: m.attention if isinstance(m, PagedAttention) else None)
    return model


@torch.inference_mode()
def paged_forward(model: Llama, cache: PagedKVCache, batch: StepBatch) -> torch.Tensor:
    """Run one step: the logits after each sequence's last token, ``(S, vocab_size)``, in at least float32.

    ``model`` has :class:`PagedAttention` layers (:func:`use_paged_attention`). The output head runs on the
    ``S`` last tokens only: a 500-token prompt needs no logits for its first 499 (vLLM's sampler does the same).
    """
    layers = [PagedLayerCache(k, v, batch) for k, v in zip(cache.k, cache.v)]
    hidden = model.hidden_states(batch.tokens, 0, layers)[0, batch.last_index]  # (S, dim)
    return model.output_logits(hidden)
