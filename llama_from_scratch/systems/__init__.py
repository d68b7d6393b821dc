"""Systems and scaling (chapter 14): what changes when the model or the data outgrows one device.

:mod:`.precision` (fp32, bf16 and fp16 autocast, and where PyTorch allows each), :mod:`.loss_scaling`
(float16's dynamic loss scaling, equal to ``torch.amp.GradScaler``), :mod:`.memory` (parameters, gradients,
optimizer state and activations per device under data parallelism, ZeRO and activation checkpointing),
:mod:`.flops` (6N per token plus attention; model FLOPs utilisation), :mod:`.scaling_laws` (Chinchilla's
L(N, D) fitted, iso-FLOP curves, the compute-optimal frontier).

FlashAttention's backward pass builds on chapter 11's forward: :mod:`llama_from_scratch.long_context.flash_backward`.
"""

from .flops import model_flops_utilization, training_flops_per_token
from .loss_scaling import DynamicLossScaler
from .memory import TrainingMemory, training_memory
from .precision import PRECISIONS, autocast
from .scaling_laws import ScalingLaw, fit_scaling_law

__all__ = [
    "PRECISIONS",
    "DynamicLossScaler",
    "ScalingLaw",
    "TrainingMemory",
    "autocast",
    "fit_scaling_law",
    "model_flops_utilization",
    "training_flops_per_token",
    "training_memory",
]
