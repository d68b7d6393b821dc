"""Training: LLaMA's recipe at laptop scale.

The LLaMA papers train with AdamW (beta2 = 0.95, weight decay 0.1), a
learning rate that warms up linearly and then follows a cosine down to a
tenth of its peak, and gradients clipped to norm 1.0. This module is that
recipe, small enough to read in one sitting:

* :func:`learning_rate`: warm-up then cosine decay to a floor;
* :func:`configure_optimizer`: AdamW, weight decay on weight matrices only;
* :func:`train_step`: one optimizer step, with gradient accumulation and clipping;
* :func:`evaluate`: validation loss and bits per byte (sampled windows);
  :func:`evaluate_all` the same on every token of a split;
* :class:`TrainingData`: what the loop reads, whatever it trains on: a step's
  micro-batches, their loss, the held-out figures; :class:`TextWindows` is
  pretraining's (fine-tuning's are in :mod:`llama_from_scratch.finetuning`);
* :func:`train`: the loop, with progress bar, periodic evaluation, checkpoints
  and exact resumption (:class:`.checkpoint.RunFolder`), on one process or
  several (``torchrun``, see :mod:`.distributed`).

``TrainConfig.precision`` chooses the forward pass's number format (:mod:`..systems.precision`): by
default bfloat16 autocast on a CUDA GPU and float32 elsewhere (bfloat16 is far slower on CPUs without
native support); ``fp16`` scales the loss (:class:`..systems.loss_scaling.DynamicLossScaler`).
``activation_checkpointing`` recomputes each block's activations in the backward pass instead of
keeping them (:attr:`..model.Llama.activation_checkpointing`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
import dataclasses
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoints.load import latest_checkpoint
from ..errors import is_finite_number, is_float32, is_int
from ..model import Llama
from ..systems.flops import model_flops_utilization, training_flops_per_token
from ..systems.loss_scaling import DynamicLossScaler
from ..systems.precision import PRECISIONS, autocast
from .checkpoint import RunFolder, load_training_state, prepare_run_dir, save_training_checkpoint
from .sharded_checkpoint import load_sharded_checkpoint, save_sharded_checkpoint
from .dataset import EVAL, TokenData, get_batch
from .distributed import any_rank, is_sharded, process_group, wrap_model, wrapped_loss
from .signals import TrainingStopped, stop_requests

MIN_LR_SHARE = 0.1  # the cosine ends at a tenth of the peak rate, as in the LLaMA papers


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run. ``batch_size`` is per process and per micro-step.

    ``min_lr``, the floor of the cosine, defaults to a tenth of ``lr`` (:data:`MIN_LR_SHARE`); it is set
    when the config is made, and :meth:`replace` with a new ``lr`` sets it again.
    """

    steps: int = 2000
    batch_size: int = 16
    grad_accum: int = 1
    seq_len: int = 256
    lr: float = 2e-3
    min_lr: float | None = None
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_batches: int = 16
    checkpoint_every: int = 500
    seed: int = 1337
    precision: str | None = None  # fp32, bf16 or fp16; None: bf16 on a CUDA GPU, fp32 elsewhere
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.min_lr is None and is_finite_number(self.lr):
            self.min_lr = self.lr * MIN_LR_SHARE
        for name in ("steps", "batch_size", "grad_accum", "seq_len", "eval_batches", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be an int of at least 1, got {value!r}")
        if not is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        # A NaN or infinite rate would train into NaN weights and fail far from the cause; grad_clip may be
        # infinite (no clipping), never NaN. The rates multiply float32 tensors, so they must be finite (and,
        # if not 0, not 0) in float32 too: 1e39 passes as a Python float and is infinite in the optimizer.
        for name in ("lr", "min_lr", "weight_decay", "beta1", "beta2", "grad_clip"):
            value = getattr(self, name)
            if not (is_float32(value) or (name == "grad_clip" and value == math.inf)):
                raise ValueError(f"TrainConfig.{name} must be a finite number, in float32 too, got {value!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            choices = ", ".join(PRECISIONS)
            raise ValueError(f"TrainConfig.precision must be one of {choices} or None, got {self.precision!r}")
        if not isinstance(self.activation_checkpointing, bool):
            raise ValueError(
                f"TrainConfig.activation_checkpointing must be True or False, got {self.activation_checkpointing!r}"
            )
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"TrainConfig needs 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1) or self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError(
                f"TrainConfig needs 0 <= beta1, beta2 < 1, weight_decay >= 0 and grad_clip > 0, got beta1={self.beta1}, "
                f"beta2={self.beta2}, weight_decay={self.weight_decay}, grad_clip={self.grad_clip}"
            )

    def replace(self, **changes) -> TrainConfig:
        """A copy with some fields changed (and validated again); a new ``lr`` without a ``min_lr`` gets the
        default floor for it (a tenth), not the old one."""
        if "lr" in changes:
            changes.setdefault("min_lr", None)
        return dataclasses.replace(self, **changes)


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up from 0 to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at ``steps``.

    Warm-up matters because Adam's second-moment estimates start at zero: the
    first updates are large and noisy, and a small learning rate lets the
    estimates settle before the model takes big steps.
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


def configure_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the weight matrices of attention and feed-forward only.

    Decay pulls weights towards zero. That regularises the big matrices, but
    on a norm's gain it would fight the value 1 the gain should sit near, and
    on the embedding it would shrink rare tokens' vectors just for being rare.
    Frozen parameters (``requires_grad=False``, as under LoRA) are left out:
    the optimizer holds state only for what it trains.

    ``fused=True``: PyTorch's one-kernel AdamW, which reads and writes each weight and its two moments
    once per step, where the ``foreach`` version makes a dozen passes over them (one per operation of
    the update); the same arithmetic, about 5% of a small model's training step saved on a CPU.
    """
    decay, no_decay = [], []
    embedding = model.tok_embeddings.weight
    for p in model.parameters():  # a tied output matrix is the embedding, listed once
        if p.requires_grad:
            (decay if p.ndim == 2 and p is not embedding else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), fused=True)


def language_model_loss(model: Llama, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next-token predictions, in nats per token: :meth:`Llama.loss`."""
    return model.loss(inputs, targets)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[tuple[torch.Tensor, ...]],
    lr: float,
    grad_clip: float,
    loss_fn: Callable[..., torch.Tensor] = language_model_loss,
    precision: str | None = None,
    scaler: DynamicLossScaler | None = None,
) -> tuple[float, float]:
    """One optimizer step over ``micro_batches``; returns ``(mean loss, gradient norm before clipping)``.

    Gradient accumulation: each micro-batch's loss is divided by their number,
    so the summed gradients equal those of one big batch that would not fit in
    memory. Each micro-batch is a tuple of tensors, moved to the model's device and
    passed to ``loss_fn(model, *batch)``: ``(inputs, targets)`` for the language-model
    loss; fine-tuning objectives bring their own (:mod:`llama_from_scratch.finetuning`).

    ``precision`` is the forward pass's format (``None``: :func:`..systems.precision.default_precision`).
    With a ``scaler`` (float16) each loss is scaled before ``backward()``, the gradients are unscaled
    before clipping, and a step whose gradients hold inf or NaN is skipped (the returned norm shows it).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    device = next(model.parameters()).device
    context = autocast(device, precision)
    for batch in micro_batches:
        with context:
            loss = loss_fn(model, *(t.to(device) for t in batch)) / len(micro_batches)
        (loss if scaler is None else scaler.scale_loss(loss)).backward()
        total += loss.item()
    # the norm of what this step updates: a frozen weight may still hold a stale gradient from elsewhere
    # (a probe's backward, say), which zero_grad above does not clear and which must not shrink this step
    # (taken in the model's order: a norm summed in another order rounds differently)
    updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
    parameters = [p for p in model.parameters() if id(p) in updated]
    found_inf = scaler is not None and scaler.unscale_(parameters)
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    if not found_inf:
        optimizer.step()
    if scaler is not None:
        scaler.update(found_inf)
    return total, float(grad_norm)


@torch.no_grad()
def evaluate(model: Llama, data: TokenData, config: TrainConfig) -> dict[str, float]:
    """Loss (nats per token) and bits per byte on ``eval_batches`` fixed batches of ``data``.

    bits per byte = loss / ln 2 * tokens / bytes: the average number of bits
    the model needs to encode one byte of text, comparable across tokenizers.
    """
    model.eval()
    device = next(model.parameters()).device
    losses = []
    for i in range(config.eval_batches):
        inputs, targets = get_batch(data, i, config.batch_size, config.seq_len, config.seed, stream=EVAL)
        with autocast(device, config.precision):
            losses.append(language_model_loss(model, inputs.to(device), targets.to(device)).item())
    model.train()
    return _loss_and_bits_per_byte(sum(losses) / len(losses), data)


def _loss_and_bits_per_byte(loss: float, data: TokenData) -> dict[str, float]:
    return {"loss": loss, "bits_per_byte": loss / math.log(2) / data.bytes_per_token}


@torch.no_grad()
def evaluate_all(
    model: Llama, data: TokenData, seq_len: int, batch_size: int = 16, precision: str | None = None
) -> dict[str, float]:
    """Loss and bits per byte on *every* token of ``data``, each predicted once.

    :func:`evaluate` samples a few windows, to be quick during training; this
    reads the whole split (all four held-out plays) in consecutive windows of
    ``seq_len`` tokens, the last one shorter, and is the figure to quote for a
    finished model. Each window starts with an empty context, so its first
    tokens are hard to predict: the figure errs on the pessimistic side.
    ``precision`` as in :func:`train_step`.
    """
    model.eval()
    device = next(model.parameters()).device
    tokens = torch.from_numpy(np.asarray(data.tokens, dtype=np.int64))
    total, count = 0.0, 0
    for start in range(0, len(tokens) - 1, seq_len * batch_size):
        chunk = tokens[start : start + seq_len * batch_size + 1]
        n_full = (len(chunk) - 1) // seq_len
        cut = n_full * seq_len
        pieces = [(chunk[:cut].view(n_full, seq_len), chunk[1 : cut + 1].view(n_full, seq_len))] if n_full else []
        if len(chunk) - 1 > cut:  # the split's last, shorter window
            pieces.append((chunk[cut:-1].unsqueeze(0), chunk[cut + 1 :].unsqueeze(0)))
        for inputs, targets in pieces:
            with autocast(device, precision):
                total += language_model_loss(model, inputs.to(device), targets.to(device)).item() * inputs.numel()
            count += inputs.numel()
    model.train()
    return _loss_and_bits_per_byte(total / count, data)


class TrainingData(Protocol):
    """What the training loop reads, whatever it trains on (pretraining's windows, fine-tuning's batches).

    Every batch is a pure function of its index and the config's seed, so a resumed run reads exactly
    what the uninterrupted one would have, and ``world_size`` processes split one global batch between
    them without talking to each other (process ``rank`` takes its slice).
    """

    def batch(self, index: int, config: TrainConfig, rank: int, world_size: int) -> tuple[torch.Tensor, ...]:
        """Micro-batch ``index`` (step ``s`` reads ``s * grad_accum`` to ``(s + 1) * grad_accum - 1``) for
        process ``rank``: a tuple of tensors handed to :meth:`loss`, the first holding the token ids the model
        reads (``batch[0].numel()`` is what the throughput counts)."""

    def loss(self, model: Llama, *batch: torch.Tensor) -> torch.Tensor:
        """The loss to minimise on one micro-batch (a scalar tensor)."""

    def validate(self, model: Llama, config: TrainConfig) -> dict[str, float] | None:
        """Figures on held-out data (``loss`` first), logged as ``val_<name>``; ``None`` when nothing is held out."""


@dataclass
class TextWindows:
    """Pretraining's data: random windows of ``seq_len + 1`` tokens of ``train`` (:func:`.dataset.get_batch`),
    the language-model loss, and :func:`evaluate` on ``validation`` (none: no validation)."""

    train: TokenData
    validation: TokenData | None = None

    def batch(self, index: int, config: TrainConfig, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, ...]:
        return get_batch(self.train, index, config.batch_size, config.seq_len, config.seed, rank, world_size)

    def loss(self, model: Llama, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return language_model_loss(model, inputs, targets)

    def validate(self, model: Llama, config: TrainConfig) -> dict[str, float] | None:
        return None if self.validation is None else evaluate(model, self.validation, config)


def train(
    model: Llama,
    data: TrainingData,
    config: TrainConfig,
    folder: RunFolder | None = None,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
    peak_flops: float | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` on ``data`` for ``config.steps`` steps; return the history of logged values.

    With ``peak_flops`` (the FLOP/s one process's device can do, measured or from its data sheet) each
    step also logs ``mfu``, its model FLOPs utilisation (:mod:`..systems.flops`) over all processes.

    Every ``eval_every`` steps (and at the end) ``data.validate`` measures the model and
    ``on_eval(step, metrics)`` is called (to print a sample, say). Every ``checkpoint_every`` steps
    (and at the end) a checkpoint is written to ``folder`` (:class:`.checkpoint.RunFolder`: where,
    whether to resume or overwrite a run there, what a checkpoint holds); a resumed run computes exactly
    what the uninterrupted run would have. Without a folder nothing is written.

    Ctrl-C or SIGTERM stops the run after the current step, with a checkpoint
    (:class:`TrainingStopped`); a non-finite loss stops it with a ``ValueError``
    before anything of that step is saved.

    Launched on several processes (``torchrun``; :func:`.distributed.init_distributed` has joined the
    process group), each process trains on its slice of every global batch, through the gradient-
    averaging wrapper of :func:`.distributed.wrap_model`; only rank 0 evaluates and writes. A model sharded
    with :func:`.distributed.shard_model` (FSDP) needs no wrapper, every process evaluates (each forward
    pass gathers the weights from all of them), and every process writes its shards of each checkpoint
    (:mod:`.sharded_checkpoint`).
    """
    rank, world_size = process_group()
    is_main = rank == 0
    sharded = is_sharded(model)
    out_dir = folder.out_dir if folder is not None else None
    if folder is not None and is_main:
        prepare_run_dir(folder.out_dir, folder.resume, folder.overwrite)
    autocast(model.device, config.precision)  # a precision this device cannot run fails now, not at step 1
    if peak_flops is not None and not (is_finite_number(peak_flops) and peak_flops > 0):
        raise ValueError(f"peak_flops must be a positive, finite FLOP/s figure, got {peak_flops!r}")
    scaler = DynamicLossScaler() if config.precision == "fp16" else None
    model.activation_checkpointing = config.activation_checkpointing
    optimizer = configure_optimizer(model, config)
    history: list[dict[str, float]] = []
    start = 0
    if folder is not None and folder.resume:
        checkpoint = latest_checkpoint(folder.out_dir)
        if checkpoint is None:
            raise FileNotFoundError(f"resume=True but {folder.out_dir} holds no checkpoint to resume from")
        if sharded:
            start, history = load_sharded_checkpoint(checkpoint, model, optimizer, config, scaler)
        else:
            start, history = load_training_state(checkpoint, model, optimizer, config, folder.model_files, scaler)
    if world_size > 1 and not sharded:  # the wrapper averages the gradients of what runs inside its forward: the loss
        forward, loss_fn = wrap_model(model, model.device, data.loss), wrapped_loss
    else:
        forward, loss_fn = model, data.loss
    model.train()

    def save(step: int) -> None:
        if sharded and folder is not None:  # every process writes its shards
            save_sharded_checkpoint(
                folder.out_dir, model, optimizer, step, config, history, folder.extra_files, loss_scaler=scaler
            )
        elif is_main and folder is not None:
            save_training_checkpoint(
                folder.out_dir, model, optimizer, step, config, history, folder.extra_files,
                model_files=folder.model_files, loss_scaler=scaler,
            )

    quiet = not is_main or bool(os.environ.get("TQDM_DISABLE"))  # tqdm's notebook bar ignores TQDM_DISABLE
    with stop_requests() as stop_requested:  # before the progress bar: once it shows, Ctrl-C is handled
        progress = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="training", disable=quiet)
        clock = time.perf_counter()
        for step in progress:
            micro_batches = [
                data.batch(step * config.grad_accum + m, config, rank, world_size) for m in range(config.grad_accum)
            ]
            tokens_per_step = sum(batch[0].numel() for batch in micro_batches) * world_size
            lr = learning_rate(step, config)
            loss, grad_norm = train_step(
                forward, optimizer, micro_batches, lr, config.grad_clip, loss_fn, config.precision, scaler
            )
            if not math.isfinite(loss):
                kept = latest_checkpoint(out_dir) if out_dir is not None else None
                raise ValueError(
                    f"step {step}: the loss is {loss}: training stopped, nothing of this step was saved"
                    + (f" (the newest checkpoint, {kept}, is intact)" if kept else "")
                    + f"; try a lower learning rate than {config.lr}"
                )
            now = time.perf_counter()
            record = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm}
            if scaler is not None:
                record["loss_scale"] = scaler.scale
            record["tokens_per_s"] = tokens_per_step / (now - clock)
            if peak_flops is not None:
                per_token = training_flops_per_token(model.config, micro_batches[0][0].shape[-1])
                record["mfu"] = model_flops_utilization(record["tokens_per_s"], per_token, peak_flops * world_size)
            clock = now
            shown = {"mfu": f"{record['mfu']:.1%}"} if "mfu" in record else {}
            progress.set_postfix(loss=f"{loss:.3f}", tok_s=f"{record['tokens_per_s']:,.0f}", **shown)
            last = step == config.steps - 1
            if (is_main or sharded) and ((step + 1) % config.eval_every == 0 or last):
                metrics = data.validate(model, config)
                if metrics is not None:
                    record.update({f"val_{k}": v for k, v in metrics.items()})
                    if on_eval is not None and is_main:
                        on_eval(step + 1, metrics)
                    clock = time.perf_counter()  # evaluation time is not training throughput
            history.append(record)
            scheduled = (step + 1) % config.checkpoint_every == 0 or last
            if scheduled:
                save(step + 1)
                clock = time.perf_counter()
            if not last and any_rank(stop_requested(), world_size, model.device):
                if not scheduled:
                    save(step + 1)
                where = f"; checkpoint step-{step + 1:07d} in {out_dir}, continue with --resume" if out_dir else ""
                raise TrainingStopped(f"stopped after step {step + 1} of {config.steps}{where}")
    return history
