"""Repository-wide pytest settings: the ``slow`` marker on notebooks and the notebooks' time report.

Every notebook (in ``notebooks/`` and ``solutions/``) should run top to bottom in at most 90 seconds on a
2-core laptop CPU. nbval runs a notebook as one test per cell; this plugin marks every cell ``slow`` (so
``make test-fast``, ``pytest -m "not slow"``, leaves the notebooks out), adds up each notebook's cells,
and prints the totals at the end of the run, flagging those over the 90-second budget. The budget is a
target on an idle machine, not a test: a busy machine runs a notebook two or three times slower, and a
red run for that would say nothing about the course. Only a notebook over ``NOTEBOOK_HANG_S`` (ten
minutes, far beyond any slowdown seen) fails the run, as a guard against a notebook that hangs.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

NOTEBOOK_BUDGET_S = 90.0
NOTEBOOK_HANG_S = 600.0
_seconds: dict[str, float] = defaultdict(float)


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if item.nodeid.split("::")[0].endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)


def pytest_runtest_logreport(report) -> None:
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _seconds[path] += report.duration  # setup, call and teardown of every cell


def pytest_terminal_summary(terminalreporter) -> None:
    if not _seconds:
        return
    terminalreporter.section(f"notebook run times (budget: {NOTEBOOK_BUDGET_S:.0f} s each on an idle machine)")
    for path, seconds in sorted(_seconds.items(), key=lambda item: -item[1]):
        flag = "  over budget" if seconds > NOTEBOOK_BUDGET_S else ""
        flag = "  HUNG: the run fails" if seconds > NOTEBOOK_HANG_S else flag
        terminalreporter.write_line(f"{seconds:7.1f} s  {path}{flag}")


def pytest_sessionfinish(session, exitstatus) -> None:
    if any(seconds > NOTEBOOK_HANG_S for seconds in _seconds.values()) and exitstatus == 0:
        session.exitstatus = 1
