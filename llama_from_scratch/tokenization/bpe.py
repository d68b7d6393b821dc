"""The one operation of byte-pair encoding: merge a pair of neighbouring symbols into one.

BPE (Sennrich et al., 2016) learns a vocabulary by repeating two steps, count the pairs of neighbouring
symbols and merge the most frequent pair into a new symbol, and encodes a text by replaying the merges it
learned. Both directions use the same :func:`merge`: the trainer (:mod:`.trainer`), the byte-level
encoder (:mod:`.byte_bpe`) and the exercise checks. Symbols may be strings (``"a" + "b" -> "ab"``) or
integer ids (``(97, 98) -> 256``); ``merge`` does not care.

A worked example. The word ``banana`` as characters, merging the pair ``("a", "n")``::

    b a n a n a   ->   b an an a

Pairs are found left to right and do not overlap, so merging ``("a", "a")`` in ``a a a`` gives ``aa a``,
not ``a aa``. The pair counts change only around each merge: ``(b, a)``, ``(a, n)`` twice and
``(n, a)`` twice are replaced by ``(b, an)``, ``(an, an)`` and ``(an, a)``, which is how a trainer
updates its table without recounting the whole corpus (:func:`pair_counts` before and after).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from typing import TypeVar

Symbol = TypeVar("Symbol", bound=Hashable)


def pair_counts(symbols: Sequence[Symbol]) -> Counter[tuple[Symbol, Symbol]]:
    """How often each pair of neighbours occurs: ``pair_counts("banana") -> {(b,a): 1, (a,n): 2, (n,a): 2}``."""
    return Counter(zip(symbols, symbols[1:]))


def merge(symbols: Sequence[Symbol], pair: tuple[Symbol, Symbol], new: Symbol) -> list[Symbol]:
    """Replace every occurrence of ``pair`` in ``symbols``, left to right and without overlap, by ``new``.

    ``merge(list("banana"), ("a", "n"), "an") -> ["b", "an", "an", "a"]``;
    ``merge([5, 5, 5], (5, 5), 7) -> [7, 5]``. The input is not changed.
    """
    out, i, n = [], 0, len(symbols)
    while i < n:
        if i + 1 < n and symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
            out.append(new)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out
