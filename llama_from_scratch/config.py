"""LlamaConfig: every number that fixes the shape of a LLaMA model.

The field names are the ones in Meta's ``params.json`` (``dim``, ``n_layers``,
``n_heads``, ``n_kv_heads``, ``multiple_of``, ``ffn_dim_multiplier``,
``norm_eps``, ``rope_theta``), so a Meta checkpoint's parameters load as they
are. Hugging Face calls the same numbers ``hidden_size``,
``num_hidden_layers``, ``num_attention_heads`` and so on; see
``checkpoints/hf.py`` for that translation.

``rope_scaling`` (chapter 11) stretches a model's context by changing RoPE's
frequencies; ``None``, the default, is plain RoPE. The scaling methods live in
``rope_scaling.py``.

Named presets reproduce the published models: LLaMA 7B-65B (Touvron et al.,
2023a), Llama 2 7B-70B (Touvron et al., 2023b), Llama 3, 3.1 and 3.2 (Meta,
2024), SmolLM2-135M, and two tiny teaching models that run in seconds on a
laptop CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import is_finite_number, is_int
from .rope_scaling import RopeScaling, check_rope_scaling, meta_llama3_scaling

# The largest size of any one dimension. PyTorch indexes tensors with 64-bit integers, so a matrix of two
# such dimensions never overflows; a real model's largest dimension is its vocabulary (262,144 at most so far).
MAX_SIZE = 2**31 - 1


def ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """Meta's rule for the SwiGLU hidden size.

    A plain feed-forward layer uses ``4 * dim`` hidden units. SwiGLU has three
    weight matrices instead of two, so LLaMA shrinks the hidden size to 2/3 of
    that to keep the parameter count equal, optionally scales it by
    ``ffn_dim_multiplier`` (Llama 2 70B uses 1.3), and rounds up to a multiple
    of ``multiple_of`` so the matrices tile well on hardware.

    >>> ffn_hidden_dim(4096, 256, None)   # LLaMA 7B
    11008
    """
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@dataclass
class LlamaConfig:
    """The hyper-parameters of a LLaMA-family decoder.

    ``n_kv_heads`` below ``n_heads`` gives grouped-query attention (GQA);
    ``n_kv_heads == 1`` is multi-query attention (MQA). ``hidden_dim`` may be
    given directly (Hugging Face configs store it as ``intermediate_size``);
    when left as ``None`` it follows Meta's rule from ``multiple_of`` and
    ``ffn_dim_multiplier``. ``head_dim`` likewise defaults to
    ``dim // n_heads``. ``rope_scaling``: a :class:`RopeScaling` (linear,
    dynamic NTK, YaRN, Llama 3.1's ``llama3``) or ``None`` for plain RoPE.
    """

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    vocab_size: int = 32000
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    hidden_dim: int | None = None
    head_dim: int | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    rope_scaling: RopeScaling | None = None

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "max_seq_len"):
            _require_positive_int(name, getattr(self, name))
        if self.head_dim is None:
            if self.dim % self.n_heads != 0:
                raise ValueError(
                    f"LlamaConfig.dim ({self.dim}) must be divisible by n_heads ({self.n_heads}) "
                    "so that every head gets dim // n_heads features"
                )
            self.head_dim = self.dim // self.n_heads
        _require_positive_int("head_dim", self.head_dim)
        if self.head_dim % 2 != 0:
            raise ValueError(f"LlamaConfig.head_dim ({self.head_dim}) must be even: RoPE rotates features in pairs")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"LlamaConfig.n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads}) "
                "so that each key-value head serves the same number of query heads"
            )
        if self.ffn_dim_multiplier is not None:
            _require_positive_number("ffn_dim_multiplier", self.ffn_dim_multiplier)
        if self.hidden_dim is None:
            self.hidden_dim = ffn_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)
        _require_positive_int("hidden_dim", self.hidden_dim)
        _require_positive_number("norm_eps", self.norm_eps)
        _require_positive_number("rope_theta", self.rope_theta)
        if not isinstance(self.tie_embeddings, bool):  # bool("false") is True: only a real bool will do
            raise ValueError(
                f"LlamaConfig.tie_embeddings must be True or False, got {self.tie_embeddings!r} "
                f"({type(self.tie_embeddings).__name__})"
            )
        if isinstance(self.rope_scaling, dict):  # as dataclasses.asdict writes it
            try:
                self.rope_scaling = RopeScaling(**self.rope_scaling)
            except (TypeError, ValueError) as error:
                raise ValueError(f"LlamaConfig.rope_scaling: {error}") from None
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ValueError(
                f"LlamaConfig.rope_scaling must be a RopeScaling or None, got {self.rope_scaling!r:.80} "
                f"({type(self.rope_scaling).__name__})"
            )
        if self.rope_scaling is not None:
            try:
                check_rope_scaling(self.rope_scaling, self.head_dim, self.rope_theta, self.max_seq_len)
            except ValueError as error:
                raise ValueError(f"LlamaConfig.rope_scaling: {error}") from None

    @property
    def n_rep(self) -> int:
        """How many query heads share one key-value head."""
        return self.n_heads // self.n_kv_heads

    def replace(self, **changes) -> LlamaConfig:
        """A copy with some fields changed (and validated again).

        ``hidden_dim`` and ``head_dim`` that follow their rules (Meta's FFN
        rule, ``dim // n_heads``) are derived again from the new fields, so
        ``replace(dim=128)`` gives a consistent smaller model; pass them
        explicitly to keep them fixed.
        """
        if "hidden_dim" not in changes and self.hidden_dim == ffn_hidden_dim(
            self.dim, self.multiple_of, self.ffn_dim_multiplier
        ):
            changes["hidden_dim"] = None
        if "head_dim" not in changes and self.head_dim == self.dim // self.n_heads:
            changes["head_dim"] = None
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_preset(cls, name: str, **changes) -> LlamaConfig:
        """The config of a named model, e.g. ``LlamaConfig.from_preset("llama2-7b")``."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; the presets are: {', '.join(PRESETS)}")
        return PRESETS[name].replace(**changes)


