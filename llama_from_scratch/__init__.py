"""llama-from-scratch: a LLaMA-family language model, one idea per module.

Read the modules in this order: ``config``, ``rmsnorm``, ``rope``,
``feedforward``, ``attention`` (with ``kv_cache``), ``model``, ``generate``,
``checkpoints`` (with ``hf_format``), ``device``.
"""

from .attention import Attention, attention_weights, causal_mask, repeat_kv
from .checkpoints import load_checkpoint
from .config import PRESETS, LlamaConfig, ffn_hidden_dim
from .device import default_device, default_dtype
from .feedforward import SwiGLU
from .generate import generate, generate_stream, next_token_probabilities, sample_next_token
from .kv_cache import KVCache
from .model import Llama, TransformerBlock, count_parameters
from .rmsnorm import RMSNorm, rms_norm
from .rope import (
    apply_rope,
    apply_rope_complex,
    apply_rope_half,
    half_to_interleaved,
    interleaved_to_half,
    rope_cos_sin,
    rope_frequencies,
)

__version__ = "0.1.0"

__all__ = [
    "PRESETS", "Attention", "KVCache", "Llama", "LlamaConfig", "RMSNorm", "SwiGLU", "TransformerBlock",
    "apply_rope", "apply_rope_complex", "apply_rope_half", "attention_weights", "causal_mask", "count_parameters",
    "default_device", "default_dtype", "ffn_hidden_dim", "generate", "generate_stream", "half_to_interleaved",
    "interleaved_to_half", "load_checkpoint", "next_token_probabilities", "repeat_kv", "rms_norm",
    "rope_cos_sin", "rope_frequencies", "sample_next_token",
]
