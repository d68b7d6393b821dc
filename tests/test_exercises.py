"""Exercises are generated from solutions, stay in sync, and fail their checks until solved."""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from llama_from_scratch.course.exercises import exercise_notebook, generate_exercises, graded_cells

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
    cells = exercise_notebook(solution, "test")["cells"]
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
