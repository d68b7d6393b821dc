"""Several processes, one model: data parallelism with ``torch.distributed``.

Launched as ``torchrun --nproc_per_node=N python -m llama_from_scratch train ...``,
the same script runs N times. Each process (its *rank*, 0 ... N-1) holds a
full copy of the model and trains on its own slice of every global batch.
``DistributedDataParallel`` averages the gradients across processes during
``backward()``, so after each step every copy holds the same weights, exactly
as if one process had trained on the whole global batch. The processes talk
through NCCL between CUDA GPUs or gloo between CPU processes.

**Fully sharded data parallelism** (FSDP, chapter 14; :func:`shard_model`) keeps the data parallelism
but not the copies: each process holds ``1 / N`` of every parameter, of its gradient and of the
optimizer's moments (ZeRO stage 3, :mod:`..systems.memory`). Before a block runs, its full weights are
gathered from all processes (all-gather) and dropped again after it; after its backward pass its
gradients are summed and split between the processes (reduce-scatter), each keeping its shard, which its
optimizer then updates. The arithmetic is that of one process on the whole batch, as with DDP.
PyTorch's FSDP2 (``fully_shard``) does all of it, on gloo too. Several machines: the same command under
``torchrun --nnodes=M --nproc_per_node=N --rdzv-endpoint=HOST:PORT`` on each.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
from torch.nn.parallel import DistributedDataParallel

from ..device import default_device


def init_distributed() -> tuple[int, int, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment; return ``(rank, world_size, device)``.

    Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) this is a
    single process: rank 0 of 1 on the default device.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, default_device()
    if torch.cuda.is_available():
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return dist.get_rank(), world_size, torch.device("cuda", local_rank)
    dist.init_process_group("gloo")
    return dist.get_rank(), world_size, torch.device("cpu")


def leave_distributed() -> None:
    """Leave the process group together, once every process is done (rank 0 writes the last checkpoint):
    a process tearing down gloo while another still talks to it can abort. Alone: nothing to do.

    Drop the last reference to a sharded model before calling this. A model that FSDP sharded is held in
    reference cycles (its hooks point back at it) together with the handles of its last collectives, so only
    the garbage collector frees it; collected while the process group and the interpreter are still alive
    (here), not during the interpreter's shutdown, where freeing gloo's pending work can abort the process.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the other processes: work with a cache on disk (preparing the
    data, say), which rank 0 fills and the others then read, rather than all of them writing it at once."""
    rank, world_size = process_group()
    if world_size > 1 and rank != 0:
        dist.barrier()  # wait for rank 0's block
    yield
    if world_size > 1 and rank == 0:
        dist.barrier()  # let the others start theirs


def process_group() -> tuple[int, int]:
    """``(rank, world_size)`` of this process in the group it joined (:func:`init_distributed`); ``(0, 1)`` alone."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class TrainingLoss(torch.nn.Module):
    """A module whose forward pass is ``loss_fn(model, *batch)``: the training loss of one micro-batch.

    ``DistributedDataParallel`` averages gradients of what runs inside *its* forward pass, and the model's
    forward returns logits; training needs the loss (computed without the logits), so DDP wraps this.
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable[..., torch.Tensor]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model, *batch)


def wrap_model(
    model: torch.nn.Module, device: torch.device, loss_fn: Callable[..., torch.Tensor]
) -> DistributedDataParallel:
    """The gradient-averaging wrapper around ``loss_fn(model, *batch)``, for a model already on ``device``."""
    return DistributedDataParallel(
        TrainingLoss(model, loss_fn), device_ids=[device.index] if device.type == "cuda" else None
    )


def wrapped_loss(wrapper: DistributedDataParallel, *batch: torch.Tensor) -> torch.Tensor:
    """The loss of one micro-batch through :func:`wrap_model`'s wrapper: its forward pass (so DDP sees it)."""
    return wrapper(*batch)


def shard_model(model: torch.nn.Module) -> None:
    """Shard ``model`` (a :class:`..model.Llama`, on this process's device) across the process group, in place.

    Each transformer block is one unit (gathered whole, one at a time, while it runs), and the rest (the
    embedding, the final norm, the head) is the root unit. ``loss`` is registered as a forward method, so
    that calling ``model.loss`` gathers the root's weights as ``model(...)`` would.
    """
    for block in model.layers:
        fully_shard(block)
    fully_shard(model)
    register_fsdp_forward_method(model, "loss")


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether :func:`shard_model` has sharded ``model``."""
    return isinstance(model, FSDPModule)


def any_rank(flag: bool, world_size: int, device: torch.device) -> bool:
    """``flag`` of this process, or of any process of the group: all of them stop at the same step."""
    if world_size == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())
