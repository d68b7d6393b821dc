"""Training checkpoints that a crash cannot corrupt, and exact resumption from them.

A run's folder holds one sub-folder per checkpoint (``step-0000500``, ...) and
a small file ``latest`` naming the newest *complete* one. A checkpoint is
written into a hidden temporary folder first and renamed into place only when
every file is there; then ``latest`` is replaced (a rename, which the
operating system performs atomically). A process killed at any moment
therefore leaves ``latest`` pointing at a checkpoint that loads.

Each checkpoint holds

* the model as a Hugging Face directory (``config.json`` + ``model.safetensors``),
  which ``load_checkpoint`` and ``transformers`` both read (a LoRA fine-tune keeps
  only its adapters: :class:`ModelFiles` says which);
* ``trainer_state.pt``: the step, the optimizer's moments and the history;
* ``train_config.json``: the hyper-parameters;
* any extra files passed in (the tokenizer, for example).

:class:`RunFolder` names a run's folder and what its checkpoints hold.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..checkpoints.atomic import atomic_write
from ..checkpoints.hf import write_hf
from ..checkpoints.load import LATEST, latest_checkpoint, load_checkpoint
from ..checkpoints.tensors import model_tensors
from ..errors import FormatError
from ..files import REQUIRED, check_type, json_field, read_bytes, read_json
from ..model import Llama
from ..systems.loss_scaling import DynamicLossScaler

# A resumed run may change only these settings (how often it reports and saves, and how long it runs);
# any other change would make it a different run, so resuming refuses it. A changed ``steps`` stretches
# or shortens the learning-rate schedule from the resume point on.
# activation checkpointing recomputes the same numbers: the gradients are bit-identical with or without it
MAY_CHANGE_ON_RESUME = ("steps", "eval_every", "eval_batches", "checkpoint_every", "activation_checkpointing")
_STEP = re.compile(r"step-(\d+)")


def step_of(checkpoint: Path) -> int | None:
    """The step number of a checkpoint folder ``step-0000500``; None for any other name."""
    match = _STEP.fullmatch(checkpoint.name)
    return int(match.group(1)) if match else None


def checkpoints_of(run_dir: Path) -> list[Path]:
    """A run's checkpoint folders, oldest first (by step number, not by name)."""
    found = [p for p in Path(run_dir).glob("step-*") if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=step_of)


def remove_stale_staging(run_dir: Path) -> list[Path]:
    """Remove half-written checkpoints that a killed process left behind (``.step-*``, ``.latest.*``).

    :func:`save_training_checkpoint` writes into such a hidden folder and renames it when complete, so
    one that still exists when a run starts belongs to a process that died mid-write.
    """
    stale = [p for pattern in (".step-*", f".{LATEST}.*") for p in Path(run_dir).glob(pattern)]
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return stale


def _disk_full(error: BaseException) -> bool:
    return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left on device" in str(error)


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    """What a checkpoint holds of the model: ``write(model, folder)`` puts it there, ``read(model, checkpoint)``
    loads it back into ``model``. Pretraining saves every weight (:data:`FULL_MODEL`); a LoRA fine-tune only
    its adapters (:mod:`llama_from_scratch.finetuning`), since the base model is on disk already."""

    write: Callable[[Llama, Path], None]
    read: Callable[[Llama, Path], None]


def write_full_model(model: Llama, folder: Path) -> None:
    """The whole model as a Hugging Face directory (``config.json`` + ``model.safetensors``), float32."""
    write_hf(model.config, model_tensors(model, torch.float32), folder, torch.float32)


def read_full_model(model: Llama, checkpoint: Path) -> None:
    """Copy the weights of a checkpoint written by :func:`write_full_model` into ``model``'s own tensors."""
    saved = load_checkpoint(checkpoint, device=model.device, dtype=model.tok_embeddings.weight.dtype)
    model.load_state_dict(saved.state_dict())  # buffers included


FULL_MODEL = ModelFiles(write_full_model, read_full_model)


