"""The policy's side of RL: sample answers, score their tokens under the policy and the frozen reference, and the loss.

In RLHF the language model is a *policy*: each answer token is an action, taken in the state "prompt and
answer so far". One round of on-policy RL:

1. :func:`sample_answers`: ``G`` answers to each prompt, sampled with the package's batched generation;
2. :func:`answer_batch`: prompt + answer as one right-padded row, the answer's tokens labelled (the prompt and
   padding -100, chapter 10's masks), so that the answer's per-token log-probabilities come from one forward pass;
3. :func:`rollout_logprobs`: those log-probabilities under the policy that sampled (``old``, the ratio's
   denominator) and under the reference ``π_0``, which with LoRA is the same model with its adapters off
   (:func:`~llama_from_scratch.finetuning.lora.adapters_disabled`): no second copy of the weights;
4. :func:`policy_loss`: PPO's clipped surrogate with the answers' advantages, plus ``β`` times GRPO's KL
   estimate per answer token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from ..chat import render_chat
from ..finetuning.dpo import token_logprobs
from ..finetuning.lora import adapters_disabled, lora_layers
from ..finetuning.sft import IGNORE_INDEX, Example, pad_batch
from ..generate import GenerationConfig, generate_batch
from ..model import Llama
from ..tokenization.chat import chat_stop_tokens, encode_chat, special_texts
from ..tokenization.tokenizer import Tokenizer
from ..systems.precision import autocast
from .losses import PPO_CLIP, kl_k3, ppo_clip_loss

# How answers are scored: ``reward(prompt_indices, answers)`` -> one number per answer, where answer ``j`` (token
# ids) answers prompt ``prompt_indices[j]``. A batch at a time, so that a reward model scores them in batches;
# a verifiable reward checks each (:func:`~.arithmetic_task.arithmetic_reward`).
Reward = Callable[[list[int], list[list[int]]], Sequence[float]]


def turn_stop_tokens(tokenizer: Tokenizer, template: str) -> list[int]:
    """The ids that end an answer (:func:`~llama_from_scratch.tokenization.chat.chat_stop_tokens`), the one
    ``template`` writes after an answer first: the token SFT taught the model to end its turns with, which
    :func:`sample_answers` puts back at the end of a stopped answer (Llama 3 has several stop tokens)."""
    stops = chat_stop_tokens(tokenizer)
    turn = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "."}]
    variables = special_texts(tokenizer)
    prompt = render_chat(template, turn[:1], add_generation_prompt=True, **variables)
    full = render_chat(template, turn, add_generation_prompt=False, **variables)
    ending = next((t for t in encode_chat(tokenizer, full[len(prompt) :]) if t in stops), None)
    return sorted(stops, key=lambda t: t != ending)  # stable: the template's first, the others in their order


def sample_answers(
    model: Llama,
    prompts: Sequence[Sequence[int]],
    group_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    stop_tokens: Iterable[int] = (),
    seed: int | None = None,
    pad_id: int = 0,
) -> list[list[int]]:
    """``group_size`` sampled answers to each prompt, grouped: answers ``i * G ... i * G + G - 1`` are prompt ``i``'s.

    An answer that ended at a stop token keeps one (the policy must learn to stop, and be rewarded or blamed
    for it): the first of ``stop_tokens``, the template's end of turn when they come from :func:`turn_stop_tokens`;
    one that reached ``max_new_tokens`` does not. The whole group runs as one batch
    (:func:`~llama_from_scratch.generate.generate_batch`), reproducible with ``seed``.
    """
    stops = list(stop_tokens)
    rows = [list(p) for p in prompts for _ in range(group_size)]
    config = GenerationConfig(max_new_tokens, temperature, stop_tokens=stops, seed=seed)
    answers = generate_batch(model, rows, config, pad_id=pad_id)
    # generate_batch drops the stop token; a shorter answer met one (which one it does not say: the first,
    # the template's own, is the one the model learnt to write)
    return [a + [stops[0]] if stops and len(a) < max_new_tokens else a for a in answers]


def answer_example(prompt: Sequence[int], answer: Sequence[int]) -> Example:
    """Prompt and answer as chapter 10's :class:`~llama_from_scratch.finetuning.sft.Example`: the answer's tokens
    labelled, the prompt's -100 (what RL scores, and what rejection sampling fine-tunes on)."""
    return Example(list(prompt) + list(answer), [IGNORE_INDEX] * len(prompt) + list(answer))


def answer_batch(
    prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens, labels)``, both ``(answers, longest - 1)``: each prompt + answer right-padded, the targets the
    answer's tokens only. ``prompts`` holds one prompt per answer (repeat a group's prompt ``G`` times)."""
    if len(prompts) != len(answers):
        raise ValueError(f"one prompt per answer: got {len(prompts)} prompts and {len(answers)} answers")
    return pad_batch([answer_example(p, a) for p, a in zip(prompts, answers)], pad_id)


@torch.no_grad()
def rollout_logprobs(model: Llama, tokens: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(old, reference)``, each ``(batch, seq)`` :func:`~llama_from_scratch.finetuning.dpo.token_logprobs` of the
    answers under the policy as it is now and under its base (LoRA adapters off).

    RL needs LoRA here: without adapters there is no way to run the reference without a second copy of the
    model, so a model without them is refused. Computed as the loss will compute them (train mode, the
    same autocast), so that the ratio ``π/π_old`` is exactly 1 before the first update.
    """
    if not lora_layers(model):
        raise ValueError("RL's reference is the base model with its LoRA adapters off: add_lora(model) first")
    with autocast(model.device, None):
        old = token_logprobs(model, tokens, labels)
        with adapters_disabled(model):
            reference = token_logprobs(model, tokens, labels)
    return old.float(), reference.float()


def policy_loss(
    model: Llama,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip: float = PPO_CLIP,
    beta: float = 0.0,
) -> torch.Tensor:
    """PPO's clipped loss (:func:`~.losses.ppo_clip_loss`) on the answer tokens, plus ``β`` times the mean of
    :func:`~.losses.kl_k3` over them (GRPO keeps the policy near the reference in the loss; Llama 2's PPO puts
    its KL term into the reward instead, :func:`~.losses.ppo_reward`, and uses ``beta=0`` here).

    ``tokens``, ``labels``, ``old_logprobs``, ``ref_logprobs``: ``(batch, seq)``; ``advantages``: ``(batch,)``."""
    logprobs = token_logprobs(model, tokens, labels)  # (batch, seq), with gradient
    mask = labels != IGNORE_INDEX
    loss = ppo_clip_loss(logprobs, old_logprobs, advantages, mask, clip)
    if beta == 0:
        return loss
    weights = mask.to(logprobs.dtype)
    return loss + beta * (kl_k3(logprobs, ref_logprobs) * weights).sum() / weights.sum()
