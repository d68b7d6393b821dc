"""KVCache: remember keys and values so that decoding does not recompute them.

When a model generates text one token at a time, the keys and values of all
earlier tokens are the same at every step: causal attention never lets an
early token see a later one. Recomputing them makes each new token cost as
much as the whole prefix. The cache stores them instead, so a decoding step
only computes the new token's query, key and value, and attends to the stored
ones.

One ``KVCache`` serves one attention layer. Its buffers are allocated once, at
the largest size they will need (like gpt-fast's static cache), so memory use
is known up front and nothing is re-allocated while generating. With
grouped-query attention the cache holds only the ``n_kv_heads`` key/value
heads, not the ``n_heads`` copies that attention uses: that is exactly why GQA
saves memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .config import LlamaConfig


class KVCache:
    """Preallocated keys and values of one layer: two ``(batch, n_kv_heads, max_seq_len, head_dim)`` buffers.

    A plain object rather than an ``nn.Module``: it holds no learned weights,
    belongs to one generation rather than to the model, and ``torch.compile``
    then treats its length as a variable (module buffers are compiled as
    fixed-size), so caches of different lengths share one compiled step.
    """

    def __init__(
        self,
        batch_size: int,
        max_seq_len: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def max_seq_len(self) -> int:
        return self.k.shape[2]

    def update(self, start_pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values at positions ``start_pos ...`` and return everything up to them.

        ``k`` and ``v`` are ``(batch, n_kv_heads, seq, head_dim)`` for the new
        tokens. Returns keys and values ``(batch, n_kv_heads, start_pos + seq,
        head_dim)``: the cached past followed by the new tokens.
        """
        batch, _, seq, _ = k.shape
        end = start_pos + seq
        if end > self.max_seq_len:
            raise ValueError(
                f"KVCache holds {self.max_seq_len} positions, but positions {start_pos}..{end - 1} were written; "
                "allocate a larger cache (max_seq_len)"
            )
        if batch > self.k.shape[0]:
            raise ValueError(f"KVCache was allocated for batch {self.k.shape[0]}, got a batch of {batch}")
        self.k[:batch, :, start_pos:end] = k
        self.v[:batch, :, start_pos:end] = v
        return self.k[:batch, :, :end], self.v[:batch, :, :end]

    def select_rows(self, rows: torch.Tensor) -> KVCache:
        """A new cache whose row ``i`` is a copy of this one's row ``rows[i]``: ``rows`` ``(batch,)`` indices.

        Several sequences that continue one prompt (a group of sampled answers) start from the keys and values
        of that prompt computed once. Indexing is differentiable, so a prompt run with gradients gets the
        gradients of every row that read its copy, summed.
        """
        selected = KVCache.__new__(KVCache)
        selected.k, selected.v = self.k[rows], self.v[rows]  # (batch, n_kv_heads, max_seq_len, head_dim) each
        return selected


def kv_cache_bytes(config: LlamaConfig, seq_len: int, bytes_per_value: float = 2, batch_size: int = 1) -> float:
    """Memory of the keys and values of ``batch_size`` sequences of ``seq_len`` tokens, in every layer.

    Per token and layer the cache holds one key and one value (the factor 2) for each of the
    ``n_kv_heads`` key/value heads (not ``n_heads``: that is GQA's saving), ``head_dim`` numbers each.
    ``bytes_per_value``: 2 for float16 / bfloat16, 4 for float32. Equals the buffers :class:`KVCache`
    allocates for that config.
    """
    values_per_token = 2 * config.n_layers * config.n_kv_heads * config.head_dim
    return values_per_token * seq_len * batch_size * bytes_per_value
