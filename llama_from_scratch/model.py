"""The LLaMA model: embeddings, a stack of pre-norm transformer blocks, a final norm, logits.

    tokens (batch, seq)
      -> tok_embeddings                      (batch, seq, dim)
      -> n_layers x TransformerBlock:
             x = x + Attention(RMSNorm(x))   # tokens exchange information
             x = x + SwiGLU(RMSNorm(x))      # each token is transformed on its own
      -> RMSNorm -> output                   (batch, seq, vocab_size) logits

Compared with the original transformer (Vaswani et al., 2017), LLaMA
normalises *before* each sub-layer and uses RMSNorm, SwiGLU and rotary position
embeddings (RoPE) instead of learned absolute positions, and has no biases.
Parameter names are those of Meta's checkpoints, so ``model.state_dict()``
has the same keys as ``consolidated.00.pth``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention import Attention
from .config import LlamaConfig
from .cross_entropy import linear_cross_entropy
from .feedforward import SwiGLU
from .kv_cache import KVCache
from .rmsnorm import RMSNorm
from .rope import rope_cos_sin


class TransformerBlock(nn.Module):
    """One pre-norm block: attention then feed-forward, each added to the residual stream."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = SwiGLU(config.dim, config.hidden_dim)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        start_pos: int = 0,
        cache: KVCache | None = None,
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(batch, seq, dim) -> (batch, seq, dim)``, plus the attention weights if asked for."""
        h, weights = self.attention(self.attention_norm(x), cos, sin, start_pos, cache, return_weights)
        x = x + h
        x = x + self.feed_forward(self.ffn_norm(x))
        return x, weights


class Llama(nn.Module):
    """A LLaMA-family decoder-only language model built from a :class:`LlamaConfig`."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.tie_weights()
        self.reset_parameters()

    def tie_weights(self) -> None:
        """Share one matrix between the token embedding and the output head (as SmolLM2 does)."""
        self.output.weight = self.tok_embeddings.weight

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """Random initial weights for training from scratch.

        Matrices and embeddings ~ N(0, std); norms' gains = 1. The two
        projections that write into the residual stream (``wo``, ``w2``) get
        ``std / sqrt(2 * n_layers)`` so the stream's variance does not grow
        with depth (as in GPT-2).
        """
        if self.tok_embeddings.weight.is_meta:
            return  # shapes only (counting, or about to load weights): nothing to initialise
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if p.ndim == 1:
                nn.init.ones_(p)
            elif name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(p, 0.0, residual_std)
            else:
                nn.init.normal_(p, 0.0, std)

    def forward(
        self,
        tokens: torch.Tensor,
        start_pos: int = 0,
        kv_caches: list[KVCache] | None = None,
        return_attention: bool = False,
        targets: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits for the next token after every position (or, given ``targets``, the training loss).

        ``tokens`` is a ``(batch, seq)`` integer tensor holding the tokens at
        positions ``start_pos ... start_pos + seq - 1``. Returns float32 logits
        ``(batch, seq, vocab_size)``.

        With ``kv_caches`` (one :class:`KVCache` per layer, see
        :meth:`new_kv_caches`) the keys and values of these tokens are stored,
        and earlier positions are read from the caches instead of being
        recomputed: feed the prompt once with ``start_pos=0``, then one token
        at a time with ``start_pos`` = the number of tokens seen so far.

        With ``return_attention=True`` the result is ``(logits, weights)``,
        ``weights`` a list with one ``(batch, n_heads, seq, kv_seq)`` tensor per layer.

        With ``targets`` (``(batch, seq)``, the token that follows each
        position) the result is instead the mean next-token cross-entropy, a
        scalar in nats per token, computed by
        :func:`~llama_from_scratch.cross_entropy.linear_cross_entropy` without
        materialising the logits. Training calls the model this way.
        """
        if not torch.compiler.is_compiling():  # the check reads token values: a graph break under torch.compile
            self._check_tokens(tokens, start_pos)
        if kv_caches is not None and len(kv_caches) != len(self.layers):
            raise ValueError(f"kv_caches must hold one KVCache per layer ({len(self.layers)}), got {len(kv_caches)}")
        seq = tokens.shape[1]
        positions = torch.arange(start_pos, start_pos + seq, device=tokens.device)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)

        x = self.tok_embeddings(tokens)
        attention = []
        for i, layer in enumerate(self.layers):
            cache = kv_caches[i] if kv_caches is not None else None
            x, weights = layer(x, cos, sin, start_pos, cache, return_attention)
            attention.append(weights)
        if targets is not None:
            return linear_cross_entropy(self.norm(x), self.output.weight, targets)
        logits = self.output(self.norm(x)).float()
        return (logits, attention) if return_attention else logits

    def _check_tokens(self, tokens: torch.Tensor, start_pos: int) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
            got = (
                f"{tokens.dtype} tensor of shape {tuple(tokens.shape)}"
                if isinstance(tokens, torch.Tensor)
                else type(tokens).__name__
            )
            raise ValueError(f"tokens must be a (batch, seq) tensor of int64 token ids, got {got}")
        seq = tokens.shape[1]
        if seq == 0:
            raise ValueError("tokens is empty: a forward pass needs at least one token")
        if start_pos < 0 or start_pos + seq > self.config.max_seq_len:
            raise ValueError(
                f"positions {start_pos}..{start_pos + seq - 1} exceed the model's context of "
                f"max_seq_len={self.config.max_seq_len} tokens"
            )
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got ids from {lo} to {hi}")

    def new_kv_caches(self, batch_size: int = 1, max_seq_len: int | None = None) -> list[KVCache]:
        """One empty :class:`KVCache` per layer, on the model's device and in its dtype."""
        max_seq_len = max_seq_len or self.config.max_seq_len
        if max_seq_len > self.config.max_seq_len:
            raise ValueError(
                f"a cache of {max_seq_len} positions exceeds the model's context of max_seq_len={self.config.max_seq_len}"
            )
        weight = self.tok_embeddings.weight
        return [
            KVCache(batch_size, max_seq_len, self.config.n_kv_heads, self.config.head_dim, weight.dtype, weight.device)
            for _ in self.layers
        ]

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """How many numbers the model learns (a tied matrix counts once)."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.tok_embeddings.weight.numel()
        return total

    @property
    def device(self) -> torch.device:
        return self.tok_embeddings.weight.device

    @classmethod
    def from_preset(cls, name: str, **changes) -> Llama:
        """A randomly initialised model of a named size, e.g. ``Llama.from_preset("tiny")``."""
        return cls(LlamaConfig.from_preset(name, **changes))


def count_parameters(config: LlamaConfig) -> int:
    """The parameter count of a model of this config, without allocating its weights.

    The model is built on PyTorch's ``meta`` device, where tensors have shapes
    but no storage, so even a 70B config is counted instantly.
    """
    with torch.device("meta"):
        return Llama(config).num_parameters()
