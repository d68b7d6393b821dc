"""Training a reward model on preference pairs: the Bradley-Terry loss through pretraining's loop.

Each pair is the token sequences (prompt and answer, rendered in the chat template) of a chosen and a
rejected answer to one prompt. A batch stacks the chosen rows above the rejected ones, so one forward
pass scores both (:class:`RewardData`), and the loss is :func:`~.losses.bradley_terry_loss` of the two
halves. The loop is :func:`~llama_from_scratch.training.train.train`'s: schedule, clipping, checkpoints
(:data:`REWARD_MODEL_FILES`: the whole reward model, head included), exact resumption.
What to watch is the held-out *pair accuracy*: how often the reward model ranks an unseen pair as the
annotator (here: the known rule) did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import is_finite_number
from ..finetuning.data import check_pair
from ..finetuning.dpo import tokenize_pairs
from ..finetuning.finetune import identified_run_folder
from ..finetuning.sft import IGNORE_INDEX, Example, sample_indices
from ..tokenization.tokenizer import Tokenizer
from ..training.checkpoint import ModelFiles
from ..training.train import TrainConfig, train
from .losses import bradley_terry_loss, pair_accuracy
from .reward_model import RewardModel, read_reward_model, right_pad, score_sequences, write_reward_model

Pair = tuple[Sequence[int], Sequence[int]]  # (chosen tokens, rejected tokens)
REWARD_MODEL_FILES = ModelFiles(write_reward_model, read_reward_model)  # what a reward model run's checkpoints hold


@dataclass
class RewardModelConfig(TrainConfig):
    """A reward model's training: :class:`TrainConfig`'s settings with full fine-tuning's defaults (``batch_size``:
    pairs per step; Llama 2 trained one epoch at 1e-5, more would over-fit) and the ranking loss's ``margin``."""

    steps: int = 200
    batch_size: int = 8
    seq_len: int = 512
    lr: float = 5e-5
    warmup_steps: int = 10
    weight_decay: float = 0.0
    eval_every: int = 50
    checkpoint_every: int = 50
    margin: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not is_finite_number(self.margin) or self.margin < 0:
            raise ValueError(f"RewardModelConfig.margin must be a number >= 0, got {self.margin!r}")


def preference_pairs(records: list[dict], tokenizer: Tokenizer, template: str, where: str = "preference pair") -> list[Pair]:
    """``{"messages", "chosen", "rejected"}`` records (DPO's layout) as the token sequences a reward model scores:
    each conversation with its answer, rendered in ``template``, up to the answer's end (:func:`answer_end`). A record without both answers, or with two equal
    ones, is a :class:`~llama_from_scratch.errors.FormatError` naming it (``where`` and its index)."""
    for i, record in enumerate(records):
        check_pair(record, f"{where} {i}")
    return [(answer_end(c), answer_end(r)) for c, r in tokenize_pairs(records, tokenizer, template)]


def answer_end(example: Example) -> list[int]:
    """The conversation's tokens up to the answer's last labelled one, its end-of-turn marker: where a sampled
    answer ends too (:func:`~.policy.sample_answers` keeps the stop token), so the reward model reads the same
    position in training as when it scores samples (the template's text after the marker is cut)."""
    last = max(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    return example.tokens[: last + 1]


def pair_batch(pairs: Sequence[Pair], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens, lengths)``: ``(2 * pairs, longest)`` right-padded, the chosen rows first; ``(2 * pairs,)``."""
    return right_pad([chosen for chosen, _ in pairs] + [rejected for _, rejected in pairs], pad_id)


def pair_scores(model: RewardModel, pairs: Sequence[Pair], batch_size: int = 8, pad_id: int = 0) -> torch.Tensor:
    """``(pairs, 2)``: the reward of each chosen and rejected answer (eval mode, float32 on the CPU)."""
    chosen = score_sequences(model, [c for c, _ in pairs], batch_size, pad_id)
    rejected = score_sequences(model, [r for _, r in pairs], batch_size, pad_id)
    return torch.stack([chosen, rejected], dim=1)


def reward_metrics(scores: torch.Tensor, margin: float = 0.0) -> dict[str, float]:
    """From ``(pairs, 2)`` scores: the Bradley-Terry ``loss``, the ``pair_accuracy``, and the mean score of the
    chosen and of the rejected answers (their distributions should separate)."""
    return {
        "loss": bradley_terry_loss(scores[:, 0], scores[:, 1], margin).item(),
        "pair_accuracy": pair_accuracy(scores[:, 0], scores[:, 1]),
        "chosen_reward": scores[:, 0].mean().item(),
        "rejected_reward": scores[:, 1].mean().item(),
    }


@dataclass
class RewardData:
    """A reward model's data as the training loop reads it (a :class:`~llama_from_scratch.training.train.TrainingData`):
    pairs drawn as a pure function of the step, the Bradley-Terry loss with ``margin``, and
    :func:`reward_metrics` on the held-out ``validation`` pairs."""

    train: list[Pair]
    validation: list[Pair]
    margin: float = 0.0
    pad_id: int = 0

    def batch(self, index: int, config: TrainConfig, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, ...]:
        rows = sample_indices(len(self.train), index, config.batch_size, config.seed, rank=rank, world_size=world_size)
        return pair_batch([self.train[i] for i in rows], self.pad_id)

    def loss(self, model: RewardModel, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        chosen, rejected = model(tokens, lengths).chunk(2)
        return bradley_terry_loss(chosen, rejected, self.margin)

    def validate(self, model: RewardModel, config: TrainConfig) -> dict[str, float]:
        return reward_metrics(pair_scores(model, self.validation, config.batch_size, self.pad_id), self.margin)


def train_reward_model(
    model: RewardModel,
    train_pairs: list[Pair],
    val_pairs: list[Pair],
    config: RewardModelConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    pad_id: int = 0,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
    extra_files: dict[str, Path] | None = None,
    base: str | None = None,
) -> list[dict[str, float]]:
    """Train every weight of ``model`` (head included) on the pairs; returns the history (``val_pair_accuracy``,
    ...). The run's folder works as fine-tuning's: whole reward models in its checkpoints, a resume refused
    unless the starting model (its new head included) and the training pairs are the run's own."""
    if not train_pairs or not val_pairs:
        raise ValueError("a reward model needs training and validation pairs; one of them is empty")
    longest = max(len(s) for pair in [*train_pairs, *val_pairs] for s in pair)
    if longest > min(config.seq_len, model.config.max_seq_len):
        raise ValueError(f"a pair holds {longest} tokens, more than seq_len={config.seq_len} or the model's context")
    folder = None
    if out_dir is not None:
        examples = [(Example(list(c), list(c)), Example(list(r), list(r))) for c, r in train_pairs]
        folder = identified_run_folder(model, examples, out_dir, resume, overwrite, extra_files, REWARD_MODEL_FILES, base)
    elif resume or overwrite:
        raise ValueError("resume and overwrite need out_dir, the run's folder")
    model.requires_grad_(True)
    return train(model, RewardData(train_pairs, val_pairs, config.margin, pad_id), config, folder, on_eval)
