"""Where a fine-tuning run's data comes from: the built-in "which play?" task, or your own JSON Lines file.

A JSON Lines file holds one object per line. For supervised fine-tuning, a conversation::

    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

for DPO, a prompt and two answers, the preferred first::

    {"messages": [{"role": "user", "content": "..."}], "chosen": "...", "rejected": "..."}

Without a separate validation file the last tenth of the lines is held out. Every malformed line is an
error naming the file and the line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..files import regular_file
from ..errors import FormatError
from . import tasks
from .sft import check_messages

TASK_NAME = "plays"  # --data plays: the built-in task of :mod:`.tasks`
VALIDATION_SHARE = 10  # without a validation file, the last 1/10 of the lines
CACHE_DIR = Path("data") / "finetune"  # where tokenized data is kept (relative to the repository's root)


@dataclass
class RecordSplit:
    """Training and validation records: conversations (SFT) or ``{"messages", "chosen", "rejected"}`` (DPO)."""

    train: list
    validation: list
    task: tasks.PlayTask | None = None  # set for the built-in task, whose accuracy can be measured


def read_jsonl(path: str | Path, objective: str) -> list:
    """The records of a JSON Lines file, each checked for ``objective`` (``"sft"`` or ``"dpo"``)."""
    path = regular_file(path)
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except ValueError as error:
            raise FormatError(f"{where}: not valid JSON ({error})") from None
        if not isinstance(record, dict) or "messages" not in record:
            raise FormatError(f"{where}: expected an object with 'messages'")
        if objective == "dpo":
            if not (isinstance(record.get("chosen"), str) and isinstance(record.get("rejected"), str)):
                raise FormatError(f"{where}: a preference pair needs 'chosen' and 'rejected' strings")
            conversation = record["messages"] + [{"role": "assistant", "content": record["chosen"]}]
        else:
            conversation = record["messages"]
        try:
            check_messages(conversation, where)
        except ValueError as error:
            raise FormatError(str(error)) from None
        records.append(record if objective == "dpo" else record["messages"])
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