@dataclasses.dataclass
class RunFolder:
    """Where a training run keeps its checkpoints, and what they hold.

    ``out_dir`` is the run's folder. A folder that already holds checkpoints is refused unless ``resume``
    (continue from the newest) or ``overwrite`` (delete them, start over) says what to do with it.
    ``extra_files`` (name in the checkpoint -> file) are copied into every checkpoint, the tokenizer say,
    so that a checkpoint is usable alone; ``model_files`` says what a checkpoint holds of the model.
    """

    out_dir: Path
    resume: bool = False
    overwrite: bool = False
    extra_files: dict[str, Path] = dataclasses.field(default_factory=dict)
    model_files: ModelFiles = FULL_MODEL

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.extra_files = {name: Path(path) for name, path in (self.extra_files or {}).items()}
        if self.resume and self.overwrite:
            raise ValueError(f"RunFolder({self.out_dir}): resume and overwrite exclude each other; choose one")


def save_training_checkpoint(
    run_dir: Path,
    model: Llama,
    optimizer: torch.optim.Optimizer,
    step: int,
    config,
    history: list[dict],
    extra_files: dict[str, Path] | None = None,
    keep: int = 2,
    model_files: ModelFiles = FULL_MODEL,
    loss_scaler: DynamicLossScaler | None = None,
) -> Path:
    """Write checkpoint ``step-NNNNNNN`` into ``run_dir``, point ``latest`` at it, keep the newest ``keep``.

    A float16 run's ``loss_scaler`` is saved with the optimizer: its scale is part of where the run stands.

    A full disk raises ``OSError`` ("no space left") and leaves the previous checkpoint and ``latest``
    as they were.
    """
    run_dir = Path(run_dir)
    name = f"step-{step:07d}"
    final = run_dir / name
    state = {**trainer_state(model, step, history, loss_scaler), "optimizer": optimizer.state_dict()}
    try:
        with atomic_write(final, directory=True) as staging:
            model_files.write(model, staging)
            buffer = io.BytesIO()  # torch.save reports a failed write without its cause; Python's write names it
            torch.save(state, buffer)
            (staging / "trainer_state.pt").write_bytes(buffer.getbuffer())
            write_run_files(staging, config, extra_files)
        with atomic_write(run_dir / LATEST) as pointer:
            pointer.write_text(name + "\n")
    except Exception as error:
        if _disk_full(error):
            kept = latest_checkpoint(run_dir)
            raise OSError(
                errno.ENOSPC,
                f"{run_dir}: no space left on device while writing {name}; "
                f"the previous checkpoint ({kept.name if kept else 'none'}) is kept",
            ) from None
        raise
    for old in checkpoints_of(run_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def load_training_state(
    checkpoint: Path,
    model: Llama,
    optimizer: torch.optim.Optimizer,
    config,
    model_files: ModelFiles = FULL_MODEL,
    loss_scaler: DynamicLossScaler | None = None,
) -> tuple[int, list[dict]]:
    """Load weights and optimizer state from ``checkpoint`` into ``model`` / ``optimizer`` (and a float16
    run's ``loss_scaler``); return (step, history).

    Raises ``ValueError`` if the checkpoint belongs to a different model, or if ``config`` changes a
    setting other than :data:`MAY_CHANGE_ON_RESUME` (then the resumed run would not continue the
    original one), naming each difference.
    """
    state = read_trainer_state(checkpoint / "trainer_state.pt", model)
    check_resume(checkpoint, state, model, config)
    model_files.read(model, checkpoint)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
        raise FormatError(f"{checkpoint / 'trainer_state.pt'}: optimizer: not this run's optimizer state ({error})") from None
    if loss_scaler is not None:
        load_loss_scaler(loss_scaler, state, checkpoint / "trainer_state.pt")
    return state["step"], state["history"]


def trainer_state(model: Llama, step: int, history: list[dict], loss_scaler: DynamicLossScaler | None) -> dict:
    """Where a run stands, beside its weights and optimizer state, single-file or sharded: ``step``, ``history``,
    ``model_config`` (all of it: ``config.json`` keeps only the shapes) and a float16 run's ``loss_scaler``
    (its scale is part of where the run stands)."""
    state = {"step": step, "history": history, "model_config": dataclasses.asdict(model.config)}
    if loss_scaler is not None:
        state["loss_scaler"] = loss_scaler.state_dict()
    return state


def write_run_files(folder: Path, config, extra_files: dict[str, Path] | None) -> None:
    """Into a checkpoint's ``folder``: the run's settings, ``train_config.json`` (compared on resume), and
    ``extra_files`` (name -> file: the tokenizer, say)."""
    (folder / "train_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    for target, source in (extra_files or {}).items():
        shutil.copyfile(source, folder / target)


def check_resume(checkpoint: Path, state: dict, model: Llama, config) -> None:
    """Whether the run saved in ``checkpoint`` (its trainer ``state``, see :func:`trainer_state`) may go on as
    ``model`` trained with ``config``: ``ValueError`` for another model, a setting changed other than
    :data:`MAY_CHANGE_ON_RESUME` (the resumed run would not continue the original one), each difference named,
    or no steps left."""
    saved_model = state["model_config"]
    if saved_model != dataclasses.asdict(model.config):
        raise ValueError(f"{checkpoint}: checkpoint of a different model: {_differences(saved_model, model.config)}")
    changed = _differences(read_json(checkpoint / "train_config.json"), config, skip=MAY_CHANGE_ON_RESUME)
    if changed:
        raise ValueError(
            f"{checkpoint}: cannot resume with other settings ({changed}); only "
            f"{', '.join(MAY_CHANGE_ON_RESUME)} may change. Start a new run instead (another --out, or --overwrite)"
        )
    if state["step"] >= config.steps:
        raise ValueError(f"{checkpoint}: the run already reached step {state['step']}; ask for more --steps")


def load_loss_scaler(loss_scaler: DynamicLossScaler, state: dict, path: Path) -> None:
    """A float16 run's scale from its trainer ``state`` (read from ``path``) into ``loss_scaler``; a
    :class:`FormatError` naming ``path`` when it is missing or not a loss scaler's."""
    scaler_state = json_field(state, "loss_scaler", "dict", path, REQUIRED)
    try:
        loss_scaler.load_state_dict(scaler_state)
    except (KeyError, TypeError, ValueError) as error:
        raise FormatError(f"{path}: loss_scaler: {error!r}") from None


def read_trainer_state(path: Path, model: Llama) -> dict:
    """``trainer_state.pt`` read as an untrusted file: a regular file no larger than the optimizer state a
    model of this size can have (AdamW keeps two numbers per parameter, so three times the model's bytes
    and a megabyte for the rest), unpickled with ``weights_only`` (tensors and plain containers only, no code),
    and its fields' types checked."""
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    data = read_bytes(path, 3 * weights + (1 << 20))
    try:
        state = torch.load(io.BytesIO(data), map_location=model.device, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch.load raises anything from EOFError to UnpicklingError
        raise FormatError(f"{path}: not a readable trainer state ({type(error).__name__}: {str(error)[:200]})") from None
    check_type(state, "dict", str(path))
    check_trainer_fields(state, path)
    json_field(state, "optimizer", "dict", path, REQUIRED)
    return state


def check_trainer_fields(state: dict, path: Path) -> None:
    """The fields every trainer state has, single-file or sharded: ``step`` (an int >= 0), ``history`` (a list
    of dicts) and ``model_config`` (a dict); a :class:`FormatError` naming ``path`` and the field if not."""
    step = json_field(state, "step", "int", path, REQUIRED)
    if step < 0:
        raise FormatError(f"{path}: step must be >= 0, got {step}")
    json_field(state, "history", "list", path, REQUIRED, items="dict")
    json_field(state, "model_config", "dict", path, REQUIRED)


def _differences(saved: dict, current, skip: tuple[str, ...] = ()) -> str:
    """``"lr: 0.001 -> 0.002; seed: 1 -> 2"``: the fields of a dataclass that differ from their saved values."""
    now = dataclasses.asdict(current)
    return "; ".join(
        f"{key}: {saved.get(key)!r} -> {now.get(key)!r}"
        for key in sorted(set(saved) | set(now))
        if key not in skip and saved.get(key) != now.get(key)
    )


def prepare_run_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Check, before any training, that checkpoints can be written to ``out_dir`` and what it holds.

    A folder that already holds a run is continued (``resume``) or replaced (``overwrite``), never mixed
    with a new run; half-written checkpoints of a killed process are removed.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: --out names a file; checkpoints need a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=out_dir):
        pass  # a read-only folder fails here, not after the training
    remove_stale_staging(out_dir)
    existing = checkpoints_of(out_dir)
    if existing and not resume:
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} already holds a run (up to {existing[-1].name}): continue it with --resume, "
                "or replace it with --overwrite"
            )
        for checkpoint in existing:
            shutil.rmtree(checkpoint)
        (out_dir / LATEST).unlink(missing_ok=True)
