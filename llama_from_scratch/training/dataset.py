"""Token datasets on disk and the random batches a language model trains on.

A tokenised corpus is one long array of token ids. It is stored as raw
``uint16`` (two bytes per token: enough for vocabularies up to 65,536) and
read back with ``numpy.memmap``, so even a corpus larger than memory costs
nothing to open: the operating system pages in only the windows a batch reads.

A training example is a window of ``seq_len + 1`` consecutive tokens: the
model reads the first ``seq_len`` and must predict each next one, so the
targets are the same window shifted by one.

Batches are a pure function of ``(seed, step)``: the same step always draws
the same windows. That is what makes a resumed run repeat the uninterrupted
one exactly, and what lets ``N`` processes split one global batch between them
(process ``rank`` takes its slice) without talking to each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..files import REQUIRED, json_field, read_json, regular_file


@dataclass
class TokenData:
    """Token ids (a memory-mapped ``uint16`` array) and the size of the text they encode.

    ``n_bytes`` (UTF-8 bytes of the original text) turns a loss per token into
    *bits per byte*, which does not depend on the tokenizer: a model with a
    bigger vocabulary has fewer, harder tokens, but the same bytes to predict.
    """

    tokens: np.ndarray
    n_bytes: int

    @property
    def bytes_per_token(self) -> float:
        return self.n_bytes / len(self.tokens)


def write_tokens(path: str | Path, ids: list[int] | np.ndarray, n_bytes: int) -> Path:
    """Write token ids to ``path`` (raw uint16) with a small JSON description beside it."""
    path = Path(path)
    ids = np.asarray(ids)
    if ids.size == 0:
        raise ValueError(f"{path}: no tokens to write (is the corpus empty?)")
    if ids.min() < 0 or ids.max() > np.iinfo(np.uint16).max:
        raise ValueError(
            f"{path}: token ids must lie in [0, 65535] to be stored as uint16, got {ids.min()}..{ids.max()}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    ids.astype(np.uint16).tofile(path)
    path.with_suffix(".json").write_text(
        json.dumps({"n_tokens": int(ids.size), "n_bytes": int(n_bytes), "dtype": "uint16"})
    )
    return path


def read_tokens(path: str | Path) -> TokenData:
    """Memory-map a token file written by :func:`write_tokens`."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.exists() or not meta_path.exists():
        raise FileNotFoundError(f"{path}: token file or its description {meta_path.name} is missing")
    meta = read_json(meta_path)
    n_tokens = json_field(meta, "n_tokens", "int", meta_path, REQUIRED)
    n_bytes = json_field(meta, "n_bytes", "int", meta_path, REQUIRED)
    tokens = np.memmap(regular_file(path), dtype=np.uint16, mode="r")
    if len(tokens) != n_tokens:
        raise ValueError(f"{path}: holds {len(tokens)} tokens, {meta_path.name} says {n_tokens} (truncated file?)")
    return TokenData(tokens, n_bytes)


TRAIN, EVAL = 0, 1  # separate random streams, so evaluation never draws the training windows' sequence


def get_batch(
    data: TokenData,
    step: int,
    batch_size: int,
    seq_len: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    stream: int = TRAIN,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets ``(batch_size, seq_len)`` for one process at one step.

    The global batch of ``batch_size * world_size`` windows is drawn from a
    generator seeded with ``(seed, stream, step)``; process ``rank`` takes its
    ``batch_size`` of them.
    """
    n = len(data.tokens)
    if n < seq_len + 1:
        raise ValueError(f"a window of seq_len + 1 = {seq_len + 1} tokens does not fit in data of {n} tokens")
    rng = np.random.default_rng([seed, stream, step])
    starts = rng.integers(0, n - seq_len, size=batch_size * world_size)[rank * batch_size : (rank + 1) * batch_size]
    windows = np.stack([data.tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
    windows = torch.from_numpy(windows)
    return windows[:, :-1], windows[:, 1:]
