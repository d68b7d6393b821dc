"""Systems and scaling (chapter 14): what changes when the model or the data outgrows one device.

:mod:`.precision` (fp32, bf16 and fp16 autocast, and where PyTorch allows each), :mod:`.loss_scaling`
(float16's dynamic loss scaling, equal to ``torch.amp.GradScaler``).
"""

from .loss_scaling import DynamicLossScaler
from .precision import PRECISIONS, autocast

__all__ = ["PRECISIONS", "DynamicLossScaler", "autocast"]
