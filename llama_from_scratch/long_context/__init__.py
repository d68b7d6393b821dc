"""Long context: RoPE scaling, a from-scratch FlashAttention, KV-cache memory, the Llama 3 family.

* ``rope_scaling``: linear interpolation, dynamic NTK, YaRN and Llama 3.1's scaling, as pure functions on
  RoPE's inverse frequencies; :class:`RopeScaling` and the Hugging Face reader and writer;
* ``flash_attention``: tiled attention with an online softmax, never holding the ``(seq, kv_seq)`` scores.
* ``passkey``: the passkey-retrieval test's prompt (a number hidden in filler text) and answer check;
* ``finetune`` (imported on its own, as ``llama_from_scratch.long_context.finetune``, since it trains a
  model): :func:`~.finetune.extend_context` and position interpolation's short fine-tune.

A model uses RoPE scaling through ``LlamaConfig.rope_scaling``; the Llama 3, 3.1 and 3.2 presets are in
``config.PRESETS``. Nothing here imports the config or the model, so both may import from here.
"""

from .flash_attention import flash_attention
from .passkey import PasskeyPrompt, passkey_prompt, read_passkey
from .rope_scaling import (
    RopeScaling,
    dynamic_ntk_theta,
    linear_scaling,
    llama3_scaling,
    meta_llama3_scaling,
    rope_cos_sin_scaled,
    rope_frequency_divisors,
    rope_parameters_to_hf,
    rope_scaling_from_hf,
    scaled_rope_frequencies,
    yarn_attention_factor,
    yarn_scaling,
)

__all__ = [
    "PasskeyPrompt",
    "RopeScaling",
    "dynamic_ntk_theta",
    "flash_attention",
    "linear_scaling",
    "llama3_scaling",
    "meta_llama3_scaling",
    "passkey_prompt",
    "read_passkey",
    "rope_cos_sin_scaled",
    "rope_frequency_divisors",
    "rope_parameters_to_hf",
    "rope_scaling_from_hf",
    "scaled_rope_frequencies",
    "yarn_attention_factor",
    "yarn_scaling",
]
