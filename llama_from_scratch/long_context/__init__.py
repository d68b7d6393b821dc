"""Long context (chapter 11): tiled attention, the passkey test, and teaching a model a longer context.

* ``flash_attention``: tiled attention with an online softmax, never holding the ``(seq, kv_seq)`` scores.
* ``flash_backward`` (chapter 14): its backward pass, recomputing the tiles from the output and each row's
  log-sum-exp; ``tiled_attention`` is differentiable, ``set_attention(model, "tiled")`` trains with it.
* ``passkey``: the passkey-retrieval test's prompt (a number hidden in filler text) and answer check;
* ``finetune`` (imported on its own, as ``llama_from_scratch.long_context.finetune``, since it runs the
  training loop): :func:`~.finetune.extend_context` and position interpolation's short fine-tune.

RoPE scaling itself (linear, dynamic NTK, YaRN, Llama 3.1's ``llama3``) changes the model's frequencies,
so it is part of the model: :mod:`llama_from_scratch.rope_scaling`, used through
``LlamaConfig.rope_scaling``; each checkpoint format reads and writes it in :mod:`llama_from_scratch.checkpoints`.
"""

from .flash_attention import flash_attention
from .flash_backward import set_attention, tiled_attention
from .passkey import PasskeyPrompt, passkey_prompt, read_passkey

__all__ = ["PasskeyPrompt", "flash_attention", "passkey_prompt", "read_passkey", "set_attention", "tiled_attention"]
