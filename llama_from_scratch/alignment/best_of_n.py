"""Best-of-N and rejection sampling: Llama 2's first RLHF method, which needs no RL at all.

Sample ``N`` answers to each prompt, score them with a reward, keep the best (*best-of-N*). Llama 2's
Figure 7 shows why it works: the best of ``N`` gets better as ``N`` grows, while the median stays put, so the
gap between them is what a model can gain by learning to produce its own best answers. *Rejection sampling
fine-tuning* does exactly that: the best answer to each training prompt becomes a supervised example, and the
model is fine-tuned on them with chapter 10's code (:func:`~llama_from_scratch.finetuning.finetune.finetune`,
``objective="sft"``); Llama 2 iterated this four times (RLHF-V1 to V4) before PPO.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from ..finetuning.sft import Example
from ..model import Llama
from .policy import Reward, answer_example, sample_answers


@dataclass
class Samples:
    """``n`` answers to each prompt and their rewards: ``answers`` grouped (answers ``i * n ... i * n + n - 1`` are
    prompt ``i``'s, as :func:`~.policy.sample_answers` returns them), ``scores`` ``(prompts, n)``."""

    prompts: list[list[int]]
    answers: list[list[int]]
    scores: torch.Tensor

    def best(self) -> list[list[int]]:
        """The highest-scoring answer to each prompt (the first of them on a tie)."""
        n = self.scores.shape[1]
        return [self.answers[i * n + int(j)] for i, j in enumerate(self.scores.argmax(dim=1))]

    def curve(self, ns: Iterable[int]) -> dict[int, tuple[float, float]]:
        """Llama 2's Figure 7: for each ``k`` in ``ns``, the max and the median reward among the first ``k``
        samples of each prompt, averaged over the prompts: ``{k: (mean max, mean median)}``."""
        out = {}
        for k in ns:
            if not 1 <= k <= self.scores.shape[1]:
                raise ValueError(f"k must lie in [1, {self.scores.shape[1]}] (the samples per prompt), got {k}")
            first = self.scores[:, :k]
            out[k] = (first.max(dim=1).values.mean().item(), first.median(dim=1).values.mean().item())
        return out


def best_of_n(
    model: Llama,
    prompts: Sequence[Sequence[int]],
    n: int,
    reward: Reward,
    max_new_tokens: int,
    temperature: float = 1.0,
    stop_tokens: Sequence[int] = (),
    seed: int = 0,
    pad_id: int = 0,
    prompts_per_batch: int = 4,
) -> Samples:
    """Sample ``n`` answers to every prompt (``prompts_per_batch`` prompts, times ``n`` rows, per batched
    generation; batch ``b`` seeded ``seed + b``) and score them with ``reward``."""
    was_training = model.training
    model.eval()
    answers: list[list[int]] = []
    for b, start in enumerate(range(0, len(prompts), prompts_per_batch)):
        chunk = prompts[start : start + prompts_per_batch]
        answers += sample_answers(model, chunk, n, max_new_tokens, temperature, stop_tokens, seed + b, pad_id)
    model.train(was_training)
    indices = [i for i in range(len(prompts)) for _ in range(n)]
    scores = torch.tensor([float(s) for s in reward(indices, answers)]).view(len(prompts), n)
    return Samples([list(p) for p in prompts], answers, scores)


def rejection_sampling_examples(samples: Samples) -> list[Example]:
    """The best answer to each prompt as a supervised example (the answer's tokens labelled): the data of one
    round of rejection sampling fine-tuning."""
    return [answer_example(p, a) for p, a in zip(samples.prompts, samples.best())]
