"""Where to run, and in which number format.

A GPU if there is one (CUDA, then Apple's MPS), else the CPU. On the CPU the
model runs in float32: CPUs without native bfloat16 units (most laptops,
and the AVX2 machines this course is tested on) multiply bf16 matrices
hundreds of times slower than fp32. On CUDA, bf16 halves memory and runs on
the tensor cores.
"""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """CUDA if available, then MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bfloat16 on a CUDA GPU that supports it, float32 everywhere else."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
