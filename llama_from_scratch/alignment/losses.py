"""The losses and rewards of RLHF, each a few lines of tensor arithmetic (Llama 2, Touvron et al. 2023, section 3).

* :func:`bradley_terry_loss`: how a reward model learns from "this answer is better than that one";
* :func:`llama2_reward`, :func:`whiten`, :func:`ppo_reward`: the reward Llama 2's PPO maximises: the safety or
  the helpfulness score, whitened, minus a KL penalty that keeps the policy near the model it started from;
* :func:`ppo_clip_loss`: PPO's clipped surrogate (Schulman et al. 2017), the policy's loss on sampled answers;
* :func:`group_advantages`: GRPO's baseline (Shao et al. 2024), the mean reward of a group of answers to one
  question, instead of a learned value function; :func:`kl_k3`: GRPO's per-token KL estimate.

Sign conventions: a reward is better when larger; every function named ``*_loss`` is minimised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LLAMA2_SAFETY_THRESHOLD = 0.15  # below this safety score the safety model decides, whatever the prompt
LLAMA2_KL_BETA = 0.01  # β of the KL penalty for Llama 2-Chat 7B and 13B (0.005 for 34B and 70B)
PPO_CLIP = 0.2  # ε: the ratio π/π_old may move by ±20% before its gradient stops


def bradley_terry_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """Llama 2's binary ranking loss, ``mean(-log σ(r_chosen - r_rejected - margin))`` over the pairs.

    ``r_chosen``, ``r_rejected``: ``(pairs,)`` scalar rewards of the preferred and the rejected answer to one
    prompt. Under the Bradley-Terry model ``P(chosen > rejected) = σ(r_c - r_r)``, so this is the negative
    log-likelihood of the human choices. ``margin`` (a number, or ``(pairs,)``) asks for a larger gap where
    annotators were surer ("significantly better": Llama 2 used up to 1 there, 0 for "negligibly better").
    ``-log σ(z)`` is computed as ``softplus(-z)``, exact for large ``|z|``.
    """
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(f"r_chosen and r_rejected must have one shape, got {tuple(r_chosen.shape)} and {tuple(r_rejected.shape)}")
    return F.softplus(-(r_chosen - r_rejected - margin)).mean()


def pair_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """The share of pairs that the reward model orders as the annotator did (``r_chosen > r_rejected``)."""
    return (r_chosen > r_rejected).float().mean().item()


def llama2_reward(
    helpful: torch.Tensor,
    safety: torch.Tensor,
    is_safety_prompt: torch.Tensor,
    threshold: float = LLAMA2_SAFETY_THRESHOLD,
) -> torch.Tensor:
    """Llama 2's combined reward ``R_c``: the safety score where safety matters, else the helpfulness score.

    ``helpful``, ``safety``: ``(batch,)`` scores in (0, 1) (each reward model's output through a sigmoid);
    ``is_safety_prompt``: ``(batch,)`` booleans, the prompts known to invite unsafe answers. The safety score
    decides when the prompt is a safety prompt *or* the answer looks unsafe (``safety < threshold``): a
    helpful but dangerous answer is never rewarded for its helpfulness.
    """
    use_safety = is_safety_prompt.bool() | (safety < threshold)
    return torch.where(use_safety, safety, helpful)


def whiten(values: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """``(values - mean) / sqrt(var + eps)`` over the entries where ``mask`` is true (all when it is None).

    Scores of different prompts and reward models live on different scales; whitened, a batch's rewards
    have mean 0 and variance 1 (the population variance, divided by the count), so one learning rate
    serves them all. Masked-out entries come back as they were whitened too, but carry no weight in the mean.
    """
    weights = torch.ones_like(values) if mask is None else mask.to(values.dtype)
    count = weights.sum()
    mean = (values * weights).sum() / count
    variance = (((values - mean) ** 2) * weights).sum() / count
    return (values - mean) * torch.rsqrt(variance + eps)


def sequence_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(batch,)``: the sampled estimate of ``KL(π_θ(·|p) ‖ π_0(·|p))`` for each answer, ``Σ_t log π_θ/π_0``.

    ``logprobs``, ``ref_logprobs``, ``mask``: ``(batch, seq)``, per-token log-probabilities of the sampled
    answer under the policy and the frozen reference, and which positions are answer tokens. The answer was
    drawn from ``π_θ``, so the mean of this log-ratio over answers is the KL divergence itself; one answer's
    may be negative.
    """
    return ((logprobs - ref_logprobs) * mask.to(logprobs.dtype)).sum(dim=-1)


def ppo_reward(combined: torch.Tensor, kl: torch.Tensor, beta: float = LLAMA2_KL_BETA, eps: float = 1e-6) -> torch.Tensor:
    """Llama 2's PPO reward ``R = whiten(logit(R_c)) - β · KL``, one per answer.

    ``combined``: ``(batch,)`` :func:`llama2_reward` scores in (0, 1); the logit undoes the sigmoid, giving
    back the reward model's linear score, which is then whitened over the batch (:func:`whiten`); ``eps``
    keeps the logit finite at a score of exactly 0 or 1. ``kl``: ``(batch,)`` :func:`sequence_kl`. The
    penalty is what stops the policy from drifting to answers that fool the reward model (reward hacking):
    moving away from ``π_0`` costs ``β`` per nat.
    """
    return whiten(torch.logit(combined, eps=eps)) - beta * kl


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = PPO_CLIP,
) -> torch.Tensor:
    """PPO's clipped surrogate, ``-Σ mask·min(ρA, clip(ρ, 1-ε, 1+ε)·A) / Σ mask``, ``ρ = exp(logprobs - old_logprobs)``.

    ``logprobs``: ``(batch, seq)`` per-token log-probabilities of the sampled answers under the policy being
    trained (with gradient); ``old_logprobs``: the same under the policy that sampled them (detached here:
    they are data, not something to optimise); ``advantages``: ``(batch, seq)``, or ``(batch,)`` for one per
    answer (GRPO), detached too; ``mask``: ``(batch, seq)``, 1 on answer tokens, 0 on the prompt and padding,
    which therefore count neither in the sum nor in the token count.

    The ``min`` makes the objective pessimistic: once ``ρ`` has left ``[1-ε, 1+ε]`` in the direction the
    advantage pushes, the clipped term is the smaller and constant, so its gradient is zero and one batch of
    samples cannot move the policy far. In the other direction the unclipped term stays, so a step that made
    a good action less likely (or a bad one more) is always corrected.
    """
    if advantages.ndim == logprobs.ndim - 1:
        advantages = advantages[..., None]  # one advantage per answer, for each of its tokens
    advantages = advantages.detach()
    ratio = torch.exp(logprobs - old_logprobs.detach())  # ρ: (batch, seq)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * advantages
    mask = mask.to(logprobs.dtype)
    return -(torch.minimum(unclipped, clipped) * mask).sum() / mask.sum()


