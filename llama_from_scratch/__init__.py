"""llama-from-scratch: a LLaMA-family language model, one idea per module.

Read the modules in the order of the course:

* text to tokens: ``data`` (the Shakespeare corpus), ``bpe`` (training a
  tokenizer), ``sentencepiece_model`` and ``sentencepiece_bpe`` (Llama's
  tokenizer format), ``byte_bpe`` (GPT-2 / Llama 3 style), ``tokenizer``
  (``load_tokenizer``);
* the model: ``config``, ``rmsnorm``, ``rope``, ``feedforward``,
  ``attention``, ``kv_cache``, ``model``, ``generate``, ``device``;
* training: ``dataset``, ``cross_entropy``, ``train``, ``train_checkpoint``, ``distributed``;
* real checkpoints: ``checkpoints`` with ``hf_format``, ``meta_format``,
  ``gguf_format``; ``export``;
* the course itself: ``checks`` (exercise feedback), ``exercises``
  (generating assignments), ``viz`` (pictures).
"""

from .attention import Attention, attention_weights, causal_mask, repeat_kv
from .bpe import train_bpe
from .byte_bpe import ByteLevelBPE
from .checkpoints import load_checkpoint
from .config import PRESETS, LlamaConfig, ffn_hidden_dim
from .data import shakespeare
from .device import default_device, default_dtype
from .export import save_checkpoint
from .feedforward import SwiGLU
from .generate import generate, generate_stream, next_token_probabilities, sample_next_token
from .cross_entropy import linear_cross_entropy
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
from .sentencepiece_bpe import SentencePieceTokenizer
from .tokenizer import Tokenizer, load_tokenizer
from .train import TrainConfig, train

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "Attention",
    "ByteLevelBPE",
    "KVCache",
    "Llama",
    "LlamaConfig",
    "RMSNorm",
    "SentencePieceTokenizer",
    "SwiGLU",
    "Tokenizer",
    "TrainConfig",
    "TransformerBlock",
    "load_tokenizer",
    "save_checkpoint",
    "shakespeare",
    "train",
    "train_bpe",
    "apply_rope",
    "apply_rope_complex",
    "apply_rope_half",
    "attention_weights",
    "causal_mask",
    "count_parameters",
    "default_device",
    "default_dtype",
    "ffn_hidden_dim",
    "generate",
    "generate_stream",
    "half_to_interleaved",
    "interleaved_to_half",
    "linear_cross_entropy",
    "load_checkpoint",
    "next_token_probabilities",
    "repeat_kv",
    "rms_norm",
    "rope_cos_sin",
    "rope_frequencies",
    "sample_next_token",
]
