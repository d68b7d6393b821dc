"""The policy's side of RL: sample answers, score their tokens under the policy and the frozen reference, and the loss.

In RLHF the language model is a *policy*: each answer token is an action, taken in the state "prompt and
answer so far". One round of on-policy RL:

1. :func:`sample_answers`: ``G`` answers to each prompt, sampled with the package's batched generation;
2. :func:`grouped_batch`: the prompts once each (left-padded) and the answers (right-padded, their tokens
   labelled, the padding -100: chapter 10's masks);
3. :func:`answer_logprobs`: the answers' per-token log-probabilities, each prompt run once for its whole
   group (its keys and values copied to its ``G`` answers, as generation's cache holds them); under the
   frozen reference ``π_0`` (:func:`reference_logprobs`), which with LoRA is the same model with its adapters
   off (:func:`~llama_from_scratch.finetuning.lora.adapters_disabled`): no second copy of the weights;
4. :func:`policy_loss`: PPO's clipped surrogate with the answers' advantages, plus ``β`` times GRPO's KL
   estimate per answer token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from ..chat import render_chat
from ..finetuning.dpo import labelled_logprobs
from ..finetuning.lora import adapters_disabled, lora_layers
from ..finetuning.sft import IGNORE_INDEX, Example
from ..generate import GenerationConfig, generate_batch, left_pad
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


def grouped_batch(
    prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(prompt_tokens, prompt_mask, answer_tokens, labels)`` for ``G`` answers to each of ``prompts``, grouped as
    :func:`sample_answers` returns them (answers ``i * G ... i * G + G - 1`` answer prompt ``i``).

    ``prompt_tokens``, ``prompt_mask``: ``(prompts, longest prompt)``, each prompt once, left-padded
    (:func:`~llama_from_scratch.generate.left_pad`: every prompt ends in the last column, where its answers'
    first token is predicted); ``answer_tokens``, ``labels``: ``(answers, longest answer)``, right-padded with
    ``pad_id``, the labels the answer tokens and -100 at the padding.
    """
    if not prompts or len(answers) % len(prompts):
        raise ValueError(f"G answers to each prompt: got {len(answers)} answers to {len(prompts)} prompts")
    if any(len(a) == 0 for a in answers):
        raise ValueError("an empty answer has no token to score")
    prompt_tokens, prompt_mask = left_pad(prompts, pad_id)
    longest = max(len(a) for a in answers)
    answer_tokens = torch.full((len(answers), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(answers), longest), IGNORE_INDEX, dtype=torch.long)
    for row, answer in enumerate(answers):
        answer_tokens[row, : len(answer)] = labels[row, : len(answer)] = torch.as_tensor(list(answer), dtype=torch.long)
    return prompt_tokens, prompt_mask, answer_tokens, labels


