"""Checkpoints of a sharded (FSDP) run: each process writes its own shards, with ``torch.distributed.checkpoint``.

Gathering a sharded model onto one process to write the usual single file would need the whole model
(and twice its size in optimizer moments) in one process's memory: what sharding avoids. PyTorch's
distributed checkpoint (DCP) instead has every process write the shards it holds, plus a small index
(``.metadata``) saying which piece of which tensor lies in which file. Loading reads, on every process,
just the pieces of its own shards, and works for another number of processes as well (DCP reshards).

A sharded checkpoint is a folder ``step-NNNNNNN`` of the run, like the single-file kind
(:mod:`.checkpoint`): ``sharded/`` (DCP's files: the model's and the optimizer's state), ``trainer_state.json``
(step, history, model config) and ``train_config.json``, written into a hidden folder and renamed into
place when complete, then named by ``latest``. :func:`convert_to_single_file` turns it into the usual
Hugging Face folder that ``load_checkpoint`` reads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..checkpoints.atomic import atomic_write
from ..checkpoints.load import LATEST
from ..config import LlamaConfig
from ..errors import FormatError
from ..files import read_json
from ..model import Llama
from ..systems.loss_scaling import DynamicLossScaler
from .checkpoint import (
    check_resume,
    check_trainer_fields,
    checkpoints_of,
    load_loss_scaler,
    trainer_state,
    write_full_model,
    write_run_files,
)

SHARDS = "sharded"
STATE = "trainer_state.json"


def save_sharded_checkpoint(
    run_dir: Path,
    model: Llama,
    optimizer: torch.optim.Optimizer,
    step: int,
    config,
    history: list[dict],
    extra_files: dict[str, Path] | None = None,
    keep: int = 2,
    loss_scaler: DynamicLossScaler | None = None,
) -> Path:
    """Every process writes its shards of checkpoint ``step-NNNNNNN`` into ``run_dir``; rank 0 the rest
    (and copies ``extra_files``, name -> file, the tokenizer say; and a float16 run's ``loss_scaler``, the
    same on every process). Called by all processes together; returns the checkpoint's folder."""
    run_dir = Path(run_dir)
    name = f"step-{step:07d}"
    staging, final = run_dir / f".{name}", run_dir / name
    if dist.get_rank() == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    dist.barrier()
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.save(state, checkpoint_id=staging / SHARDS)  # collective: returns once every process has written
    if dist.get_rank() == 0:
        (staging / STATE).write_text(json.dumps(trainer_state(model, step, history, loss_scaler)) + "\n")
        write_run_files(staging, config, extra_files)
        if final.exists():
            shutil.rmtree(final)
        staging.replace(final)
        with atomic_write(run_dir / LATEST) as pointer:
            pointer.write_text(name + "\n")
        for old in checkpoints_of(run_dir)[:-keep]:
            shutil.rmtree(old)
    dist.barrier()
    return final


def load_sharded_checkpoint(
    checkpoint: Path,
    model: Llama,
    optimizer: torch.optim.Optimizer,
    config,
    loss_scaler: DynamicLossScaler | None = None,
) -> tuple[int, list[dict]]:
    """Load a sharded checkpoint into the sharded ``model``, its ``optimizer`` (and a float16 run's
    ``loss_scaler``) on every process; return ``(step, history)``. ``ValueError`` for another model or
    settings that may not change on resume."""
    trainer = read_trainer_json(checkpoint / STATE)
    check_resume(checkpoint, trainer, model, config)
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=checkpoint / SHARDS)  # into these tensors: each process reads its shards
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    if loss_scaler is not None:
        load_loss_scaler(loss_scaler, trainer, checkpoint / STATE)
    return trainer["step"], trainer["history"]


def read_trainer_json(path: Path) -> dict:
    """``trainer_state.json`` read as an untrusted file: its fields' types checked."""
    trainer = read_json(path)
    check_trainer_fields(trainer, path)
    return trainer


def convert_to_single_file(checkpoint: Path, out_dir: Path) -> Path:
    """The model of a sharded checkpoint as a Hugging Face folder (``load_checkpoint`` reads it); one process,
    no process group. The whole model passes through this process's memory."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    trainer = read_trainer_json(checkpoint / STATE)
    whole = out_dir / "consolidated.pt"
    out_dir.mkdir(parents=True, exist_ok=True)
    dcp_to_torch_save(checkpoint / SHARDS, whole)
    weights = torch.load(whole, weights_only=True)["model"]
    whole.unlink()
    with torch.device("meta"):
        model = Llama(LlamaConfig(**trainer["model_config"]))
    try:
        model.load_state_dict(weights, assign=True)
    except RuntimeError as error:
        raise FormatError(f"{checkpoint / SHARDS}: not this model's weights ({str(error)[:200]})") from None
    write_full_model(model, out_dir)
    return out_dir
