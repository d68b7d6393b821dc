"""The course as a website: `make book` builds it from the notebooks' stored outputs, and every page works in
a real browser (book/check_site.py says what "works" means). Also the notebooks' cell ids, which a site built
from all chapters, and a link to a cell (`#cell-id=c04-12` in JupyterLab), need unique across notebooks/.
"""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_every_cell_id_is_unique_across_the_notebooks():
    owners: dict[str, str] = {}
    problems = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            where = f"{path.name}, cell {index}"
            cell_id = cell.get("id")
            if not cell_id:
                problems.append(f"{where}: no id")
            elif cell_id in owners:
                problems.append(f"{where}: id {cell_id!r} is also the id of {owners[cell_id]}")
            else:
                owners[cell_id] = where
    assert len(owners) > 100, "notebooks/ should hold the course's chapters"
    assert not problems, "cell ids must be unique across notebooks/ (prefix them with the chapter: c02-00):\n" + (
        "\n".join(problems)
    )


def chromium() -> str | None:
    """Debian's `chromium` (Playwright cannot download its own browser here)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def tail(result: subprocess.CompletedProcess, lines: int = 60) -> str:
    return "\n".join((result.stdout + result.stderr).splitlines()[-lines:])


@pytest.mark.slow
def test_the_book_builds_and_every_page_works_in_chromium():
    """`make book`, then every page in headless Chromium: no console error, no request leaving the site, every
    image loaded, no TeX left unrendered, every link within the site to a built file and an existing anchor."""
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium to open the pages with (Debian: apt-get install chromium; .ci/run installs it)")
    for tool, why in (("make", "runs the build"), ("npm", "fetches MathJax"), ("tar", "unpacks MathJax")):
        if shutil.which(tool) is None:
            pytest.skip(f"no {tool} ({why}): the book's tooling is not available here")
    start = time.monotonic()
    build = subprocess.run(["make", "book"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    built = time.monotonic()
    assert build.returncode == 0, f"make book failed:\n{tail(build)}"
    python = ROOT / ".venv-book" / "bin" / "python"
    check = subprocess.run(
        [python, ROOT / "book" / "check_site.py", ROOT / "book" / "_build" / "html", "--chromium", browser],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    checked = time.monotonic()
    print(f"make book: {built - start:.0f} s; every page in Chromium: {checked - built:.0f} s", file=sys.stderr)
    assert check.returncode == 0, f"the built book has problems:\n{tail(check, 200)}"
    pages = int(re.search(r"(\d+) pages checked", check.stdout).group(1))
    chapters = len(list(ROOT.glob("notebooks/*.ipynb"))) + len(list(ROOT.glob("exercises/*.ipynb")))
    assert pages > chapters, f"only {pages} pages checked for {chapters} notebooks and exercises"
