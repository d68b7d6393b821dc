"""Contamination: was an evaluation item in the training data? Then the score measures memory, not skill.

Following the idea of the Llama 2 paper's analysis (Touvron et al. 2023, appendix A.6), in a simplified
form: an item's text is cut into word n-grams (``n`` consecutive words, lower-cased, punctuation kept), and
its *contamination* is the share of its n-grams that occur anywhere in the training corpus. An item is
called contaminated when that share reaches ``threshold`` (Llama 2 calls a sample "dirty" when more than
80% of its tokens lie in spans seen in training). Word n-grams with ``n = 8`` are long enough that a
shared phrase ("I know not what") rarely matches by chance, and short enough to catch an item copied with
small changes.

The corpus's n-grams are kept as a sorted array of 64-bit hashes, not as text: Shakespeare's ~900,000
words give ~900,000 eight-grams, about 7 MB. Python's hash of a tuple of strings changes between
processes, so an index is built and used in the same process; two different n-grams with the same 64-bit
hash (a false match) are unlikely at these sizes (about n^2 / 2^65).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .statistics import Estimate, mean_with_stderr


def words(text: str) -> list[str]:
    return text.lower().split()


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """The hashes of the text's word n-grams, in order: ``(max(0, words - n + 1),)`` int64."""
    w = words(text)
    return np.array([hash(tuple(w[i : i + n])) for i in range(len(w) - n + 1)], dtype=np.int64)


class NgramIndex:
    """The set of a corpus's word n-grams, for looking up many items' n-grams at once."""

    def __init__(self, corpus: str, n: int = 8):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        self.n = n
        self.hashes = np.unique(ngram_hashes(corpus, n))  # sorted

    def share_found(self, text: str) -> float:
        """The share of ``text``'s n-grams found in the corpus (0.0 for a text shorter than ``n`` words)."""
        hashes = ngram_hashes(text, self.n)
        if len(hashes) == 0:
            return 0.0
        positions = np.searchsorted(self.hashes, hashes).clip(max=len(self.hashes) - 1)
        return float(np.mean(self.hashes[positions] == hashes)) if len(self.hashes) else 0.0


@dataclass(frozen=True)
class ContaminationReport:
    """Per task: every item's share of n-grams found, their mean, and how many items reach the threshold."""

    shares: tuple[float, ...]
    mean: Estimate
    contaminated: int
    threshold: float


def contamination(index: NgramIndex, texts: Sequence[str], threshold: float = 0.8) -> ContaminationReport:
    """How much of each evaluation text (an item's question and answer) the corpus holds."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold!r}")
    shares = tuple(index.share_found(text) for text in texts)
    return ContaminationReport(shares, mean_with_stderr(shares), sum(s >= threshold for s in shares), threshold)
