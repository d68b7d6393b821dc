"""Where a fine-tuning run's data comes from: the built-in "which play?" task, or your own JSON Lines file.

A JSON Lines file holds one object per line. For supervised fine-tuning, a conversation::

    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

for DPO, a prompt and two answers, the preferred first::

    {"messages": [{"role": "user", "content": "..."}], "chosen": "...", "rejected": "..."}

Without a separate validation file the last tenth of the lines is held out. Every malformed line is an
error naming the file and the line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..files import REQUIRED, json_field, parse_json, read_bytes
from ..errors import FormatError
from . import tasks
from .sft import check_messages

TASK_NAME = "plays"  # --data plays: the built-in task of :mod:`.tasks`
VALIDATION_SHARE = 10  # without a validation file, the last 1/10 of the lines
CACHE_FOLDER = "data-cache"  # inside a run's folder (--out): its tokenized data, kept for --resume
MAX_DATA_BYTES = 1 << 30  # a JSON Lines file's limit: a gigabyte of conversations is a large fine-tune


@dataclass
class RecordSplit:
    """Training and validation records: conversations (SFT) or ``{"messages", "chosen", "rejected"}`` (DPO)."""

    train: list
    validation: list
    task: tasks.PlayTask | None = None  # set for the built-in task, whose accuracy can be measured


def check_pair(record: dict, where: str) -> str:
    """A preference record's two answers are strings and differ (a pair of equal answers prefers nothing, and
    would teach a reward model or DPO nothing but noise); returns the chosen one. ``where`` names the record."""
    chosen = json_field(record, "chosen", "str", where, REQUIRED)
    rejected = json_field(record, "rejected", "str", where, REQUIRED)
    if chosen == rejected:
        raise FormatError(f"{where}: chosen and rejected are the same text ({chosen[:40]!r}); a pair needs two answers")
    return chosen


def read_jsonl(path: str | Path, objective: str) -> list:
    """The records of a JSON Lines file, each checked for ``objective`` (``"sft"`` or ``"dpo"``).

    The file is read through the package's rules for untrusted files (:mod:`llama_from_scratch.files`): a
    regular file of at most :data:`MAX_DATA_BYTES`, UTF-8, every line a JSON object whose fields have the
    types the objective needs.
    """
    data = read_bytes(path, MAX_DATA_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise FormatError(f"{path}:{line}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        record = parse_json(line, where)
        messages = json_field(record, "messages", "list", where, REQUIRED)
        if objective == "dpo":
            chosen = check_pair(record, where)
            conversation = messages + [{"role": "assistant", "content": chosen}]
        else:
            conversation = messages
        try:
            check_messages(conversation, where)
        except ValueError as error:
            raise FormatError(str(error)) from None
        records.append(record if objective == "dpo" else messages)
    if not records:
        raise FormatError(f"{path}: no records")
    return records


def load_records(
    data: str,
    objective: str,
    validation: str | Path | None = None,
    train_per_play: int | None = None,
    test_per_play: int | None = None,
    max_chars: int = tasks.MAX_CHARS,
) -> RecordSplit:
    """``data`` is ``"plays"`` (the built-in task; ``max_chars``: its longest passage) or a JSON Lines file;
    ``validation`` an optional second file."""
    if data == TASK_NAME:
        task = tasks.play_task(train_per_play=train_per_play, test_per_play=test_per_play, max_chars=max_chars)
        if objective == "dpo":
            return RecordSplit(tasks.preference_data(task, task.train), tasks.preference_data(task, task.test, 1), task)
        return RecordSplit(tasks.sft_conversations(task, task.train), tasks.sft_conversations(task, task.test), task)
    records = read_jsonl(data, objective)
    if validation is not None:
        return RecordSplit(records, read_jsonl(validation, objective))
    cut = len(records) - max(1, len(records) // VALIDATION_SHARE)
    if cut < 1:
        raise ValueError(f"{data}: {len(records)} record(s) cannot be split into training and validation; add more")
    return RecordSplit(records[:cut], records[cut:])
