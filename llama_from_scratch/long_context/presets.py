"""The Llama 3 family (Meta, 2024): configs with their published parameter counts.

What changed from Llama 2, in numbers: a 128,256-token vocabulary (tiktoken-based BPE instead of
SentencePiece's 32,000), grouped-query attention with 8 key/value heads in *every* size, RoPE base
``rope_theta = 500,000`` instead of 10,000 (slower rotations, for an 8,192-token context), and, from 3.1,
a 131,072-token context reached by ``llama3`` RoPE scaling (factor 8; 32 for the 3.2 models, distilled
from 3.1). The 3.2 models share one matrix between embedding and output head, like SmolLM2.

Fields follow Meta's ``params.json`` (``multiple_of``, ``ffn_dim_multiplier``), so the SwiGLU sizes come
from Meta's rule: 14,336 (8B), 28,672 (70B), 53,248 (405B), 8,192 (1B and 3B). The scaling of each
model sits beside its config in :data:`LLAMA3_ROPE_SCALING` (``None``: plain RoPE), until
``LlamaConfig`` carries it.
"""

from __future__ import annotations

from ..config import LlamaConfig
from .rope_scaling import RopeScaling


def _llama3(
    dim: int, n_layers: int, n_heads: int, multiple_of: int, ffn_dim_multiplier: float, **changes
) -> LlamaConfig:
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
        **changes,
    )


LLAMA3_PRESETS: dict[str, LlamaConfig] = {
    "llama3-8b": _llama3(4096, 32, 32, 1024, 1.3, max_seq_len=8192),
    "llama3-70b": _llama3(8192, 80, 64, 4096, 1.3, max_seq_len=8192),
    "llama3.1-8b": _llama3(4096, 32, 32, 1024, 1.3, max_seq_len=131072),
    "llama3.1-70b": _llama3(8192, 80, 64, 4096, 1.3, max_seq_len=131072),
    "llama3.1-405b": _llama3(16384, 126, 128, 4096, 1.2, max_seq_len=131072),
    "llama3.2-1b": _llama3(2048, 16, 32, 256, 1.5, max_seq_len=131072, tie_embeddings=True),
    "llama3.2-3b": _llama3(3072, 28, 24, 256, 1.0, max_seq_len=131072, tie_embeddings=True),
}


def _llama3_scaling(factor: float) -> RopeScaling:
    return RopeScaling(
        "llama3", factor=factor, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
    )


LLAMA3_ROPE_SCALING: dict[str, RopeScaling | None] = {
    "llama3-8b": None,
    "llama3-70b": None,
    "llama3.1-8b": _llama3_scaling(8.0),
    "llama3.1-70b": _llama3_scaling(8.0),
    "llama3.1-405b": _llama3_scaling(8.0),
    "llama3.2-1b": _llama3_scaling(32.0),
    "llama3.2-3b": _llama3_scaling(32.0),
}
