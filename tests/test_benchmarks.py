"""The benchmarks are not run by the tests (they time things), but each must at least import.

A benchmark that breaks when a package name moves is found here, not months later by whoever reruns it.
Importing runs no measurement: every script does its work under ``if __name__ == "__main__"``.
"""

import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.stem for p in BENCHMARKS.glob("*.py")))
def test_benchmark_imports(script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # benchmarks import each other (decode_smollm2's helpers)
    module = importlib.import_module(script)
    assert callable(getattr(module, "main", None)), f"benchmarks/{script}.py has no main()"
