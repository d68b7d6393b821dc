"""Fine-tuning a pretrained Llama: LoRA, instruction tuning (SFT) and preference tuning (DPO).

:mod:`.lora` (low-rank adapters swapped in from outside the model, merged back, switched off for DPO's
reference), :mod:`.adapter` (adapters on disk in PEFT's layout), :mod:`.sft` (conversations to tokens, the
loss on the assistant's tokens only, padded batches, a tokenized-data cache), :mod:`.dpo` (Direct Preference
Optimization: the loss and the sequence log-probabilities it needs), :mod:`.tasks` (the held-out "which
play?" task built from the Shakespeare corpus) and :mod:`.finetune` (the training loop of :mod:`..training`,
given these).
"""

from .adapter import load_adapter, save_adapter
from .dpo import dpo_loss, preference_metrics, reward_margins, sequence_logprobs
from .finetune import FinetuneConfig, finetune
from .lora import LoRALinear, add_lora, merge_lora
from .sft import tokenize_conversation

__all__ = [
    "FinetuneConfig",
    "LoRALinear",
    "add_lora",
    "dpo_loss",
    "finetune",
    "load_adapter",
    "merge_lora",
    "preference_metrics",
    "reward_margins",
    "save_adapter",
    "sequence_logprobs",
    "tokenize_conversation",
]
