"""On-policy RL through pretraining's loop: GRPO with a group baseline, or PPO with Llama 2's KL-penalised reward.

Each step samples answers from the policy as it is *now* and learns from them once (GRPO's μ = 1, as TRL's
default): the ratio ``π/π_old`` is therefore 1 at the update and the clip never binds (it starts to matter
when the same samples are reused), and ``π_old`` needs no forward pass of its own (:func:`~.policy.policy_loss`).
A step's work: sampling (each prompt prefilled once for its group), the reference's forward pass, and the
loss's forward and backward, each prompt run once for its group (:func:`~.policy.answer_logprobs`). What the two algorithms do with the rewards:

* ``grpo`` (Shao et al. 2024): ``G`` answers per question, advantages from the group's rewards
  (:func:`~.losses.group_advantages`), and ``β`` times the k3 KL estimate in the loss (:func:`~.policy.policy_loss`);
* ``ppo`` (Llama 2's reward, without a learned value function): each answer's advantage is
  ``whiten(logit(R)) - β·KL`` over the batch (:func:`~.losses.ppo_reward`; the whitening's batch mean is the
  baseline), the rewards ``R`` in (0, 1).

The batches are a pure function of the step *and of the weights* (the sampling seed comes from the step), so a
run resumed from a checkpoint, whose weights and optimizer state are restored, samples and computes exactly
what the uninterrupted run did: :func:`~llama_from_scratch.training.train.train` gives Ctrl-C saving,
``--resume`` and the refusal of changed settings for free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import is_finite_number, is_int
from ..finetuning.finetune import ADAPTER_ONLY, identified_run_folder
from ..finetuning.lora import add_lora
from ..finetuning.sft import IGNORE_INDEX, Example, sample_indices
from ..model import Llama
from ..training.train import TrainConfig, train
from .losses import LLAMA2_KL_BETA, PPO_CLIP, group_advantages, ppo_reward, sequence_kl
from .policy import Reward, grouped_batch, policy_loss, reference_logprobs, sample_answers, sampling_logprobs

ALGORITHMS = ("grpo", "ppo")
DEFAULT_BETA = {"grpo": 0.04, "ppo": LLAMA2_KL_BETA}  # GRPO paper's β; Llama 2's for 7B and 13B
RL_STREAM = 2  # sample_indices' stream for RL's prompts (pretraining's windows and fine-tuning's batches use 0)


@dataclass
class RLConfig(TrainConfig):
    """An RL run: :class:`TrainConfig`'s settings (``batch_size``: questions per step) and the sampling and loss.

    ``group_size`` answers per question (``G``), at most ``max_new_tokens`` each, at ``temperature``;
    ``clip``: PPO's ε; ``beta``: the KL weight (default per algorithm, :data:`DEFAULT_BETA`); ``scale_advantages``:
    GRPO's division by the group's standard deviation; ``rank``, ``alpha``: the LoRA adapters that are trained
    (on every linear layer of every block); ``reward_model``: where a learned reward came from (None: the task's
    true rule), kept with the settings so that a resume with another reward is refused. ``lr`` defaults to 1e-4 for the LoRA adapters:
    RL's gradients are noisy. ``weight_decay`` is 0: it would move the policy even when nothing is learned.
    """

    steps: int = 100
    batch_size: int = 4
    seq_len: int = 512
    lr: float = 1e-4
    warmup_steps: int = 5
    weight_decay: float = 0.0
    eval_every: int = 20
    checkpoint_every: int = 20
    algorithm: str = "grpo"
    group_size: int = 8
    max_new_tokens: int = 64
    temperature: float = 1.0
    clip: float = PPO_CLIP
    beta: float | None = None
    scale_advantages: bool = True
    rank: int = 8
    alpha: float = 16.0
    reward_model: str | None = None

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"RLConfig.algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.beta is None:
            self.beta = DEFAULT_BETA[self.algorithm]
        super().__post_init__()
        if not is_int(self.group_size) or self.group_size < 2:
            raise ValueError(f"RLConfig.group_size must be an int of at least 2, got {self.group_size!r}")
        if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"RLConfig.max_new_tokens must be an int of at least 1, got {self.max_new_tokens!r}")
        for name in ("temperature", "clip", "beta"):
            value = getattr(self, name)
            if not is_finite_number(value) or value < 0 or (name != "beta" and value == 0):
                raise ValueError(f"RLConfig.{name} must be a finite number > 0 (beta: >= 0), got {value!r}")


def sampling_seed(config: TrainConfig, index: int) -> int:
    """The seed of micro-batch ``index``'s sampling: a pure function of the run's seed and the index."""
    return int(np.random.default_rng([config.seed, RL_STREAM, index]).integers(2**62))


@torch.no_grad()
def heldout_rewards(
    model: Llama,
    prompts: Sequence[Sequence[int]],
    rewards: dict[str, Reward],
    max_new_tokens: int,
    stop_tokens: Sequence[int] = (),
    pad_id: int = 0,
    batch_size: int = 64,
    kl_answers: int = 64,
) -> dict[str, float]:
    """The mean of each of ``rewards`` (name -> :data:`~.policy.Reward`) over the policy's greedy answers to the
    held-out ``prompts`` (with a verifiable reward: the held-out accuracy; with the learned reward beside the true
    one: over-optimisation, the first rising while the second falls), and their mean KL to the reference
    (``kl``, :func:`~.losses.sequence_kl`, nats per answer) estimated on the first ``kl_answers`` of them.
    ``batch_size`` prompts are answered at once: each decoding step reads the weights once for all of them.

    Why the KL on a sample: it needs two more forward passes over every prompt and answer (the policy's and
    the reference's log-probabilities), three times the work of answering greedily, which reads the weights
    once per token for the whole batch; 64 answers estimate the mean well enough to watch it grow.
    """
    was_training = model.training
    model.eval()
    scores: dict[str, list[float]] = {name: [] for name in rewards}
    kls: list[float] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        answers = sample_answers(model, chunk, 1, max_new_tokens, 0.0, stop_tokens, pad_id=pad_id)  # greedy
        for name, reward in rewards.items():
            scores[name] += [float(r) for r in reward(list(range(start, start + len(chunk))), answers)]
        if start >= kl_answers:
            continue
        chunk, answers = chunk[: kl_answers - start], answers[: kl_answers - start]
        batch = [t.to(model.device) for t in grouped_batch(chunk, answers, pad_id)]
        policy, reference = sampling_logprobs(model, *batch), reference_logprobs(model, *batch)
        kls += sequence_kl(policy, reference, batch[-1] != IGNORE_INDEX).tolist()
    model.train(was_training)
    return {**{name: sum(values) / len(values) for name, values in scores.items()}, "kl": sum(kls) / len(kls)}


@dataclass
class RLData:
    """RL's data as the training loop reads it (a :class:`~llama_from_scratch.training.train.TrainingData`).

    ``model`` is the policy being trained (batches are sampled from it); ``prompts`` the training questions as
    token ids (rendered in the chat template with the generation prompt); ``reward`` scores answers
    (:data:`~.policy.Reward`; in [0, 1] for ``ppo``); ``validation`` / ``validation_rewards`` the
    held-out questions and the rewards reported on them (:func:`heldout_rewards`; the true rule as ``reward``); ``measure(model)`` adds figures to every validation.

    A batch is ``(answer_tokens, labels, prompt_tokens, prompt_mask, ref_logprobs, advantages)`` for
    ``batch_size`` questions times ``group_size`` answers (:func:`~.policy.grouped_batch`'s tensors, the
    reference's log-probabilities and each answer's advantage); its loss is :func:`~.policy.policy_loss`.
    """

    model: Llama
    prompts: list[list[int]]
    reward: Reward
    validation: list[list[int]]
    validation_rewards: dict[str, Reward]
    config: RLConfig
    stop_tokens: Sequence[int] = ()
    pad_id: int = 0
    measure: Callable[[Llama], dict[str, float]] | None = None

    def batch(self, index: int, config: TrainConfig, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, ...]:
        c, model = self.config, self.model
        rows = sample_indices(len(self.prompts), index, c.batch_size, c.seed, RL_STREAM, rank, world_size)
        was_training = model.training
        model.eval()
        answers = sample_answers(
            model, [self.prompts[i] for i in rows], c.group_size, c.max_new_tokens, c.temperature,
            self.stop_tokens, sampling_seed(c, index), self.pad_id,
        )
        grouped = [i for i in rows for _ in range(c.group_size)]  # the question of each answer
        rewards = torch.tensor([float(r) for r in self.reward(grouped, answers)], dtype=torch.float64)
        prompts, prompt_mask, tokens, labels = grouped_batch([self.prompts[i] for i in rows], answers, self.pad_id)
        on_device = [t.to(model.device) for t in (prompts, prompt_mask, tokens, labels)]
        model.train()  # the log-probabilities as the loss will compute them
        reference = reference_logprobs(model, *on_device)
        if c.algorithm == "grpo":
            advantages = group_advantages(rewards.view(-1, c.group_size), c.scale_advantages).flatten()
        else:
            if not ((rewards >= 0) & (rewards <= 1)).all():
                raise ValueError("ppo's reward is a score in [0, 1] (its logit is whitened); got rewards outside")
            kl = sequence_kl(sampling_logprobs(model, *on_device), reference, on_device[-1] != IGNORE_INDEX)
            advantages = ppo_reward(rewards, kl.double().cpu(), c.beta)
        model.train(was_training)
        return tokens, labels, prompts, prompt_mask, reference.cpu(), advantages.float()

    def loss(self, model: Llama, tokens, labels, prompts, prompt_mask, ref_logprobs, advantages) -> torch.Tensor:
        beta = self.config.beta if self.config.algorithm == "grpo" else 0.0  # ppo's KL is in the reward
        return policy_loss(model, tokens, labels, prompts, prompt_mask, ref_logprobs, advantages, self.config.clip, beta)

    def validate(self, model: Llama, config: TrainConfig) -> dict[str, float]:
        figures = heldout_rewards(
            model, self.validation, self.validation_rewards, self.config.max_new_tokens, self.stop_tokens, self.pad_id
        )
        return {**figures, **(self.measure(model) if self.measure is not None else {})}


def rl(
    model: Llama,
    prompts: list[list[int]],
    reward: Reward,
    validation: list[list[int]],
    validation_rewards: dict[str, Reward],
    config: RLConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    stop_tokens: Sequence[int] = (),
    pad_id: int = 0,
    measure: Callable[[Llama], dict[str, float]] | None = None,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
    extra_files: dict[str, Path] | None = None,
    base: str | None = None,
) -> list[dict[str, float]]:
    """Train LoRA adapters on ``model`` (the SFT model, adapters merged: it becomes the reference) by RL; returns
    the history, as :func:`~llama_from_scratch.training.train.train`. A new run first reports the starting
    point's validation as step 0 through ``on_eval`` (a resumed run has reported it already).

    The run's folder works as fine-tuning's (:func:`~llama_from_scratch.finetuning.finetune.finetune`): its
    checkpoints hold the adapters, and a resume is refused unless the base weights and the training prompts are
    the run's own (:func:`~llama_from_scratch.finetuning.finetune.run_identity`).
    """
    if not prompts or not validation:
        raise ValueError("RL needs training and validation prompts; one of them is empty")
    if out_dir is None and (resume or overwrite):
        raise ValueError("resume and overwrite need out_dir, the run's folder")
    longest = max(len(p) for p in [*prompts, *validation]) + config.max_new_tokens
    if longest > min(config.seq_len, model.config.max_seq_len):
        raise ValueError(
            f"a prompt and its answer take up to {longest} tokens, more than seq_len={config.seq_len} or the "
            f"model's max_seq_len={model.config.max_seq_len}; shorten the prompts or max_new_tokens"
        )
    folder = None
    if out_dir is not None:  # before the adapters are added: the identity is the base's
        examples = [Example(p, [IGNORE_INDEX] * len(p)) for p in prompts]  # the prompts, nothing labelled
        folder = identified_run_folder(model, examples, out_dir, resume, overwrite, extra_files, ADAPTER_ONLY, base)
    with torch.random.fork_rng(devices=[]):  # the adapters' random A from the run's seed, not from whatever ran before
        torch.manual_seed(config.seed)
        add_lora(model, config.rank, config.alpha)
    data = RLData(model, prompts, reward, validation, validation_rewards, config, stop_tokens, pad_id, measure)
    if on_eval is not None and not resume:  # the starting point, measured as every later step is: what RL adds
        on_eval(0, data.validate(model, config))  # the new adapters' B is zero: the model is still the SFT model
    return train(model, data, config, folder, on_eval)
