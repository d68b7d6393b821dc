"""Chapter 12's arithmetic word problems as RL's verifiable reward and as preference pairs whose truth is known.

A reward model learned from human labels can be fooled; an exact-answer check cannot. Here the reward of an
answer is 1 when the number it states (:func:`~llama_from_scratch.evaluation.arithmetic.extract_number`) is
the problem's answer, else 0, and a preference pair is a correct worked solution against one with a slip in its
last step, so the rule that ranks them is known.

The held-out questions are fixed before any run: they are exactly chapter 12's test questions for the same
seed (``arithmetic(n_test, seed=seed)`` scores them with chapter 12's harness, standard errors included), and
the training questions come from another seed with every held-out question removed.
"""

from __future__ import annotations

import numpy as np

from ..evaluation.arithmetic import Problem, extract_number, problems
from ..tokenization.tokenizer import Tokenizer
from .policy import Reward

TRAIN_SEED = 1013  # the training questions' generator seed (plus the split's seed): apart from chapter 12's


def arithmetic_split(n_train: int, n_test: int, seed: int = 0) -> tuple[list[Problem], list[Problem]]:
    """``(train, test)`` problems: ``test`` is chapter 12's test set for ``seed``; ``train`` shares no question with it."""
    test = problems(n_test, seed=2 * seed)  # what evaluation.arithmetic.arithmetic(n_test, seed=seed) scores
    held_out = {p.question for p in test}
    train = [p for p in problems(n_train + n_test, seed=TRAIN_SEED + seed) if p.question not in held_out][:n_train]
    if len(train) < n_train:
        raise ValueError(f"only {len(train)} training problems left after removing the held-out ones; ask for fewer")
    return train, test


def arithmetic_messages(problem: Problem) -> list[dict[str, str]]:
    """The question as a chat's user turn."""
    return [{"role": "user", "content": problem.question}]


def arithmetic_conversations(items: list[Problem]) -> list[list[dict[str, str]]]:
    """Each question answered with its worked solution: chapter 10's SFT data, the starting point that RL improves
    on. SmolLM2-135M-Instruct asked cold (temperature 1, 16 held-out questions, 8 samples each) stated the right
    number in 3 of 128 samples: most groups hold no right answer, so RL alone has little to learn from."""
    return [arithmetic_messages(p) + [{"role": "assistant", "content": p.solution}] for p in items]


def is_correct(text: str, problem: Problem) -> bool:
    """The truth rule: does the answer state the right number (the one after "The answer is", else its last)?"""
    return extract_number(text) == str(problem.answer)


def wrong_solution(problem: Problem, rng: np.random.Generator) -> str:
    """The worked solution with a slip in its last step: the result off by 1 to 3, carried into the stated answer."""
    tail = f"= {problem.answer}. The answer is {problem.answer}."
    if not problem.solution.endswith(tail):
        raise ValueError(f"not a solution of chapter 12's generator: {problem.solution[-60:]!r}")
    deltas = [d for d in (-3, -2, -1, 1, 2, 3) if problem.answer + d >= 0]
    wrong = problem.answer + int(rng.choice(deltas))
    return problem.solution[: -len(tail)] + f"= {wrong}. The answer is {wrong}."


def arithmetic_preferences(items: list[Problem], seed: int = 0) -> list[dict]:
    """A preference record per problem (DPO's JSON Lines layout, :mod:`~llama_from_scratch.finetuning.data`): the
    correct solution chosen, a slipped one rejected; ``"safety": False`` (a helpfulness pair)."""
    rng = np.random.default_rng(seed)
    return [
        {"messages": arithmetic_messages(p), "chosen": p.solution, "rejected": wrong_solution(p, rng), "safety": False}
        for p in items
    ]


def arithmetic_reward(items: list[Problem], tokenizer: Tokenizer) -> Reward:
    """The verifiable reward (a :data:`~.policy.Reward`): 1.0 for an answer to ``items[i]`` that states the right
    number (:func:`is_correct` on the decoded tokens), else 0.0."""

    def reward(indices: list[int], answers: list[list[int]]) -> list[float]:
        return [float(is_correct(tokenizer.decode(a), items[i])) for i, a in zip(indices, answers)]

    return reward
