"""The tasks by name, and tasks read from a file: what ``--tasks`` accepts.

A name of :data:`TASKS` builds a shipped task; anything else that names a file is read by
:func:`read_task_file`: JSON lines, one item per line, ``{"context", "choices", "answer"}`` for multiple
choice (``answer``: the index of the right choice; each choice follows the context after one space,
lm-evaluation-harness's ``target_delimiter``) or ``{"context", "answers"}`` for a generation task
(``answers``: the references). The same file can be lm-evaluation-harness's data file (``dataset_path:
json``), so both harnesses score the same items.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..errors import FormatError
from ..files import check_type, regular_file
from .arithmetic import arithmetic
from .humaneval import humaneval
from .multiple_choice import NORMALIZATIONS, MultipleChoiceItem
from .shakespeare_tasks import next_line, which_play, who_speaks
from .task import GenerationItem, Task, TaskCard

TASKS: dict[str, Callable[[], Task]] = {
    "who-speaks": who_speaks,
    "next-line": next_line,
    "which-play": which_play,
    "arithmetic": arithmetic,
    "humaneval": humaneval,
}


def load_task(name: str, normalization: str = "char") -> Task:
    """The task ``name`` (one of :data:`TASKS`), or the task in the file ``name``."""
    if name in TASKS:
        return TASKS[name]()
    if Path(name).is_file():
        return read_task_file(name, normalization)
    raise ValueError(f"unknown task {name!r}: expected one of {', '.join(TASKS)}, or a task file (JSON lines)")


def _item(record: object, where: str) -> MultipleChoiceItem | GenerationItem:
    check_type(record, "dict", where)
    context = check_type(record.get("context"), "str", f"{where}: context")
    if "choices" in record:
        choices = check_type(record["choices"], "list", f"{where}: choices", items="str")
        answer = check_type(record.get("answer"), "int", f"{where}: answer")
        if len(choices) < 2 or not 0 <= answer < len(choices):
            raise FormatError(f"{where}: expected at least 2 choices and 0 <= answer < {len(choices)}, got {answer}")
        return MultipleChoiceItem(context, tuple(" " + choice for choice in choices), answer)
    if "answers" in record:
        answers = check_type(record["answers"], "list", f"{where}: answers", items="str")
        if not answers:
            raise FormatError(f"{where}: answers is empty")
        return GenerationItem(context, " " + answers[0], tuple(answers))
    raise FormatError(f"{where}: expected choices and answer (multiple choice) or answers (generation)")


def read_task_file(path: str | Path, normalization: str = "char") -> Task:
    """A task from a JSON-lines file of items of one kind (no few-shot pool: zero-shot only)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}")
    path = regular_file(path)
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise FormatError(f"{path}: not UTF-8 text ({error})") from None
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as error:
            raise FormatError(f"{path}, line {number}: not valid JSON ({error})") from None
        items.append(_item(record, f"{path}, line {number}"))
    if not items:
        raise FormatError(f"{path}: no items")
    if len({type(item) for item in items}) > 1:
        raise FormatError(f"{path}: mixes multiple-choice and generation items; one task holds one kind")
    if isinstance(items[0], MultipleChoiceItem):
        chance = sum(1 / len(item.choices) for item in items) / len(items)
        card = TaskCard(path.stem, str(path), len(items), "file", chance, f"accuracy ({normalization})")
        return Task(card, "multiple_choice", items, normalization=normalization)
    card = TaskCard(path.stem, str(path), len(items), "file", None, "exact match")
    return Task(card, "generation", items)
