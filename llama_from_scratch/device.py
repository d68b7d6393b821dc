"""Where to run, and in which number format.

A GPU if there is one (CUDA, then Apple's MPS), else the CPU. On the CPU the
model runs in float32: CPUs without native bfloat16 units (most laptops,
and the AVX2 machines this course is tested on) multiply bf16 matrices
hundreds of times slower than fp32. On CUDA, bf16 halves memory and runs on
the tensor cores.

How many CPU threads: PyTorch starts one per core, which is fastest on an idle
machine but collapses when another program keeps a core busy. Its threads meet
at a barrier after every operation, so all of them wait for the one that shares
its core: a training step measured 1.9 s with two threads against 0.14 s with
one while another process was busy, on a 2-core laptop. :func:`configure_threads`
therefore leaves out the cores that are busy when it is called.
"""

from __future__ import annotations

import os
import time

import torch

# The count PyTorch chose when this package was imported: a different one later means someone chose.
_STARTING_THREADS = torch.get_num_threads()
_chosen: int | None = None
THREADS_VARIABLE = "LLAMA_THREADS"  # an explicit count for this package's notebooks and command line


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


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from Linux's /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(f) for f in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + waiting for I/O
    return sum(fields) - idle, sum(fields)


def busy_cpus(interval: float = 0.1) -> float:
    """How many CPUs other programs keep busy now: /proc/stat over ``interval`` seconds (elsewhere the 1-minute load)."""
    try:
        busy0, total0 = _cpu_times()
        time.sleep(interval)
        busy1, total1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return (os.cpu_count() or 1) * (busy1 - busy0) / max(1, total1 - total0)


def choose_num_threads(busy: float | None = None) -> int:
    """PyTorch's own count, less the CPUs that are busy (``busy``, measured when ``None``); at least one."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = busy_cpus() if busy is None else busy
    return max(1, min(_STARTING_THREADS, round(usable - busy)))


def configure_threads() -> int:
    """Set PyTorch's CPU thread count for a notebook or a command, unless someone chose it; return the count.

    A choice is respected: ``LLAMA_THREADS=N`` sets ``N``; ``OMP_NUM_THREADS`` (or ``MKL_NUM_THREADS``)
    and an earlier ``torch.set_num_threads`` are left alone. Otherwise :func:`choose_num_threads`
    picks PyTorch's count less the busy CPUs, measured now (over a tenth of a second). Call it again after
    the machine's load changed.
    """
    global _chosen
    current = torch.get_num_threads()
    if os.environ.get(THREADS_VARIABLE):
        value = os.environ[THREADS_VARIABLE]
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{THREADS_VARIABLE}={value!r}: expected a positive number of threads")
        _chosen = int(value)
    elif (
        os.environ.get("OMP_NUM_THREADS")
        or os.environ.get("MKL_NUM_THREADS")
        or current
        not in (
            _STARTING_THREADS,
            _chosen,
        )
    ):
        return current
    else:
        _chosen = choose_num_threads()
    if _chosen != current:
        torch.set_num_threads(_chosen)
    return _chosen
