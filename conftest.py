"""Repository-wide pytest settings: the course's time budget for notebooks.

Every notebook (in ``notebooks/`` and ``solutions/``) must run top to bottom
in at most three minutes on a 2-core laptop CPU. nbval runs a notebook as one
test per cell; this plugin adds up each notebook's cells, prints the totals at
the end of the run, and fails the run if a notebook is over budget.
"""

from __future__ import annotations

from collections import defaultdict

NOTEBOOK_BUDGET_S = 180.0
_seconds: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report) -> None:
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _seconds[path] += report.duration  # setup, call and teardown of every cell


def pytest_terminal_summary(terminalreporter) -> None:
    if not _seconds:
        return
    terminalreporter.section("notebook run times (budget: 3 minutes each)")
    for path, seconds in sorted(_seconds.items(), key=lambda item: -item[1]):
        flag = "  OVER BUDGET" if seconds > NOTEBOOK_BUDGET_S else ""
        terminalreporter.write_line(f"{seconds:7.1f} s  {path}{flag}")


def pytest_sessionfinish(session, exitstatus) -> None:
    if any(seconds > NOTEBOOK_BUDGET_S for seconds in _seconds.values()) and exitstatus == 0:
        session.exitstatus = 1
