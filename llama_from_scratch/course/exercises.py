"""Generate the learners' exercise notebooks from the solution notebooks.

``solutions/NN_name.ipynb`` is the source of every assignment, written in
nbgrader's format, so an instructor can also hand it to ``nbgrader`` itself:

* in a code cell, the lines between ``### BEGIN SOLUTION`` and
  ``### END SOLUTION`` are the answer; the exercise gets, at the same
  indentation, ``# YOUR CODE HERE`` and ``raise NotImplementedError()``;
* in a markdown cell, the same markers enclose a model answer, replaced by
  ``YOUR ANSWER HERE``;
* lines between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` are
  instructors' extra tests, removed from the exercise;
* graded cells carry nbgrader metadata (``grade``, ``grade_id``, ``points``,
  ``solution``, ``locked``), which is kept.

Outputs and execution counts are cleared, so an exercise starts blank, and a
first cell tells the learner to work in a copy. Run
``python -m llama_from_scratch exercises`` after changing a solution;
``--check`` reports exercises that are out of date without writing them.

Learners answer in their own copy, ``my_exercises/NN_name.ipynb``
(:func:`copy_exercise`, ``python -m llama_from_scratch exercise NN``): git
ignores that folder, regenerating never touches it, and ``exercises/`` stays
exactly what the generator writes.
"""

from __future__ import annotations

import json
from pathlib import Path

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
WORKING_FOLDER = "my_exercises"  # the learners' copies; in .gitignore


def working_copy_note(name: str) -> dict:
    """The first cell of every exercise: where to answer it, so that answers survive updates of the course."""
    number = name.split("_", 1)[0]
    text = (
        "> **Answer in your own copy, not in this file.** `exercises/` is generated from `solutions/`: a `git pull`\n"
        f"> or a regeneration would overwrite your answers. `make exercise N={number}` (or\n"
        f"> `python -m llama_from_scratch exercise {number}`) copies this notebook to `{WORKING_FOLDER}/{name}`,\n"
        "> a folder git ignores; open it from JupyterLab's file browser. If you are reading this in\n"
        f"> `{WORKING_FOLDER}/`, you are in your copy already."
    )
    # Cell ids are unique across the course (the book puts every exercise on one site), so this one names its chapter
    return {
        "cell_type": "markdown",
        "id": f"working-copy-{number}",
        "metadata": {},
        "source": text.splitlines(keepends=True),
    }


def _strip_block(lines: list[str], begin: str, end: str, replacement: list[str], source: str) -> list[str]:
    """Replace every ``begin ... end`` block (marker lines included) by ``replacement`` at the block's indentation."""
    out: list[str] = []
    inside = False
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped == begin:
            if inside:
                raise ValueError(f"{source}: line {number}: {begin!r} inside another {begin!r}")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out += [indent + r for r in replacement]
        elif stripped == end:
            if not inside:
                raise ValueError(f"{source}: line {number}: {end!r} without {begin!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{source}: {begin!r} is never closed by {end!r}")
    return out


def exercise_cell(cell: dict, source: str) -> dict:
    """The learner's version of one solution cell."""
    cell = json.loads(json.dumps(cell))  # a deep copy
    cell.get("metadata", {}).pop("execution", None)  # the solution run's timings say nothing about the exercise
    lines = "".join(cell.get("source", "")).split("\n")
    if cell["cell_type"] == "code":
        lines = _strip_block(
            lines, BEGIN_SOLUTION, END_SOLUTION, ["# YOUR CODE HERE", "raise NotImplementedError()"], source
        )
        lines = _strip_block(lines, BEGIN_HIDDEN, END_HIDDEN, [], source)
        cell["outputs"] = []
        cell["execution_count"] = None
    elif cell["cell_type"] == "markdown":
        lines = _strip_block(lines, BEGIN_SOLUTION, END_SOLUTION, ["YOUR ANSWER HERE"], source)
    text = "\n".join(lines)
    cell["source"] = text.splitlines(keepends=True)
    return cell


def exercise_notebook(solution: dict, source: str) -> dict:
    """The learner's version of a whole solution notebook, opened by the note on working in a copy."""
    notebook = dict(solution)
    cells = [exercise_cell(cell, f"{source}, cell {i}") for i, cell in enumerate(solution["cells"])]
    notebook["cells"] = [working_copy_note(Path(source).name), *cells]
    return notebook


def render(notebook: dict) -> str:
    """Notebook JSON as Jupyter itself writes it (one-space indent, trailing newline)."""
    return json.dumps(notebook, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def generate_exercises(root: Path, check: bool = False) -> list[Path]:
    """Write ``exercises/X.ipynb`` for every ``solutions/X.ipynb``; return the files that changed.

    With ``check=True`` nothing is written: the returned files are the ones out of date.
    Exercises without a solution are reported too (they must not be written by hand).
    """
    solutions, exercises = root / "solutions", root / "exercises"
    changed = []
    for path in sorted(solutions.glob("*.ipynb")):
        text = render(exercise_notebook(json.loads(path.read_text()), str(path)))
        target = exercises / path.name
        if not target.exists() or target.read_text() != text:
            changed.append(target)
            if not check:
                exercises.mkdir(exist_ok=True)
                target.write_text(text)
    orphans = [p for p in sorted(exercises.glob("*.ipynb")) if not (solutions / p.name).exists()]
    if orphans:
        raise ValueError(f"exercises without a solution (generated files only): {', '.join(map(str, orphans))}")
    return changed


def graded_cells(notebook: dict) -> list[tuple[int, dict]]:
    """The autograded test cells of a notebook: nbgrader ``grade`` cells that are not solutions."""
    return [
        (i, cell)
        for i, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code"
        and cell.get("metadata", {}).get("nbgrader", {}).get("grade")
        and not cell["metadata"]["nbgrader"].get("solution")
    ]


def find_exercise(root: Path, number: str) -> Path:
    """``exercises/NN_*.ipynb`` for a chapter number such as ``"02"`` or ``"2"``."""
    exercises = root / "exercises"
    if not number.isdigit():
        raise ValueError(f"exercise number: expected a chapter number such as 02, got {number!r}")
    matches = sorted(exercises.glob(f"{int(number):02d}_*.ipynb"))
    if not matches:
        available = ", ".join(p.name.split("_", 1)[0] for p in sorted(exercises.glob("*.ipynb")))
        raise ValueError(f"no exercise {int(number):02d} in {exercises} (there are: {available or 'none'})")
    return matches[0]


def copy_exercise(root: Path, number: str) -> tuple[Path, bool]:
    """Copy ``exercises/NN_*.ipynb`` to ``my_exercises/``; never overwrite a copy that exists.

    Returns the copy's path and whether it was written now (``False``: it was there, with the
    learner's answers, and is left alone).
    """
    source = find_exercise(root, number)
    target = root / WORKING_FOLDER / source.name
    if target.exists():
        return target, False
    target.parent.mkdir(exist_ok=True)
    with open(target, "x", encoding="utf-8") as file:  # "x": fails rather than overwrite a copy made meanwhile
        file.write(source.read_text(encoding="utf-8"))
    return target, True
