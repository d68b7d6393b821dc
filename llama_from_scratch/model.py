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
from torch.utils.checkpoint import checkpoint

from .attention import Attention
from .config import LlamaConfig
from .cross_entropy import linear_cross_entropy
from .feedforward import SwiGLU
from .kv_cache import KVCache
from .rmsnorm import RMSNorm
from .rope_scaling import rope_cos_sin_scaled


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
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(batch, seq, dim) -> (batch, seq, dim)``; ``attention_mask`` as in :meth:`Llama.forward`."""
        x = x + self.attention(self.attention_norm(x), cos, sin, start_pos, cache, attention_mask)
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    """A LLaMA-family decoder-only language model built from a :class:`LlamaConfig`.

    ``activation_checkpointing`` (a training option, chapter 14; off by default): while gradients are
    recorded, each block keeps only its input and recomputes its inner activations in the backward
    pass (``torch.utils.checkpoint``), so a forward pass holds ``n_layers`` ``(batch, seq, dim)``
    tensors plus one block's worth instead of every block's: memory for about one more forward pass
    of time. The recomputation repeats the same operations, so the gradients are bit-identical.
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.activation_checkpointing = False
        if config.tie_embeddings:
            self.tie_weights()
        self.reset_parameters()

    def tie_weights(self) -> None:
        """Share one matrix between the token embedding and the output head (as SmolLM2 does).

        The head's tensors become the embedding's: ``output.weight`` *is* ``tok_embeddings.weight``
        (and, in a quantized model, the head's integer codes and scales are the embedding's).
        """
        for name, tensor in self.tok_embeddings.state_dict(keep_vars=True).items():
            setattr(self.output, name, tensor)

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
        cache: list[KVCache] | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits for the next token after every position: ``(batch, seq)`` ids -> ``(batch, seq, vocab_size)``.

        ``tokens`` holds the tokens at positions ``start_pos ... start_pos + seq - 1``. The logits come in
        at least float32 (a bfloat16 model's are converted: sampling and the loss need the precision).

        With ``cache`` (one :class:`KVCache` per layer, see :meth:`new_kv_caches`) the keys and values of
        these tokens are stored, and earlier positions are read from the caches instead of being
        recomputed: feed the prompt once with ``start_pos=0``, then one token at a time with ``start_pos``
        = the number of tokens seen so far.

        ``attention_mask`` (for a batch of prompts of different lengths, left-padded to one length) is a
        ``(batch, start_pos + seq)`` boolean tensor covering every position so far: True for a real token,
        False for padding, which no real token attends to. The positions stay those of the columns, so a
        row with ``p`` padding tokens has its text at positions ``p, p + 1, ...`` instead of ``0, 1, ...``:
        RoPE makes attention depend only on the offset between two tokens (chapter 03), so shifting a whole
        row changes its logits by float rounding only, and no per-row positions are needed.
        """
        return self.output_logits(self.hidden_states(tokens, start_pos, cache, attention_mask))

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output head on hidden states: ``(..., dim) -> (..., vocab_size)``, in at least float32.

        Callers that need the logits of a few positions only (the last one of each prompt) run the head on
        those alone: it is a fifth of a small model's work per token."""
        logits = self.output(hidden)
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

    def hidden_states(
        self,
        tokens: torch.Tensor,
        start_pos: int = 0,
        cache: list[KVCache] | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Everything but the output head: ``(batch, seq)`` ids -> ``(batch, seq, dim)`` after the final norm."""
        if not torch.compiler.is_compiling():  # the checks read values: a graph break under torch.compile
            self._check_tokens(tokens, start_pos)
        if cache is not None and len(cache) != len(self.layers):
            raise ValueError(f"cache must hold one KVCache per layer ({len(self.layers)}), got {len(cache)}")
        expected_mask = (tokens.shape[0], start_pos + tokens.shape[1])
        if attention_mask is not None and (attention_mask.dtype != torch.bool or attention_mask.shape != expected_mask):
            raise ValueError(
                f"attention_mask must be a boolean tensor of shape (batch, start_pos + seq) = {expected_mask}, "
                f"got {attention_mask.dtype} of shape {tuple(attention_mask.shape)}"
            )
        cos, sin = self._rope(tokens, start_pos)
        x = self.tok_embeddings(tokens)  # (batch, seq, dim)
        recompute = self.activation_checkpointing and cache is None and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if recompute:  # a cache would be written twice: checkpointing is for training, without one
                x = checkpoint(layer, x, cos, sin, start_pos, None, attention_mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, start_pos, cache[i] if cache is not None else None, attention_mask)
        return self.norm(x)

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Mean next-token cross-entropy in nats per token; training calls the model this way.

        ``inputs`` and ``targets`` are ``(batch, seq)``: ``targets[b, t]`` is the token that follows
        ``inputs[b, t]``. Targets equal to ``ignore_index`` carry no loss (a prompt's tokens in supervised
        fine-tuning, say). Equals ``F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())``
        but never holds the ``(tokens, vocab_size)`` logits: see :mod:`.cross_entropy`.
        """
        return linear_cross_entropy(self.hidden_states(inputs), self.output.weight, targets, ignore_index=ignore_index)

    @torch.no_grad()
    def attention_maps(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """The attention weights of every layer, for pictures: one ``(batch, n_heads, seq, seq)`` per layer.

        Runs the same computation as :meth:`forward` (no cache), asking each layer's attention for its
        weights on the way (:meth:`Attention.weights`), which the fused kernel of the forward pass never
        materialises.
        """
        self._check_tokens(tokens, 0)
        cos, sin = self._rope(tokens, 0)
        x = self.tok_embeddings(tokens)
        maps = []
        for layer in self.layers:
            maps.append(layer.attention.weights(layer.attention_norm(x), cos, sin))
            x = layer(x, cos, sin)
        return maps

    def _rope(self, tokens: torch.Tensor, start_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE's cos and sin for these positions: ``rope.rope_cos_sin`` unless the config scales RoPE (chapter 11)."""
        c, seq_len = self.config, start_pos + tokens.shape[1]
        positions = torch.arange(start_pos, seq_len, device=tokens.device)
        return rope_cos_sin_scaled(positions, c.head_dim, c.rope_theta, c.rope_scaling, seq_len)

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
        if tokens.device.type != "cpu":
            return  # reading values back from an accelerator would stall it at every step; checked on the host
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
        c, dtype = self.config, self.hidden_dtype
        return [KVCache(batch_size, max_seq_len, c.n_kv_heads, c.head_dim, dtype, self.device) for _ in self.layers]

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """How many numbers the model learns (a tied matrix counts once).

        A layer swapped in from outside that keeps its weight in another form (a quantized layer: integer
        codes and scales, held as buffers, not parameters) says how many weights it stands for with a
        ``num_weights()`` method, and counts that: SmolLM2 quantized to int4 still has 135M parameters,
        held in fewer bytes.
        """
        total = _count_weights(self)
        if exclude_embeddings:
            total -= _count_weights(self.tok_embeddings)
        return total

    @property
    def device(self) -> torch.device:
        """Where the model lives, read from the final norm's weight: a plain parameter in every model (a
        quantized layer's ``.weight`` is dequantized on each read, a whole matrix for one attribute)."""
        return self.norm.weight.device

    @property
    def hidden_dtype(self) -> torch.dtype:
        """The dtype of the hidden states, and so of the KV cache: the embedding table's, or float32 for a
        quantized table (chapter 09), which dequantizes the rows it looks up to float32."""
        table = self.tok_embeddings
        return table.weight.dtype if isinstance(table, nn.Embedding) else torch.float32

    @classmethod
    def from_preset(cls, name: str, **changes) -> Llama:
        """A randomly initialised model of a named size, e.g. ``Llama.from_preset("tiny")``."""
        return cls(LlamaConfig.from_preset(name, **changes))


def _count_weights(module: nn.Module) -> int:
    """The parameters of ``module``, plus the weights its layers with a ``num_weights()`` stand for; layers that
    share their tensors (a tied, quantized embedding and head) count once."""
    stored = {}
    for layer in module.modules():
        if hasattr(layer, "num_weights"):
            stored[id(next(layer.buffers(), layer))] = layer.num_weights()
    return sum(p.numel() for p in module.parameters()) + sum(stored.values())


def count_parameters(config: LlamaConfig) -> int:
    """The parameter count of a model of this config, without allocating its weights.

    The model is built on PyTorch's ``meta`` device, where tensors have shapes
    but no storage, so even a 70B config is counted instantly.
    """
    with torch.device("meta"):
        return Llama(config).num_parameters()


COMPONENTS = ("embeddings", "attention", "feed-forward", "norms", "output")


def component(name: str) -> str:
    """Which part of the model a parameter belongs to, from its (Meta) name: ``"attention"``, ``"norms"``, ..."""
    if name.startswith("tok_embeddings"):
        return "embeddings"
    if ".attention." in name:
        return "attention"
    if ".feed_forward." in name:
        return "feed-forward"
    if name.endswith("norm.weight"):
        return "norms"
    if name.startswith("output"):
        return "output"
    raise ValueError(f"no component for parameter {name!r}")


def parameters_by_component(config: LlamaConfig) -> dict[str, int]:
    """How many parameters sit in each of :data:`COMPONENTS` (a tied output head counts as embeddings)."""
    with torch.device("meta"):
        model = Llama(config)
    counts = dict.fromkeys(COMPONENTS, 0)
    for name, p in model.named_parameters():  # a tied matrix appears once
        counts[component(name)] += p.numel()
    return counts
