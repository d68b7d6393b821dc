"""Direct Preference Optimization (Rafailov et al., 2023): learning from "this answer is better than that one".

Llama 2-Chat was tuned on human preferences with RLHF: a *reward model* ``r(x, y)`` is trained to score
the preferred answer ``y_w`` above the rejected ``y_l`` (Bradley-Terry: ``P(y_w > y_l) = σ(r_w - r_l)``),
then the policy is optimised with PPO to maximise the reward while a KL penalty keeps it close to the
model it started from (the *reference* ``π_ref``)::

    max_π  E[ r(x, y) ]  -  β · KL( π(·|x) || π_ref(·|x) )

That objective has a closed-form optimum, ``π*(y|x) ∝ π_ref(y|x) · exp(r(x, y) / β)``. Read backwards it
says that every policy defines the reward it is optimal for, ``r(x, y) = β · log(π(y|x) / π_ref(y|x))``
plus a term that depends on ``x`` only and cancels in ``r_w - r_l``. Putting that reward into the
Bradley-Terry likelihood gives a loss on the policy itself, with no reward model and no sampling::

    loss = -log σ( β · [ (log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x)) ] )

The only model outputs it needs are the log-probabilities of whole answers (:func:`sequence_logprobs`),
from the policy and from the frozen reference (with LoRA: the same model with its adapters off).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..model import Llama
from ..tokenization.tokenizer import Tokenizer
from ..training.train import TrainConfig
from .lora import adapters_disabled
from .sft import IGNORE_INDEX, Example, pad_batch, sample_indices, tokenize_dataset


def token_logprobs(model: Llama, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log π(label | everything before)`` per position: ``(batch, seq)``, 0 where nothing is scored.

    ``tokens`` ``(batch, seq)`` are the inputs and ``labels`` ``(batch, seq)`` the target of each position
    (the next token), -100 where nothing is scored (the prompt, the padding). Returns float32 or wider. Only
    the scored positions go through the output head, so the ``(batch, seq, vocab_size)`` logits never exist.
    RLHF's losses work token by token (chapter 13); DPO sums them (:func:`sequence_logprobs`).
    """
    if tokens.shape != labels.shape:
        raise ValueError(f"tokens and labels must have one shape, got {tuple(tokens.shape)} and {tuple(labels.shape)}")
    return labelled_logprobs(model, model.hidden_states(tokens), labels)


def labelled_logprobs(model: Llama, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`token_logprobs` from the hidden states ``(batch, seq, dim)`` that predict ``labels`` ``(batch, seq)``:
    the output head and the log-softmax on the labelled positions alone, ``(batch, seq)``, 0 elsewhere."""
    scored = labels != IGNORE_INDEX  # (batch, seq)
    logits = hidden[scored] @ model.output.weight.t()  # (n, vocab_size)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    per_token = torch.log_softmax(logits, dim=-1).gather(1, labels[scored][:, None]).squeeze(1)  # (n,)
    return torch.zeros(labels.shape, dtype=per_token.dtype, device=labels.device).masked_scatter(scored, per_token)


def sequence_logprobs(model: Llama, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log π(answer | prompt)`` per sequence, ``(batch,)``: the sum of :func:`token_logprobs` over the labelled targets."""
    return token_logprobs(model, tokens, labels).sum(dim=1)


def reward_margins(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """``β · [log π/π_ref (chosen) - log π/π_ref (rejected)]`` per pair: the implicit reward's margin.

    Every argument is ``(pairs,)``: the summed log-probabilities of each chosen and rejected answer under
    the policy and the reference. Returns ``(pairs,)``, what :func:`dpo_loss` pushes up.
    """
    chosen = policy_chosen_logps - reference_chosen_logps  # log-ratio to the reference
    rejected = policy_rejected_logps - reference_rejected_logps
    return beta * (chosen - rejected)


def dpo_loss(margins: torch.Tensor) -> torch.Tensor:
    """The DPO loss, averaged over the pairs: ``mean(-log σ(margin))`` of the ``(pairs,)`` :func:`reward_margins`.

    ``-log σ(z)`` is computed as ``softplus(-z)``, exact for large ``|z|``.
    """
    return F.softplus(-margins).mean()


def reward_accuracy(margins: torch.Tensor) -> float:
    """The share of pairs whose chosen answer the policy prefers more than the reference did (margin > 0)."""
    return (margins > 0).float().mean().item()


def dpo_batch_loss(
    model: Llama,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    reference_logps: torch.Tensor,
    beta: float = 0.1,
    nll_weight: float = 0.0,
) -> torch.Tensor:
    """The DPO loss of one batch laid out for a single forward pass: the first half of the rows chosen, the
    second half rejected. ``tokens``, ``labels`` ``(2 * pairs, seq)``; ``reference_logps`` ``(2 * pairs,)``,
    computed once before training, since the reference never changes.

    DPO only asks the chosen answer to gain on the rejected one *relative to the reference*: both may
    lose probability, the chosen one less, and the mass they free goes to answers nobody ranked. With
    ``nll_weight > 0`` the chosen answers' mean negative log-likelihood per token is added, weighted
    (Llama 3's preference tuning used 0.2; Pang et al.'s RPO, 2024, 1.0), which keeps them likely.
    """
    logps = sequence_logprobs(model, tokens, labels)
    policy_chosen, policy_rejected = logps.chunk(2)
    reference_chosen, reference_rejected = reference_logps.chunk(2)
    loss = dpo_loss(reward_margins(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta))
    if nll_weight == 0:
        return loss
    chosen_tokens = (labels.chunk(2)[0] != IGNORE_INDEX).sum(dim=1).clamp(min=1)  # (pairs,)
    return loss + nll_weight * (-policy_chosen / chosen_tokens).mean()


def tokenize_pairs(
    pairs: list[dict], tokenizer: Tokenizer, template: str, cache_dir: str | Path | None = None
) -> list[tuple[Example, Example]]:
    """``{"messages", "chosen", "rejected"}`` -> (chosen, rejected) examples; the prompt carries no loss."""
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, dict) and all(isinstance(pair.get(k), str) for k in ("chosen", "rejected"))):
            raise ValueError(f"preference pair {i}: expected 'messages' and the strings 'chosen' and 'rejected'")
    conversations = [
        p["messages"] + [{"role": "assistant", "content": p[side]}] for side in ("chosen", "rejected") for p in pairs
    ]
    examples = tokenize_dataset(conversations, tokenizer, template, cache_dir)
    return list(zip(examples[: len(pairs)], examples[len(pairs) :]))