def answer_logprobs(
    model: Llama, prompt_tokens: torch.Tensor, prompt_mask: torch.Tensor, answer_tokens: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """``log π(answer token | prompt, answer so far)``: ``(answers, longest answer)``, 0 at the padding
    (:func:`grouped_batch`'s tensors; with gradients when they are enabled).

    The ``G`` answers to one prompt share it, so the prompt runs once: its keys and values go into a cache
    (as generation's prefill puts them), each answer's row gets a copy
    (:meth:`~llama_from_scratch.kv_cache.KVCache.select_rows`, differentiable: the prompt's gradient is the
    sum over its group), and the answers run after it at positions ``longest prompt ...``, in one forward
    pass. The prompt's last position predicts each answer's first token. The same numbers as running every
    prompt + answer as its own row (:func:`~llama_from_scratch.finetuning.dpo.token_logprobs`), up to float
    rounding, for ``1/G`` of the prompts' work: with SmolLM2's chat prompts of about 65 tokens, answers of
    about 40 and ``G = 8``, a little over half of the tokens a forward (and backward) pass reads.
    """
    n_prompts, prompt_len = prompt_tokens.shape
    batch, answer_len = answer_tokens.shape
    if batch % n_prompts or labels.shape != answer_tokens.shape or prompt_mask.shape != prompt_tokens.shape:
        raise ValueError(
            f"prompts {tuple(prompt_tokens.shape)} (mask {tuple(prompt_mask.shape)}) and answers "
            f"{tuple(answer_tokens.shape)} (labels {tuple(labels.shape)}): G answers per prompt, labels shaped as answers"
        )
    of_answer = torch.arange(n_prompts, device=prompt_tokens.device).repeat_interleave(batch // n_prompts)  # (batch,)
    cache = model.new_kv_caches(n_prompts, prompt_len + answer_len - 1)
    hidden = model.hidden_states(prompt_tokens, 0, cache, prompt_mask)[of_answer, -1:]  # (batch, 1, dim)
    if answer_len > 1:  # the answers but their last token (it is only predicted) after their prompt's copy
        mask = torch.cat([prompt_mask[of_answer], prompt_mask.new_ones(batch, answer_len - 1)], dim=1)
        cache = [layer.select_rows(of_answer) for layer in cache]
        after = model.hidden_states(answer_tokens[:, :-1], prompt_len, cache, mask)  # (batch, answer_len - 1, dim)
        hidden = torch.cat([hidden, after], dim=1)  # (batch, answer_len, dim)
    return labelled_logprobs(model, hidden, labels)


def reference_logprobs(model: Llama, *batch: torch.Tensor) -> torch.Tensor:
    """:func:`answer_logprobs` of :func:`grouped_batch`'s ``batch`` under the reference: the base, LoRA adapters off.

    RL needs LoRA here: without adapters there is no way to run the reference without a second copy of the
    model, so a model without them is refused. Computed in the forward pass's precision (the same autocast
    as the loss), float32.
    """
    if not lora_layers(model):
        raise ValueError("RL's reference is the base model with its LoRA adapters off: add_lora(model) first")
    with adapters_disabled(model):
        return sampling_logprobs(model, *batch)


@torch.no_grad()
def sampling_logprobs(model: Llama, *batch: torch.Tensor) -> torch.Tensor:
    """:func:`answer_logprobs` under the policy as it is (no gradient, the loss's autocast), float32: with
    :func:`reference_logprobs`, each answer's KL to the reference (:func:`~.losses.sequence_kl`)."""
    with autocast(model.device, None):
        return answer_logprobs(model, *batch).float()


def policy_loss(
    model: Llama,
    answer_tokens: torch.Tensor,
    labels: torch.Tensor,
    prompt_tokens: torch.Tensor,
    prompt_mask: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip: float = PPO_CLIP,
    beta: float = 0.0,
) -> torch.Tensor:
    """PPO's clipped loss (:func:`~.losses.ppo_clip_loss`) on the answer tokens, plus ``β`` times the mean of
    :func:`~.losses.kl_k3` over them (GRPO keeps the policy near the reference in the loss; Llama 2's PPO puts
    its KL term into the reward instead, :func:`~.losses.ppo_reward`, and uses ``beta=0`` here).

    Each batch of samples is learnt from once (GRPO's ``μ = 1``): the policy that sampled them is the policy
    being updated, so ``π_old`` is the loss's own log-probabilities, detached (TRL does the same when it makes
    one pass over its samples): the ratio is exactly 1, its gradient is that of ``log π``, and no second
    forward pass computes ``π_old``. The clip would bind only on samples reused after an update.

    ``answer_tokens``, ``labels``, ``prompt_tokens``, ``prompt_mask``: :func:`grouped_batch`'s; ``ref_logprobs``
    ``(answers, longest answer)`` (:func:`reference_logprobs`); ``advantages``: ``(answers,)``."""
    logprobs = answer_logprobs(model, prompt_tokens, prompt_mask, answer_tokens, labels)  # with gradient
    mask = labels != IGNORE_INDEX
    loss = ppo_clip_loss(logprobs, logprobs.detach(), advantages, mask, clip)
    if beta == 0:
        return loss
    weights = mask.to(logprobs.dtype)
    return loss + beta * (kl_k3(logprobs, ref_logprobs) * weights).sum() / weights.sum()