def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's advantages: each answer's reward minus the mean reward of its group, ``(groups, G) -> (groups, G)``.

    Row ``i`` holds the rewards of the ``G`` answers sampled for question ``i``. Their mean is the baseline: an
    answer is good if it beats its siblings, so no value function has to be learned. With ``scale`` the
    differences are divided by the group's standard deviation (GRPO's choice; the unbiased one, as TRL
    computes it, plus ``eps``); without it they are left as they are (Dr. GRPO, Liu et al. 2025, which argues
    the division over-weights questions that are almost always or almost never solved). A group whose
    answers all got the same reward has zero advantages: it teaches nothing.
    """
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (groups, G) with G >= 2 answers per group, got shape {tuple(rewards.shape)}")
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centered
    return centered / (rewards.std(dim=1, keepdim=True) + eps)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """GRPO's per-token estimate of ``KL(π_θ ‖ π_ref)``: ``exp(d) - d - 1`` with ``d = ref_logprobs - logprobs``.

    Schulman's "k3" estimator: unbiased for tokens sampled from ``π_θ``, and never negative (``e^d >= 1 + d``),
    unlike the plain log-ratio of :func:`sequence_kl`. Shapes: ``(batch, seq)`` in, ``(batch, seq)`` out.
    GRPO adds it to the loss (``β`` times its masked mean) instead of subtracting it from the reward.
    """
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1.0
