"""Mixed precision: which number format the forward pass computes in, and where PyTorch allows it.

``fp32`` computes everything in float32. ``bf16`` and ``fp16`` run the forward pass under *autocast*:
matrix multiplications (where the time goes) take 16-bit inputs, while the weights, the optimizer's
moments and reductions such as the softmax and the loss stay in float32 (the "master" copy that the
small updates are added to, which 16 bits could not hold). ``fp16`` needs loss scaling
(:mod:`.loss_scaling`) because of its narrow range; ``bf16`` has float32's range and does not.

Support depends on the device and the PyTorch version: CUDA GPUs before Ampere have no bfloat16;
PyTorch 2.13 runs both bfloat16 and float16 autocast on the CPU (correct, but on a CPU without 16-bit
matrix units far slower than float32: about 1 GFLOP/s against 189 on the course's machines).
:func:`autocast` asks PyTorch itself and turns its refusal into an error that names the choice.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_precision(device: torch.device) -> str:
    """The course's default: bfloat16 autocast on a CUDA GPU that supports it, float32 elsewhere."""
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def autocast(device: torch.device, precision: str | None) -> contextlib.AbstractContextManager:
    """The context to run a forward pass on ``device`` in ``precision`` (``fp32``, ``bf16`` or ``fp16``;
    ``None``: :func:`default_precision`).

    Raises ``ValueError`` for an unknown name, or when PyTorch cannot autocast to that format on this
    device (it would otherwise warn and silently compute in float32).
    """
    precision = precision or default_precision(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    refusal = None
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        refusal = f"{torch.cuda.get_device_name(device)} has no bfloat16 (it needs an Ampere GPU or newer)"
    elif not torch.amp.is_autocast_available(device.type):
        refusal = f"PyTorch has no autocast on {device.type}"
    else:
        with warnings.catch_warnings(record=True) as caught:  # an unsupported dtype: a warning, autocast off
            warnings.simplefilter("always")
            context = torch.autocast(device.type, dtype=dtype)
        if caught:
            refusal = str(caught[0].message)
    if refusal is not None:
        raise ValueError(
            f"precision {precision!r} is not supported on {device} by PyTorch {torch.__version__}: {refusal}; use fp32"
        )
    return context