def pair_batch(pairs: list[tuple[Example, Example]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens, labels)`` ``(2 * pairs, seq)``: the chosen answers' rows first, then the rejected ones'."""
    return pad_batch([chosen for chosen, _ in pairs] + [rejected for _, rejected in pairs], pad_id)


@torch.no_grad()
def pair_logprobs(
    model: Llama, pairs: list[tuple[Example, Example]], batch_size: int = 8, pad_id: int = 0
) -> torch.Tensor:
    """``(pairs, 2)``: ``log π`` of each chosen and rejected answer under ``model`` (in eval mode), float32 on the CPU."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(pairs), batch_size):
        tokens, labels = pair_batch(pairs[start : start + batch_size], pad_id)
        chosen, rejected = sequence_logprobs(model, tokens.to(model.device), labels.to(model.device)).chunk(2)
        out.append(torch.stack([chosen, rejected], dim=1).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def reference_logprobs(
    model: Llama, pairs: list[tuple[Example, Example]], batch_size: int = 8, pad_id: int = 0
) -> torch.Tensor:
    """``(pairs, 2)``: ``log π_ref`` of each chosen and rejected answer, computed once (the reference is frozen).

    The reference is the model fine-tuning starts from. When ``model`` has LoRA adapters it is the base:
    the same weights with the adapters switched off meanwhile (:func:`~.lora.adapters_disabled`), right
    whatever the adapters hold (zero at step 0, trained after a resume), with no second copy of the model
    in memory. Without adapters (full fine-tuning) it is ``model`` as it is, so call this before the first
    step changes the weights: computed once, up front, the log-probabilities spare a frozen copy there too.
    """
    with adapters_disabled(model):
        return pair_logprobs(model, pairs, batch_size, pad_id)


def preference_metrics(policy: torch.Tensor, reference: torch.Tensor, beta: float = 0.1) -> dict[str, float]:
    """What DPO did, from ``(pairs, 2)`` log-probabilities (chosen, rejected) of the policy and the reference.

    * ``loss``: the DPO loss; ``reward_margin``: the mean implicit-reward margin; ``reward_accuracy``: how
      often it is positive (the policy prefers the chosen answer *more than the reference did*);
    * ``preference_accuracy``: how often the policy itself gives the chosen answer the higher probability;
    * ``chosen_log_ratio`` / ``rejected_log_ratio``: the mean ``log π/π_ref`` of each answer, how far the
      policy moved from the reference on them (their expectation under the policy's own answers is the KL
      divergence that RLHF's penalty holds down; DPO's β plays that penalty's part).
    """
    margins = reward_margins(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1], beta)
    return {
        "loss": dpo_loss(margins).item(),
        "reward_margin": margins.mean().item(),
        "reward_accuracy": reward_accuracy(margins),
        "preference_accuracy": (policy[:, 0] > policy[:, 1]).float().mean().item(),
        "chosen_log_ratio": (policy[:, 0] - reference[:, 0]).mean().item(),
        "rejected_log_ratio": (policy[:, 1] - reference[:, 1]).mean().item(),
    }


@dataclass
class PreferenceData:
    """DPO's data as the training loop reads it (a :class:`~llama_from_scratch.training.train.TrainingData`).

    A batch is ``(tokens, labels, reference_logps)`` of :func:`pair_batch`'s layout, the pairs drawn as a
    pure function of the step; its loss is :func:`dpo_batch_loss` with ``beta`` and ``nll_weight``;
    validation is :func:`preference_metrics` on the ``validation`` pairs plus whatever ``measure(model)``
    adds. ``reference`` / ``val_reference`` ``(pairs, 2)``: the reference's log-probabilities of each
    pair's chosen and rejected answer (:func:`reference_logprobs`), computed once before training.
    """

    train: list[tuple[Example, Example]]
    validation: list[tuple[Example, Example]]
    reference: torch.Tensor
    val_reference: torch.Tensor
    beta: float
    nll_weight: float
    pad_id: int = 0
    measure: Callable[[Llama], dict[str, float]] | None = None

    def batch(self, index: int, config: TrainConfig, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, ...]:
        rows = sample_indices(len(self.train), index, config.batch_size, config.seed, rank=rank, world_size=world_size)
        tokens, labels = pair_batch([self.train[i] for i in rows], self.pad_id)
        return tokens, labels, torch.cat([self.reference[rows, 0], self.reference[rows, 1]])

    def loss(
        self, model: Llama, tokens: torch.Tensor, labels: torch.Tensor, reference_logps: torch.Tensor
    ) -> torch.Tensor:
        return dpo_batch_loss(model, tokens, labels, reference_logps, self.beta, self.nll_weight)

    def validate(self, model: Llama, config: TrainConfig) -> dict[str, float]:
        policy = pair_logprobs(model, self.validation, config.batch_size, self.pad_id)
        figures = preference_metrics(policy, self.val_reference, self.beta)
        return {**figures, **(self.measure(model) if self.measure is not None else {})}
