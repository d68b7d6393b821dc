"""Position interpolation's fine-tune (Chen et al., 2023): teach a model a longer context in minutes.

A model trained on ``L`` tokens fails past ``L`` (its slow RoPE pairs meet angles it never saw). Linear
scaling by ``factor`` maps the positions ``0 .. factor * L`` back onto the angles of ``0 .. L``, so no angle
is new, but neighbouring tokens now sit ``1 / factor`` of a position apart, closer than the model ever saw
them: without training, quality drops. Chen et al. showed that a short fine-tune on long windows (1,000
steps for LLaMA 7B to 65B, a tiny fraction of pre-training) is enough for the model to adjust, and that
the scaled model then uses the longer context.

The recipe is the pre-training loop (:func:`..training.train.train`) unchanged, run on longer windows with
the new frequencies: the model's config gets the scaling and the longer context (:func:`extend_context`),
and nothing else changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from ..model import Llama
from ..rope_scaling import RopeScaling
from ..training.dataset import TokenData
from ..training.checkpoint import RunFolder
from ..training.train import TextWindows, TrainConfig, train


def extend_context(model: Llama, max_seq_len: int, scaling: RopeScaling | None) -> Llama:
    """Let ``model`` read ``max_seq_len`` tokens with RoPE scaled by ``scaling`` (``None``: plain RoPE).

    Only the config changes (``max_seq_len``, ``rope_scaling``, validated as any config is); the weights
    are the same tensors, since RoPE has no weights: the model computes cos and sin from the config at
    every forward pass. Returns ``model`` itself, changed in place.
    """
    model.config = dataclasses.replace(model.config, max_seq_len=max_seq_len, rope_scaling=scaling)
    return model


def finetune_long_context(
    model: Llama,
    train_data: TokenData,
    val_data: TokenData | None,
    scaling: RopeScaling | None,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
    extra_files: dict[str, Path] | None = None,
) -> list[dict[str, float]]:
    """Fine-tune ``model`` on windows of ``config.seq_len`` tokens with RoPE scaled by ``scaling``.

    With ``RopeScaling("linear", factor=f)`` and ``config.seq_len = f * L`` this is position
    interpolation. The model's context becomes at least ``config.seq_len`` (:func:`extend_context`),
    then :func:`..training.train.train` runs with ``config`` (its learning rate, schedule and step count:
    a fine-tune wants fewer steps and a lower rate than pre-training), evaluating on ``val_data`` and
    writing checkpoints to ``out_dir`` as pre-training does; a checkpoint's config holds the scaling,
    so it loads ready for the longer context. Returns the training history.
    """
    extend_context(model, max(model.config.max_seq_len, config.seq_len), scaling)
    folder = RunFolder(out_dir, extra_files=extra_files or {}) if out_dir is not None else None
    return train(model, TextWindows(train_data, val_data), config, folder, on_eval)
