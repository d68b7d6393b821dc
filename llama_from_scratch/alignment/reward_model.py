"""The reward model: a Llama whose next-token head gives way to one number, "how good is this answer".

Llama 2 trained two of them (helpfulness and safety), each "initialized from pretrained chat model
checkpoints", with "the classification head for next-token prediction replaced with a regression head for
outputting a scalar reward". Here that is :class:`RewardModel`: the model's own
:meth:`~llama_from_scratch.model.Llama.hidden_states`, then a ``(1, dim)`` linear head ``score`` (Hugging
Face's ``LlamaForSequenceClassification`` name) read at the *last real token* of each sequence, the one
position that has attended to the whole prompt and answer::

    tokens (batch, seq) -> hidden_states (batch, seq, dim) -> hidden[b, lengths[b] - 1] (batch, dim) -> score (batch,)

Sequences are padded on the right: causal attention means no real token ever sees the padding after it,
so a sequence scores the same whatever it is batched with (and needs no attention mask).

A reward model is a :class:`Llama` (the next-token head stays, unused, which for a tied model such as
SmolLM2 costs nothing: it is the embedding): the training loop, LoRA and checkpoints treat it as any model.
On disk it is a Hugging Face directory whose ``config.json`` says ``LlamaForSequenceClassification`` and
whose weights hold ``score.weight``; :func:`load_reward_model` refuses a language model, and
:func:`~llama_from_scratch.checkpoints.load.load_checkpoint` refuses a reward model, each in one line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..checkpoints.atomic import atomic_write
from ..checkpoints.hf import config_to_hf, hf_tensor_shapes, meta_to_hf_state_dict, read_hf_config, read_hf_tensors
from ..checkpoints.load import HF_FIELDS, Pretrained, latest_checkpoint, load_pretrained
from ..checkpoints.names import REWARD_HEAD, check_config_fits
from ..checkpoints.tensors import assemble, model_tensors
from ..config import LlamaConfig
from ..errors import FormatError
from ..files import read_json
from ..finetuning.finetune import apply_adapters
from ..finetuning.lora import lora_layers
from ..model import Llama
from .losses import LLAMA2_SAFETY_THRESHOLD, llama2_reward
from .policy import Reward

ARCHITECTURE = "LlamaForSequenceClassification"  # config.json's name for a Llama with a scalar head


class RewardModel(Llama):
    """A :class:`Llama` scoring whole sequences: ``(batch, seq)`` tokens and their lengths -> ``(batch,)`` rewards."""

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.score = nn.Linear(config.dim, 1, bias=False)
        # hidden states leave the final RMSNorm with entries of about 1: weights of std 1/sqrt(dim) start
        # the rewards at about unit size, where the Bradley-Terry loss has a useful gradient
        nn.init.normal_(self.score.weight, std=config.dim**-0.5)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """The reward of each sequence: ``tokens`` ``(batch, seq)``, right-padded; ``lengths`` ``(batch,)``, the
        number of real tokens of each (at least 1). Returns ``(batch,)`` in float32 or wider."""
        lengths = torch.as_tensor(lengths, device=tokens.device)
        if lengths.shape != tokens.shape[:1] or int(lengths.min()) < 1 or int(lengths.max()) > tokens.shape[1]:
            raise ValueError(
                f"lengths must hold one count in [1, {tokens.shape[1]}] per sequence ({tokens.shape[0]}), "
                f"got {lengths.tolist()}"
            )
        hidden = self.hidden_states(tokens)  # (batch, seq, dim)
        last = hidden[torch.arange(tokens.shape[0], device=tokens.device), lengths - 1]  # (batch, dim)
        rewards = self.score(last).squeeze(-1)  # (batch,)
        return rewards.to(torch.promote_types(rewards.dtype, torch.float32))

    @classmethod
    def from_language_model(cls, model: Llama, seed: int = 0) -> RewardModel:
        """A reward model made of ``model``'s weights (taken over, not copied: ``model`` should not be used after)
        and a new random ``score`` head (seeded). ``model`` must have no LoRA adapters: merge them first."""
        if isinstance(model, RewardModel):
            raise TypeError("this is a reward model already; from_language_model takes a language model")
        if lora_layers(model):
            raise ValueError("the language model has LoRA adapters: merge_lora() them first")
        with torch.device("meta"):
            reward_model = cls(model.config)
        weight = model.tok_embeddings.weight
        head = torch.empty(1, model.config.dim, dtype=weight.dtype, device=weight.device)
        head.normal_(0.0, model.config.dim**-0.5, generator=torch.Generator(weight.device).manual_seed(seed))
        reward_model.load_state_dict({**model.state_dict(), REWARD_HEAD: head}, assign=True, strict=True)
        if model.config.tie_embeddings:
            reward_model.tie_weights()  # assign=True replaced both parameters; make them one again
        return reward_model.train(model.training)


def reward_model_from_checkpoint(
    path: str | Path, adapters: list[Path] | None = None, seed: int = 0, device=None, dtype=None
) -> Pretrained:
    """Llama 2's starting point: a (chat) checkpoint, any format :func:`load_pretrained` reads, with its LoRA
    ``adapters`` merged in (:func:`~llama_from_scratch.finetuning.finetune.apply_adapters`), turned into a
    reward model (:meth:`RewardModel.from_language_model`); with its tokenizer and chat template."""
    pretrained = load_pretrained(path, device, dtype)
    apply_adapters(pretrained, adapters)
    return Pretrained(RewardModel.from_language_model(pretrained.model, seed), pretrained.tokenizer, pretrained.chat_template)


def write_reward_model(model: RewardModel, folder: Path) -> None:
    """Write ``model`` into the existing ``folder`` as a Hugging Face ``LlamaForSequenceClassification`` directory:
    ``config.json`` and ``model.safetensors`` with the backbone, the head as ``score.weight``, float32 (what a
    reward model run's checkpoints hold, :data:`~.reward_training.REWARD_MODEL_FILES`)."""
    if not isinstance(model, RewardModel):
        raise TypeError(f"a reward model's files hold a RewardModel, got {type(model).__name__}")
    if lora_layers(model):
        raise ValueError("this reward model has LoRA adapters: merge_lora() them first (a reward model is saved whole)")
    config = {**config_to_hf(model.config), "architectures": [ARCHITECTURE], "num_labels": 1, "torch_dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    weights = meta_to_hf_state_dict(model_tensors(model, torch.float32), model.config)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def save_reward_model(model: RewardModel, folder: str | Path) -> None:
    """:func:`write_reward_model` into ``folder``, created or replaced whole (never left half-written)."""
    with atomic_write(folder, directory=True) as staging:
        write_reward_model(model, staging)


def _reward_model_folder(path: str | Path) -> Path:
    """``path`` itself, or a training run's newest checkpoint; refused unless its config.json says reward model."""
    path = Path(path)
    if path.is_dir() and latest_checkpoint(path) is not None:
        path = latest_checkpoint(path)
    config = path / "config.json"
    if not config.is_file():
        raise FormatError(f"{path}: no config.json: not a reward model's Hugging Face directory")
    architectures = read_json(config).get("architectures")
    if architectures != [ARCHITECTURE]:
        raise FormatError(
            f"{config}: a language model ({architectures}), not a reward model ({ARCHITECTURE}): "
            "make one from it with RewardModel.from_language_model or reward_model_from_checkpoint"
        )
    return path


def load_reward_model(path: str | Path, device=None, dtype=None) -> RewardModel:
    """The reward model saved in ``path`` (:func:`save_reward_model`, or a training run's folder); a language
    model or a reward model without its head is a :class:`FormatError`."""
    path = _reward_model_folder(path)
    config = read_hf_config(path)
    check_config_fits(config, hf_tensor_shapes(path), path / "config.json", HF_FIELDS)
    with torch.device("meta"):
        model = RewardModel(config)
    return assemble(config, read_hf_tensors(path, config), device, dtype, None, f"loading {path.name}", model, str(path))


def read_reward_model(model: RewardModel, checkpoint: Path) -> None:
    """Copy a saved reward model's weights into ``model``'s own tensors (a training run's resume)."""
    saved = load_reward_model(checkpoint, device=model.device, dtype=model.tok_embeddings.weight.dtype)
    model.load_state_dict(saved.state_dict())


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens, lengths)``: the sequences as one ``(batch, longest)`` tensor padded on the right, and ``(batch,)``
    their lengths (where :meth:`RewardModel.forward` reads each reward)."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError(f"need at least one sequence and no empty one, got lengths {[len(s) for s in sequences]}")
    lengths = torch.tensor([len(s) for s in sequences])
    tokens = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        tokens[row, : len(sequence)] = torch.as_tensor(list(sequence), dtype=torch.long)
    return tokens, lengths


@torch.no_grad()
def score_sequences(
    model: RewardModel, sequences: Sequence[Sequence[int]], batch_size: int = 8, pad_id: int = 0
) -> torch.Tensor:
    """``(n,)`` rewards of token sequences (prompt and answer, rendered in the chat template), in eval mode,
    float32 on the CPU."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(sequences), batch_size):
        tokens, lengths = right_pad(sequences[start : start + batch_size], pad_id)
        out.append(model(tokens.to(model.device), lengths.to(model.device)).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def reward_model_reward(model: RewardModel, prompts: Sequence[Sequence[int]], batch_size: int = 8, pad_id: int = 0) -> Reward:
    """A learned reward as a :data:`~.policy.Reward`: ``σ(r(prompt, answer))``, the reward model's score through
    a sigmoid, in (0, 1) as Llama 2's combined reward and its 0.15 threshold expect (the order is the score's)."""

    def reward(indices: list[int], answers: list[list[int]]) -> list[float]:
        sequences = [list(prompts[i]) + list(a) for i, a in zip(indices, answers)]
        return torch.sigmoid(score_sequences(model, sequences, batch_size, pad_id)).tolist()

    return reward


def combined_reward(
    helpful: Reward, safety: Reward, is_safety_prompt: Sequence[bool], threshold: float = LLAMA2_SAFETY_THRESHOLD
) -> Reward:
    """Llama 2's two reward models as one :data:`~.policy.Reward`: :func:`~.losses.llama2_reward` of their scores
    (each in (0, 1), as :func:`reward_model_reward` gives them), ``is_safety_prompt[i]`` marking prompt ``i``."""

    def reward(indices: list[int], answers: list[list[int]]) -> list[float]:
        h = torch.tensor([float(x) for x in helpful(indices, answers)], dtype=torch.float64)
        s = torch.tensor([float(x) for x in safety(indices, answers)], dtype=torch.float64)
        return llama2_reward(h, s, torch.tensor([bool(is_safety_prompt[i]) for i in indices]), threshold).tolist()

    return reward
