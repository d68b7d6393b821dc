"""Training checkpoints that a crash cannot corrupt, and exact resumption from them.

A run's folder holds one sub-folder per checkpoint (``step-0000500``, ...) and
a small file ``latest`` naming the newest *complete* one. A checkpoint is
written into a hidden temporary folder first and renamed into place only when
every file is there; then ``latest`` is replaced (a rename, which the
operating system performs atomically). A process killed at any moment
therefore leaves ``latest`` pointing at a checkpoint that loads.

Each checkpoint holds

* the model as a Hugging Face directory (``config.json`` + ``model.safetensors``),
  which ``load_checkpoint`` and ``transformers`` both read;
* ``trainer_state.pt``: the step, the optimizer's moments and the history;
* ``train_config.json``: the hyper-parameters;
* any extra files passed in (the tokenizer, for example).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch

from ..checkpoints.atomic import atomic_write
from ..checkpoints.hf import write_hf
from ..checkpoints.load import LATEST, load_checkpoint
from ..checkpoints.save import model_tensors
from ..model import Llama

# What must match for a resumed run to draw the same batches as the original one.
SAME_DATA = ("batch_size", "grad_accum", "seq_len", "seed")


def save_training_checkpoint(
    run_dir: Path,
    model: Llama,
    optimizer: torch.optim.Optimizer,
    step: int,
    config,
    history: list[dict],
    extra_files: dict[str, Path] | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step-NNNNNNN`` into ``run_dir``, point ``latest`` at it, keep the newest ``keep``."""
    run_dir = Path(run_dir)
    name = f"step-{step:07d}"
    final = run_dir / name
    with atomic_write(final, directory=True) as staging:
        write_hf(model.config, model_tensors(model, torch.float32), staging, torch.float32)
        torch.save(
            {"step": step, "optimizer": optimizer.state_dict(), "history": history}, staging / "trainer_state.pt"
        )
        (staging / "train_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
        for target, source in (extra_files or {}).items():
            shutil.copyfile(source, staging / target)
    with atomic_write(run_dir / LATEST) as pointer:
        pointer.write_text(name + "\n")
    for old in sorted(run_dir.glob("step-*"))[:-keep]:
        shutil.rmtree(old)
    return final


def load_training_state(
    checkpoint: Path, model: Llama, optimizer: torch.optim.Optimizer, config
) -> tuple[int, list[dict]]:
    """Load weights and optimizer state from ``checkpoint`` into ``model`` / ``optimizer``; return (step, history).

    Raises ``ValueError`` if the checkpoint belongs to a different model or
    was trained with different batches (then resuming could not be exact).
    """
    saved = load_checkpoint(checkpoint, device=model.device, dtype=model.tok_embeddings.weight.dtype)
    if saved.config != model.config:
        raise ValueError(f"{checkpoint}: checkpoint of a different model: {saved.config} != {model.config}")
    saved_config = json.loads((checkpoint / "train_config.json").read_text())
    changed = [
        f"{k}: {saved_config.get(k)} -> {getattr(config, k)}"
        for k in SAME_DATA
        if saved_config.get(k) != getattr(config, k)
    ]
    if changed:
        raise ValueError(f"{checkpoint}: cannot resume exactly with different batches ({'; '.join(changed)})")
    model.load_state_dict(saved.state_dict())  # copies into the model's own tensors, buffers included
    state = torch.load(checkpoint / "trainer_state.pt", map_location=model.device, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    return state["step"], state["history"]