def _require_positive_int(name: str, value: object) -> None:
    if not is_int(value):
        raise ValueError(f"LlamaConfig.{name} must be an int, got {value!r} ({type(value).__name__})")
    if not 0 < value <= MAX_SIZE:
        raise ValueError(f"LlamaConfig.{name} must be positive and at most {MAX_SIZE}, got {value}")


def _require_positive_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"LlamaConfig.{name} must be a number, got {value!r} ({type(value).__name__})")
    if not (is_finite_number(value) and value > 0):
        raise ValueError(f"LlamaConfig.{name} must be positive and finite, got {value}")


def _llama3(
    dim: int,
    n_layers: int,
    n_heads: int,
    multiple_of: int,
    ffn_dim_multiplier: float,
    scaling_factor: float | None = None,
    tie_embeddings: bool = False,
) -> LlamaConfig:
    """A Llama 3 config; with ``scaling_factor``, Llama 3.1's RoPE scaling of the 8,192-token context."""
    scaling = None if scaling_factor is None else meta_llama3_scaling(scaling_factor)
    return LlamaConfig(
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=8,
        vocab_size=128256,
        multiple_of=multiple_of,
        ffn_dim_multiplier=ffn_dim_multiplier,
        norm_eps=1e-5,
        rope_theta=500000.0,
        max_seq_len=8192 if scaling is None else 131072,
        tie_embeddings=tie_embeddings,
        rope_scaling=scaling,
    )


# LLaMA 1 (Touvron et al., 2023a, table 2): 2,048-token context, norm eps 1e-6.
# Llama 2 (Touvron et al., 2023b): 4,096-token context, norm eps 1e-5, GQA for 70B.
PRESETS: dict[str, LlamaConfig] = {
    "llama-7b": LlamaConfig(dim=4096, n_layers=32, n_heads=32, norm_eps=1e-6, max_seq_len=2048),
    "llama-13b": LlamaConfig(dim=5120, n_layers=40, n_heads=40, norm_eps=1e-6, max_seq_len=2048),
    "llama-33b": LlamaConfig(dim=6656, n_layers=60, n_heads=52, norm_eps=1e-6, max_seq_len=2048),
    "llama-65b": LlamaConfig(dim=8192, n_layers=80, n_heads=64, norm_eps=1e-6, max_seq_len=2048),
    "llama2-7b": LlamaConfig(dim=4096, n_layers=32, n_heads=32, max_seq_len=4096),
    "llama2-13b": LlamaConfig(dim=5120, n_layers=40, n_heads=40, max_seq_len=4096),
    "llama2-70b": LlamaConfig(
        dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, multiple_of=4096, ffn_dim_multiplier=1.3, max_seq_len=4096
    ),
    # Llama 3 (Meta, 2024): a 128,256-token vocabulary (tiktoken-based BPE instead of SentencePiece's 32,000),
    # GQA with 8 key/value heads in every size, RoPE base 500,000 instead of 10,000 (slower rotations, for an
    # 8,192-token context) and Meta's FFN rule with its own multiple_of / ffn_dim_multiplier: 14,336 (8B),
    # 28,672 (70B), 53,248 (405B), 8,192 (1B, 3B). From 3.1, a 131,072-token context through ``llama3`` RoPE
    # scaling (factor 8; 32 for the 3.2 models, distilled from 3.1); the 3.2 models tie their embeddings.
    "llama3-8b": _llama3(4096, 32, 32, 1024, 1.3),
    "llama3-70b": _llama3(8192, 80, 64, 4096, 1.3),
    "llama3.1-8b": _llama3(4096, 32, 32, 1024, 1.3, scaling_factor=8.0),
    "llama3.1-70b": _llama3(8192, 80, 64, 4096, 1.3, scaling_factor=8.0),
    "llama3.1-405b": _llama3(16384, 126, 128, 4096, 1.2, scaling_factor=8.0),
    "llama3.2-1b": _llama3(2048, 16, 32, 256, 1.5, scaling_factor=32.0, tie_embeddings=True),
    "llama3.2-3b": _llama3(3072, 28, 24, 256, 1.0, scaling_factor=32.0, tie_embeddings=True),
    # SmolLM2-135M: a small Llama-architecture model with GQA and tied embeddings.
    "smollm2-135m": LlamaConfig(
        dim=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        vocab_size=49152,
        hidden_dim=1536,
        rope_theta=100000.0,
        max_seq_len=8192,
        tie_embeddings=True,
    ),
    # Teaching models: "tiny" runs a forward pass in milliseconds; "small" is
    # the size the training chapter trains on Shakespeare (about 5.5M parameters).
    "tiny": LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=32, max_seq_len=128),
    "small": LlamaConfig(dim=256, n_layers=4, n_heads=4, vocab_size=4096, multiple_of=64, max_seq_len=256),
}
