"""Ghost Attention (GAtt, Llama 2 section 3.3): a system instruction that is still obeyed six turns later.

A chat model told "answer in capital letters" in its first turn tends to forget it a few turns on: in its
fine-tuning data the instruction sat right next to each answer. GAtt's trick is in the data alone:

1. *sampling*: take dialogues of several user turns and attach the instruction to **every** user turn; the
   model, seeing the instruction right there, follows it in each answer (:func:`sampling_messages`,
   :func:`sample_dialogues`);
2. *training*: keep the instruction in the **first** user turn only, and set the loss to zero on every token of
   the earlier turns, the assistant's included (:func:`gatt_example`, chapter 10's -100 labels): the model
   learns to produce the last turn's instruction-following answer while the instruction is far back in its
   context, so attention has to reach for it ("ghost" attention).

Adherence (:func:`adherence_by_turn`) is measured the way the model is used: the instruction in the first turn
only, the model answering its own conversation, each answer checked by the instruction's rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..finetuning.sft import IGNORE_INDEX, Example, tokenize_conversation
from ..generate import GenerationConfig, generate_batch
from ..model import Llama
from ..tokenization.chat import chat_stop_tokens
from ..tokenization.tokenizer import Tokenizer
from ..tokenization.chat import chat_prompt


def _all_capitals(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and all(c.isupper() for c in letters)


def _ends_with_bye(text: str) -> bool:
    return text.rstrip().rstrip(".!").endswith("Bye")


def _starts_with_ahoy(text: str) -> bool:
    return text.lstrip().startswith("Ahoy!")


@dataclass(frozen=True)
class Instruction:
    """A system instruction whose adherence a rule can check: ``text`` (what the user says) and ``follows(answer)``."""

    text: str
    follows: Callable[[str], bool]


INSTRUCTIONS = {
    "capitals": Instruction("Always answer in capital letters.", _all_capitals),
    "bye": Instruction("Always end your answer with the word Bye.", _ends_with_bye),
    "ahoy": Instruction("Always start your answer with Ahoy!", _starts_with_ahoy),
}


def _dialogue(users: Sequence[str], assistants: Sequence[str], instruction: str, every_turn: bool) -> list[dict]:
    messages = []
    for turn, user in enumerate(users):
        content = f"{instruction} {user}" if every_turn or turn == 0 else user
        messages.append({"role": "user", "content": content})
        if turn < len(assistants):
            messages.append({"role": "assistant", "content": assistants[turn]})
    return messages


def sampling_messages(instruction: str, users: Sequence[str], assistants: Sequence[str]) -> list[dict[str, str]]:
    """The dialogue to sample the next answer from: ``instruction`` attached to every user turn; ``assistants``
    the answers so far (one fewer than ``users``)."""
    if len(assistants) != len(users) - 1:
        raise ValueError(f"sampling the answer to the last of {len(users)} user turns needs {len(users) - 1} answers, got {len(assistants)}")
    return _dialogue(users, assistants, instruction, every_turn=True)


def training_messages(instruction: str, users: Sequence[str], assistants: Sequence[str]) -> list[dict[str, str]]:
    """The dialogue to train on: ``instruction`` in the first user turn only; one answer per user turn."""
    if len(assistants) != len(users):
        raise ValueError(f"a training dialogue needs one answer per user turn: {len(users)} turns, {len(assistants)} answers")
    return _dialogue(users, assistants, instruction, every_turn=False)


def gatt_example(
    tokenizer: Tokenizer, template: str, instruction: str, users: Sequence[str], assistants: Sequence[str]
) -> Example:
    """GAtt's training example: :func:`training_messages` tokenized (chapter 10), the labels of every earlier
    turn set to -100 so that only the last answer carries loss."""
    messages = training_messages(instruction, users, assistants)
    example = tokenize_conversation(tokenizer, template, messages)
    if len(users) == 1:
        return example
    # the template only appends (tokenize_conversation checks it): the earlier turns are a prefix of the tokens
    earlier = len(tokenize_conversation(tokenizer, template, messages[:-2]).tokens)
    return Example(example.tokens, [IGNORE_INDEX] * earlier + example.labels[earlier:])


def _converse(
    model: Llama,
    tokenizer: Tokenizer,
    template: str,
    instruction: str,
    dialogues: Sequence[Sequence[str]],
    every_turn: bool,
    max_new_tokens: int,
    temperature: float,
    seed: int | None,
) -> list[list[str]]:
    """Each dialogue's answers, turn by turn, all dialogues in one batch per turn."""
    turns = {len(d) for d in dialogues}
    if len(turns) != 1:
        raise ValueError(f"every dialogue needs the same number of user turns, got {sorted(turns)}")
    answers: list[list[str]] = [[] for _ in dialogues]
    stops = chat_stop_tokens(tokenizer)
    for turn in range(turns.pop()):
        prompts = [
            chat_prompt(tokenizer, template, _dialogue(d[: turn + 1], a, instruction, every_turn))
            for d, a in zip(dialogues, answers)
        ]
        seed_turn = None if seed is None else seed + turn
        new = generate_batch(model, prompts, GenerationConfig(max_new_tokens, temperature, stop_tokens=stops, seed=seed_turn))
        for a, tokens in zip(answers, new):
            a.append(tokenizer.decode(tokens).strip())
    return answers


def sample_dialogues(
    model: Llama,
    tokenizer: Tokenizer,
    template: str,
    instruction: Instruction,
    dialogues: Sequence[Sequence[str]],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int | None = None,
) -> list[Example]:
    """GAtt's data: answer each dialogue (lists of user turns) with the instruction attached to every turn, then
    one :func:`gatt_example` per dialogue and turn (the dialogue cut after that turn) whose answer so far all
    follow the instruction's rule (Llama 2 trained on samples that obeyed; a dialogue is dropped from its first
    disobedient answer on)."""
    text = instruction.text
    answers = _converse(model, tokenizer, template, text, dialogues, True, max_new_tokens, temperature, seed)
    examples = []
    for users, said in zip(dialogues, answers):
        for t in range(len(users)):
            if not instruction.follows(said[t]):
                break
            examples.append(gatt_example(tokenizer, template, text, users[: t + 1], said[: t + 1]))
    return examples


def adherence_by_turn(
    model: Llama,
    tokenizer: Tokenizer,
    template: str,
    instruction: Instruction,
    dialogues: Sequence[Sequence[str]],
    max_new_tokens: int = 64,
) -> list[float]:
    """The share of dialogues whose answer at turn 1, 2, ... follows ``instruction`` (given in the first turn
    only; greedy answers)."""
    answers = _converse(model, tokenizer, template, instruction.text, dialogues, False, max_new_tokens, 0.0, None)
    return [sum(instruction.follows(a[t]) for a in answers) / len(answers) for t in range(len(dialogues[0]))]
