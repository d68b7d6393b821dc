"""The stored notebooks are what learners read on GitHub and in the book: clean, from one run, marked with tags.

Checks on the files as stored (nothing is executed here; nbval runs them elsewhere in the suite).
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STORED = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))
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
