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

Encoding replays the learned merges on a new text. The textbook loop, find the best pair present and
:func:`merge` it everywhere, then look again, is quadratic: :func:`merge_by_priority` gives the same pieces in
near-linear time with a heap, and both encoders (:mod:`.byte_bpe`, :mod:`.sentencepiece_bpe`) use it.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

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


def merge_by_priority(symbols: Sequence[str], priority: Callable[[tuple[str, str]], Any]) -> list[str]:
    """Repeatedly merge the neighbouring pair of lowest ``priority`` (the leftmost on a tie), until no pair has one.

    ``priority(pair)`` returns a sortable key, lower merging first, or ``None`` when the pair never merges: a
    merge rule's rank for byte-level BPE (``ranks.get``), minus the merged piece's score for SentencePiece.
    ``merge_by_priority("aaab", {("a", "a"): 0, ("a", "b"): 1}.get) -> ["aa", "ab"]``: the two overlapping
    ``("a", "a")`` pairs tie, the leftmost wins and the other is gone, as with :func:`merge`.

    **Why a heap.** The textbook loop scans all pairs for the best one, merges it, and scans again. A text of
    ``n`` symbols that ends as a few pieces needs about ``n`` merges, each after a scan of up to ``n`` pairs:
    ``O(n^2)``, which is what hangs on one long word without spaces. But a merge changes only its own
    neighbourhood: the pairs ``(left neighbour, new symbol)`` and ``(new symbol, right neighbour)`` appear,
    and nothing else moves. So the symbols live in a doubly linked list (``prev``/``nxt`` indices: removing
    one is O(1)), and every candidate pair sits in a heap keyed by ``(priority, position)``, pushed once when
    its two symbols become neighbours: ``n - 1`` at the start and at most two per merge. Popping the heap
    gives the best pair, the leftmost among equals. An entry whose symbols have changed since it was pushed
    (one of them was merged into something else) is *stale* and skipped: checking is cheaper than deleting
    it from the heap. At most ``3n`` pushes and pops of ``O(log n)`` each: ``O(n log n)``. SentencePiece,
    Hugging Face ``tokenizers`` and llama.cpp all encode this way.

    Work, for the complexity test: ``priority`` is called exactly once per pushed pair, so counting its calls
    counts the heap's work (``tests/test_tokenizer_complexity.py`` does).
    """
    pieces: list[str | None] = list(symbols)  # None: merged into its left neighbour
    n = len(pieces)
    prev = list(range(-1, n - 1))  # the doubly linked list over the symbols still alive; -1: none
    nxt = [*range(1, n), -1] if n else []
    heap = []  # (priority, position of the left symbol, left, right)
    for i in range(n - 1):
        key = priority((pieces[i], pieces[i + 1]))
        if key is not None:
            heap.append((key, i, pieces[i], pieces[i + 1]))
    heapq.heapify(heap)
    while heap:
        _, i, left, right = heapq.heappop(heap)
        j = nxt[i]
        if pieces[i] != left or j < 0 or pieces[j] != right:
            continue  # stale: one of its two symbols was merged into something else since it was pushed
        pieces[i], pieces[j] = left + right, None
        k = nxt[i] = nxt[j]
        if k >= 0:
            prev[k] = i
        for a, b in ((prev[i], i), (i, k)):  # the two new neighbourhoods
            if a >= 0 and b >= 0:
                key = priority((pieces[a], pieces[b]))
                if key is not None:
                    heapq.heappush(heap, (key, a, pieces[a], pieces[b]))
    return [p for p in pieces if p is not None]
