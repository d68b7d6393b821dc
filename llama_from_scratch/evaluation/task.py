"""What a task is: its items, a separate pool of solved examples for few-shot prompts, and its card.

Three kinds of item, each with a ``context`` (the prompt, ending where the answer begins):

* :class:`~.multiple_choice.MultipleChoiceItem`, answered by likelihood;
* :class:`GenerationItem`, answered by generating text, scored by exact match;
* :class:`CodeProblem`, answered by generating code, scored by running its tests in the sandbox.

A :class:`TaskCard` states what a number on the task means: where the items come from, how many there are,
which split, the chance level (what guessing scores), and the metric.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..finetuning.tasks import evenly_spaced
from .multiple_choice import NORMALIZATIONS, MultipleChoiceItem

KINDS = ("multiple_choice", "generation", "code")


@dataclass(frozen=True)
class GenerationItem:
    """A question whose answer is written: ``context`` (the prompt), ``solution`` (the worked answer a
    few-shot example shows) and ``answers`` (the references the extracted answer is compared with)."""

    context: str
    solution: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class CodeProblem:
    """A function to complete: ``context`` (its signature and docstring), ``solution`` (a reference body),
    ``test`` (code defining ``check(candidate)``) and ``entry_point`` (the function's name)."""

    name: str
    context: str
    solution: str
    test: str
    entry_point: str


Item = MultipleChoiceItem | GenerationItem | CodeProblem


@dataclass(frozen=True)
class TaskCard:
    """What a task measures: ``source`` (where its items come from), ``size`` (items scored), ``split`` (which
    part of the source), ``chance`` (the score of guessing; None where guessing cannot score), ``metric``."""

    name: str
    source: str
    size: int
    split: str
    chance: float | None
    metric: str

    def markdown_row(self) -> str:
        chance = "-" if self.chance is None else f"{self.chance:.0%}"
        return f"| {self.name} | {self.source} | {self.size} | {self.split} | {chance} | {self.metric} |"


CARD_HEADER = "| task | source | items | split | chance | metric |\n|---|---|---|---|---|---|"


@dataclass
class Task:
    """A task: its ``card``, its ``kind`` (one of :data:`KINDS`), the ``items`` scored and the few-shot
    ``pool`` (a separate split; empty where the task is zero-shot only).

    ``normalization``: the multiple-choice score (:mod:`.multiple_choice`); ``stop`` and ``max_new_tokens``:
    where a generated answer ends; ``extract``: the answer inside a generated text (the number after "The
    answer is", say), compared with the item's ``answers``.
    """

    card: TaskCard
    kind: str
    items: list
    pool: list = field(default_factory=list)
    normalization: str = "char"
    stop: tuple[str, ...] = ("\n\n",)
    max_new_tokens: int = 64
    extract: Callable[[str], str] = str.strip

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.card.name}: unknown kind {self.kind!r}; expected one of {KINDS}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"task {self.card.name}: unknown normalization {self.normalization!r}")


def target(item: Item) -> str:
    """The text that follows an item's context when it is shown solved (a few-shot example)."""
    if isinstance(item, MultipleChoiceItem):
        return item.choices[item.answer]
    return item.solution


def limited(count: int, limit: int | None) -> list[int]:
    """The indices of ``limit`` of ``count`` items, spread evenly over the task (all of them for None): a quick
    run still sees every part of it (a prefix could hold one play, one answer, one kind of problem)."""
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be None or an int >= 1, got {limit!r}")
    return evenly_spaced(list(range(count)), limit)
