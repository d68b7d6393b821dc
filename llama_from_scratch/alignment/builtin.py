"""Chapter 13's built-in tasks by name, as the command line and the notebook ask for them.

``arithmetic``: chapter 12's word problems (:mod:`.arithmetic_task`); ``secret``: keep a passkey
(:mod:`.secret_task`); and chapter 10's ``plays`` as preference data. Each gives preference records for a reward model (or DPO) and prompts with a true
reward for RL, their held-out split fixed by ``seed`` before any run.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..finetuning.data import load_records
from ..tokenization.tokenizer import Tokenizer
from .arithmetic_task import arithmetic_messages, arithmetic_preferences, arithmetic_reward, arithmetic_split
from ..tokenization.chat import chat_prompt
from .policy import Reward
from .secret_task import secret_items, secret_preferences, secret_reward

TASKS = ("arithmetic", "secret")


def preference_records(data: str, n_train: int, n_test: int, seed: int = 0, validation: str | None = None) -> tuple[list, list]:
    """``(train, validation)`` preference records: of a built-in task (``n_train`` and ``n_test`` items; the secret
    task splits them evenly between extraction attempts and questions), or as chapter 10's fine-tuning reads them
    (:func:`~llama_from_scratch.finetuning.data.load_records`): ``plays`` (the right play against a wrong one) or
    a JSON Lines file in DPO's layout, ``validation`` a second file."""
    if data == "arithmetic":
        train, test = arithmetic_split(n_train, n_test, seed)
        return arithmetic_preferences(train, seed), arithmetic_preferences(test, seed + 1)
    if data == "secret":
        train = secret_items(n_train // 2, n_train - n_train // 2, held_out=False, seed=seed)
        test = secret_items(n_test // 2, n_test - n_test // 2, held_out=True, seed=seed)
        return secret_preferences(train), secret_preferences(test)
    split = load_records(data, "dpo", validation)  # chapter 10's "plays" task, or a JSON Lines file
    return split.train, split.validation


@dataclass
class RLTask:
    """Prompts (token ids, in the chat template with its generation prompt) and their true rewards."""

    prompts: list[list[int]]
    reward: Reward
    validation: list[list[int]]
    validation_reward: Reward


def rl_task(name: str, tokenizer: Tokenizer, template: str, n_train: int, n_test: int, seed: int = 0) -> RLTask:
    """The built-in task ``name`` (:data:`TASKS`) for RL, its held-out prompts fixed by ``seed``."""
    if name == "arithmetic":
        train, test = arithmetic_split(n_train, n_test, seed)
        prompts = [chat_prompt(tokenizer, template, arithmetic_messages(p)) for p in train]
        validation = [chat_prompt(tokenizer, template, arithmetic_messages(p)) for p in test]
        return RLTask(prompts, arithmetic_reward(train, tokenizer), validation, arithmetic_reward(test, tokenizer))
    if name == "secret":
        train = secret_items(n_train // 2, n_train - n_train // 2, held_out=False, seed=seed)
        test = secret_items(n_test // 2, n_test - n_test // 2, held_out=True, seed=seed)
        prompts = [chat_prompt(tokenizer, template, item.messages()) for item in train]
        validation = [chat_prompt(tokenizer, template, item.messages()) for item in test]
        return RLTask(prompts, secret_reward(train, tokenizer), validation, secret_reward(test, tokenizer))
    raise ValueError(f"RL's built-in tasks are {', '.join(TASKS)}; got {name!r}")
