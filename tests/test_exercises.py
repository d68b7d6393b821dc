"""Exercises are generated from solutions, stay in sync, and fail their checks until solved."""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from llama_from_scratch.cli import main
from llama_from_scratch.course.exercises import (
    WORKING_FOLDER,
    copy_exercise,
    exercise_notebook,
    generate_exercises,
    graded_cells,
)

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


def test_exercises_are_in_sync_with_solutions():
    out_of_date = generate_exercises(ROOT, check=True)
    assert not out_of_date, f"regenerate with `python -m llama_from_scratch exercises`: {out_of_date}"


def test_generator_hides_solutions_and_hidden_tests():
    solution = {
        "cells": [
            {
                "cell_type": "code",
                "metadata": {},
                "execution_count": 3,
                "outputs": [{"output_type": "stream"}],
                "source": "def f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION\n",
            },
            {
                "cell_type": "code",
                "metadata": {"nbgrader": {"grade": True, "points": 1}},
                "execution_count": 4,
                "outputs": [],
                "source": "assert f(1) == 2\n### BEGIN HIDDEN TESTS\nassert f(2) == 4\n### END HIDDEN TESTS\n",
            },
            {"cell_type": "markdown", "metadata": {}, "source": "Why?\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION"},
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    note, *cells = exercise_notebook(solution, "solutions/09_test.ipynb")["cells"]
    assert "make exercise N=09" in "".join(note["source"])
    assert "".join(cells[0]["source"]) == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n"
    assert cells[0]["outputs"] == [] and cells[0]["execution_count"] is None
    assert "".join(cells[1]["source"]) == "assert f(1) == 2\n"
    assert cells[1]["metadata"] == {"nbgrader": {"grade": True, "points": 1}}
    assert "".join(cells[2]["source"]) == "Why?\nYOUR ANSWER HERE"


def test_unbalanced_markers_are_an_error():
    cell = {"cell_type": "code", "metadata": {}, "outputs": [], "source": "### BEGIN SOLUTION\nx = 1\n"}
    with pytest.raises(ValueError, match="never closed"):
        exercise_notebook({"cells": [cell]}, "broken.ipynb")


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_solution_is_a_real_assignment(solution):
    notebook = json.loads(solution.read_text())
    text = "".join("".join(c["source"]) for c in notebook["cells"])
    assert "### BEGIN SOLUTION" in text
    graded = graded_cells(notebook)
    assert graded, "no graded test cells (nbgrader metadata with grade: true)"
    for _, cell in graded:
        assert cell["metadata"]["nbgrader"].get("points", 0) > 0


@pytest.mark.slow  # runs every exercise notebook in a kernel, as nbval runs the notebooks
@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_unsolved_exercise_fails_every_graded_cell(solution):
    """Like `nbgrader validate --invert`: with the answers removed, no graded check may pass."""
    exercise = nbformat.read(ROOT / "exercises" / solution.name, as_version=4)
    NotebookClient(
        exercise, timeout=300, allow_errors=True, resources={"metadata": {"path": str(ROOT / "exercises")}}
    ).execute()
    passing = [
        cell["metadata"]["nbgrader"].get("grade_id", i)
        for i, cell in graded_cells(exercise)
        if not any(output.get("output_type") == "error" for output in cell.get("outputs", []))
    ]
    assert not passing, f"graded cells pass without a solution: {passing}"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_every_exercise_says_where_to_answer(solution):
    first = "".join(json.loads((ROOT / "exercises" / solution.name).read_text())["cells"][0]["source"])
    number = solution.name[:2]
    assert f"make exercise N={number}" in first and f"{WORKING_FOLDER}/{solution.name}" in first


def test_the_working_copy_is_git_ignored():
    ignored = [line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()]
    assert f"{WORKING_FOLDER}/" in ignored


def test_working_copy_keeps_the_answers(tmp_path, capsys):
    """A learner's copy is made once, never overwritten, and regenerating exercises/ leaves it (and the sync) alone."""
    (tmp_path / "solutions").mkdir()
    solution = {
        "cells": [
            {
                "cell_type": "code",
                "metadata": {},
                "execution_count": None,
                "outputs": [],
                "source": "def f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION\n",
            }
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (tmp_path / "solutions" / "02_double.ipynb").write_text(json.dumps(solution))
    generate_exercises(tmp_path)

    assert main(["exercise", "2", "--root", str(tmp_path)]) == 0
    copy = tmp_path / WORKING_FOLDER / "02_double.ipynb"
    assert str(copy) in capsys.readouterr().out
    assert copy.read_text() == (tmp_path / "exercises" / "02_double.ipynb").read_text()
    answered = copy.read_text().replace("raise NotImplementedError()", "return 2 * x")
    copy.write_text(answered)

    assert copy_exercise(tmp_path, "02") == (copy, False)
    assert main(["exercise", "02", "--root", str(tmp_path)]) == 0
    assert "exists already" in capsys.readouterr().out
    solution["cells"][0]["source"] += "# changed\n"
    (tmp_path / "solutions" / "02_double.ipynb").write_text(json.dumps(solution))
    assert generate_exercises(tmp_path) == [tmp_path / "exercises" / "02_double.ipynb"]
    assert copy.read_text() == answered
    assert generate_exercises(tmp_path, check=True) == []  # the sync test of `make test` ignores the copy

    assert main(["exercise", "42", "--root", str(tmp_path)]) == 1
    assert "no exercise 42" in capsys.readouterr().err
