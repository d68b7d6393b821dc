"""The stored notebooks are what learners read on GitHub and in the book: clean, from one run, marked with tags.

Checks on the files as stored (nothing is executed here; nbval runs them elsewhere in the suite).
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STORED = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))
EXERCISES = sorted((ROOT / "exercises").glob("*.ipynb"))
WIDGET_STATE, WIDGET_VIEW = "application/vnd.jupyter.widget-state+json", "application/vnd.jupyter.widget-view+json"
# An absolute path into an installation (a virtual environment, a user's folder) or into this clone
MACHINE_PATH = re.compile(r"/(?:work|home|root|Users|tmp)/[^\s\"']*site-packages|" + re.escape(str(ROOT)))


def code_cells(path: Path) -> list[dict]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [c for c in cells if c["cell_type"] == "code" and "".join(c["source"]).strip()]


@pytest.mark.parametrize("path", STORED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_stored_from_one_clean_run(path):
    counts = [c.get("execution_count") for c in code_cells(path)]
    assert counts == list(range(1, len(counts) + 1)), f"execution counts {counts[:8]}...: re-run it top to bottom"


@pytest.mark.parametrize("path", STORED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_nbval_markers_are_tags_not_comments(path):
    """Learners read the code: nbval's markers go into the cell's tags (``nbval-check-output``), not its text."""
    marked = [i for i, c in enumerate(code_cells(path)) if any(line.lstrip().startswith("# NBVAL_") for line in c["source"])]
    assert not marked, f"code cells {marked} carry an NBVAL comment: use the tag instead"


@pytest.mark.parametrize("path", STORED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_path_of_the_authors_machine_in_the_outputs(path):
    found = MACHINE_PATH.findall(json.dumps([c.get("outputs", []) for c in code_cells(path)]))
    assert not found, f"outputs show this machine's paths, e.g. {found[0]!r}: print paths relative to the repository"


def test_no_path_of_the_authors_machine_in_the_benchmark_results():
    """The stored benchmark runs (``benchmarks/results``) are read beside the notebooks: commands and titles
    name a checkpoint as the command line does (``$SMOLLM2``, ``runs/...``), not where it lay on one machine."""
    found = [
        f"{path.relative_to(ROOT)}: {match!r}"
        for path in sorted((ROOT / "benchmarks" / "results").rglob("*"))
        if path.suffix in {".json", ".md", ".csv", ".txt"}
        for match in MACHINE_PATH.findall(path.read_text(encoding="utf-8"))
    ]
    assert not found, f"benchmark results show this machine's paths, e.g. {found[0]}"


def saved_widgets_in_use(notebook: dict) -> set[str]:
    """The widget models an output shows: each view's model and every model it names (``IPY_MODEL_<id>``).

    JupyterLab draws a stored widget view from ``metadata.widgets``; it needs exactly these models.
    """
    state = notebook["metadata"].get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    outputs = [o for c in notebook["cells"] for o in c.get("outputs", [])]
    todo = [o["data"][WIDGET_VIEW]["model_id"] for o in outputs if WIDGET_VIEW in o.get("data", {})]
    used: set[str] = set()
    while todo:
        model = todo.pop()
        if model not in used:
            used.add(model)
            todo += re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(state.get(model, {})))
    return used


@pytest.mark.parametrize("path", STORED + EXERCISES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_saved_widget_state_is_what_the_outputs_show(path):
    """No saved widget state without an output that shows it (progress bars of an old run), none missing for one."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    saved = set(notebook["metadata"].get("widgets", {}).get(WIDGET_STATE, {}).get("state", {}))
    used = saved_widgets_in_use(notebook)
    assert saved <= used, f"{len(saved - used)} saved widget models no output shows: delete metadata.widgets' leftovers"
    assert used <= saved, f"widget outputs without their saved state (JupyterLab shows an error): {sorted(used - saved)}"


def test_cell_ids_unique_across_the_course():
    """The book puts notebooks and exercises on one site, where a cell id is an anchor; solutions give the exercises theirs."""
    seen: dict[str, str] = {}
    repeated = []
    for path in STORED + EXERCISES:
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            where = f"{path.parent.name}/{path.name}"
            if path.parent.name == "exercises" and seen.get(cell["id"], "").startswith("solutions/" + path.name):
                continue  # an exercise keeps the id of the solution cell it is made from
            if cell["id"] in seen:
                repeated.append(f"{cell['id']} ({seen[cell['id']]} and {where})")
            seen.setdefault(cell["id"], where)
    assert not repeated, f"{len(repeated)} repeated cell ids, e.g. {repeated[:3]}"


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_every_figure_is_stored(path):
    """A cell that shows a figure stores it: run with ``MPLBACKEND=Agg`` the kernel draws nothing and every
    stored figure is lost (the book and GitHub show none). Re-execute with the kernel's own inline backend."""
    missing = [
        i
        for i, c in enumerate(code_cells(path))
        if re.search(r"^\s*plt\.show\(\)", "".join(c["source"]), re.MULTILINE)
        and not any("image/png" in o.get("data", {}) or "image/svg+xml" in o.get("data", {}) for o in c["outputs"])
    ]
    assert not missing, f"code cells {missing} call plt.show() but store no image: was MPLBACKEND=Agg set?"
