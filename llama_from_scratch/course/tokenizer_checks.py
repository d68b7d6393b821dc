"""Chapter 01's exercises (the tokenizer): pair counts, a merge, a BPE trainer and the BPE encoder.

Each check calls the learner's function on a few inputs through the skeleton of :mod:`.feedback`
(:func:`~.feedback.check_cases`), compares with the package's :mod:`..tokenization.bpe` and, when the
answer differs, names the catalogued mistake below that gives what the learner got. The wrong answers
are written as a learner writes them, without the package's ``merge`` and ``pair_counts`` that the
exercises rule out (a check would report the forbidden call instead of the mistake); the textbook
encoding loop, :func:`textbook_encode`, is written once, for the expected answers and the mistakes alike.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from itertools import pairwise

from ..tokenization.bpe import merge, pair_counts
from .feedback import Case, Mistake, as_dict, as_list, check_cases, fail

# --- the common wrong answers ---------------------------------------------------------------------


def _pairs(ids):
    return list(pairwise(ids))


PAIR_COUNTS = [
    Mistake(
        "looks like each pair is counted once:\ncount every occurrence (a Counter, or += 1 per pair)",
        lambda ids: {pair: 1 for pair in _pairs(ids)},
    ),
    Mistake(
        "looks like the last id is paired with the first:\nonly neighbours count, n − 1 pairs for n ids",
        lambda ids: dict(Counter(_pairs(ids + ids[:1]))) if len(ids) > 1 else {},
    ),
]


def _merge_without_skip(ids, pair, new_id):
    out = []
    for i, current in enumerate(ids):
        out.append(new_id if tuple(ids[i : i + 2]) == tuple(pair) else current)
    return out


def _merge(ids, pair, new_id, keep_last=True):
    """The merge as the package's :func:`..tokenization.bpe.merge` does it (which the checks forbid, so the
    mistakes cannot call it); ``keep_last=False`` stops at the last pair and drops an unmatched last id."""
    out, i = [], 0
    while i < len(ids) - (0 if keep_last else 1):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


MERGE = [
    Mistake(
        "looks like the second id of a merged pair is kept:\nafter a match, skip both ids (i += 2)",
        _merge_without_skip,
    ),
    Mistake(
        "looks like the last id is dropped when it is not part of a match:\n"
        "after the loop over pairs, keep the id that is left",
        lambda ids, pair, new_id: _merge(ids, pair, new_id, keep_last=False),
    ),
]


def _utf8(text):
    return list(text.encode("utf-8"))


def _earliest(counts, merges):
    return min(counts, key=lambda p: merges.get(p, float("inf")))


def textbook_encode(text: str, merges: dict[tuple[int, int], int], start=_utf8, choose=_earliest) -> list[int]:
    """Byte-level BPE encoding the textbook way: from ``start(text)`` (the UTF-8 bytes), merge the pair that
    ``choose(pair counts, merges)`` picks (the earliest learned: the smallest new id) everywhere, then look again,
    until no pair present has a merge. Another ``start`` or ``choose``: a catalogued mistake."""
    ids = start(text)
    while len(ids) > 1:
        pair = choose(Counter(_pairs(ids)), merges)
        if pair not in merges:
            break
        ids = _merge(ids, pair, merges[pair])
    return ids


def _most_frequent_known(counts, merges):
    known = [p for p in counts if p in merges]
    return min(known, key=lambda p: (-counts[p], p)) if known else None


BPE_ENCODE = [
    Mistake(
        "looks like it starts from code points (ord), not UTF-8 bytes:\n"
        "start from list(text.encode('utf-8')), ids 0-255",
        lambda text, merges: textbook_encode(text, merges, start=lambda t: [ord(c) for c in t]),
    ),
    Mistake(
        "looks like the most frequent pair is merged first:\n"
        "encoding applies the merge learned earliest (the smallest new id)",
        lambda text, merges: textbook_encode(text, merges, choose=_most_frequent_known),
    ),
    Mistake(
        "looks like the merge learned last is applied first:\nchoose the smallest new id, not the largest",
        lambda text, merges: textbook_encode(
            text, merges, choose=lambda c, m: max((p for p in c if p in m), key=m.get, default=None)
        ),
    ),
]


def train_bpe(text: str, n_merges: int, tie_break: Callable = lambda pair: pair) -> dict[tuple[int, int], int]:
    """The trainer of exercise 01: the most frequent pair, ties to the smallest (another ``tie_break``: a mistake)."""
    ids, merges = list(text.encode("utf-8")), {}
    for new_id in range(256, 256 + n_merges):
        counts = Counter(_pairs(ids))
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], tie_break(p)))
        ids, merges[best] = _merge(ids, best, new_id), new_id
    return merges


TRAIN_BPE = [
    Mistake(
        "looks like a tie goes to the largest pair:\nchoose the smallest, min over (-count, pair)",
        lambda text, n: train_bpe(text, n, tie_break=lambda p: (-p[0], -p[1])),
    ),
    Mistake(
        "looks like the new ids start at 255 or 257:\nthe first merge gets 256, the next 257, ...",
        lambda text, n: {pair: i - 1 for pair, i in train_bpe(text, n).items()},
    ),
    Mistake(
        "looks like the new ids start at 255 or 257:\nthe first merge gets 256, the next 257, ...",
        lambda text, n: {pair: i + 1 for pair, i in train_bpe(text, n).items()},
    ),
]


# --- the checks -----------------------------------------------------------------------------------


def _unchanged(case, given, got):
    """A ``before`` of :func:`~.feedback.check_cases`: the answer left its first argument, the ids, as it was."""
    if given[0] != case.args[0]:
        raise fail(
            case.label,
            f"  the input became {given[0]}" if len(given[0]) < 20 else "  the input ids changed",
            "looks like it changes its input:\nbuild and return a new list",
        )


def check_pair_counts(fn: Callable[[list[int]], dict[tuple[int, int], int]]) -> None:
    """``fn(ids)``: how often each pair of neighbouring ids occurs, as ``{(a, b): count}``; ``ids`` unchanged."""
    cases = [(f"my_pair_counts({ids})", ids) for ids in [[], [1], [1, 2, 3, 1, 2], [5, 5, 5, 5], [7, 8, 7, 8]]]
    cases += [("my_pair_counts(the bytes of 'the cat in the hat')", list(b"the cat in the hat"))]
    rng = random.Random(0)
    cases += [(f"my_pair_counts({n} random ids in 0 ... 4)", [rng.randrange(5) for _ in range(n)]) for n in (50, 1000)]
    cases = [Case(label, (ids,), dict(pair_counts(ids))) for label, ids in cases]
    check_cases(
        "pair counts", "my_pair_counts", fn, cases, mistakes=PAIR_COUNTS, forbidden=[pair_counts], convert=as_dict,
        before=_unchanged,
    )


def check_merge(fn: Callable[[list[int], tuple[int, int], int], list[int]]) -> None:
    """``fn(ids, pair, new_id)``: replace every non-overlapping occurrence of ``pair``, left to right."""
    cases = [([1, 2, 3, 1, 2], (1, 2), 9), ([5, 5, 5], (5, 5), 7), ([1, 2], (2, 1), 3), ([], (1, 2), 3)]
    cases += [([4, 1, 2, 1, 2, 6], (1, 2), 8), ([1, 2, 1, 2, 2, 1], (1, 2), 9), ([5, 5, 5, 5], (5, 5), 7)]
    cases += [([3], (3, 3), 4), ([1, 2, 3], (3, 1), 4)]
    cases = [
        Case(f"my_merge({ids}, {pair}, {new_id})", (ids, pair, new_id), merge(ids, pair, new_id))
        for ids, pair, new_id in cases
    ]
    check_cases("merge", "my_merge", fn, cases, mistakes=MERGE, forbidden=[merge], convert=as_list, before=_unchanged)


def check_train_bpe(fn: Callable[[str, int], dict[tuple[int, int], int]]) -> None:
    """``fn(text, n_merges)``: learn up to ``n_merges`` merges, most frequent pair first, ties to the smallest."""
    from ..training.corpus import shakespeare

    cases = [("aaabdaaabac", 3), ("ab", 5), ("", 2), ("é é", 2), ("aaaaaaaa", 10), ("to be or not to be", 6)]
    cases = [(f"my_train_bpe({text!r}, {n})", text, n) for text, n in cases]
    sample = shakespeare().train[:3000] + " naïve café — 😀"
    cases += [("my_train_bpe(3,000 characters of Shakespeare, accents and an emoji, 60)", sample, 60)]

    def in_order(case, got):
        if list(got.values()) != sorted(got.values()):
            raise fail(
                case.label, f"  {got}", "the merges are out of order:\nreturn them in the order they were learned"
            )

    cases = [Case(label, (text, n), train_bpe(text, n)) for label, text, n in cases]
    check_cases(
        "train bpe",
        "my_train_bpe",
        fn,
        cases,
        mistakes=TRAIN_BPE,
        forbidden=[merge, pair_counts],
        convert=as_dict,
        after=in_order,
    )


def check_bpe_encode(fn: Callable[[str, dict[tuple[int, int], int]], list[int]]) -> None:
    """``fn(text, merges)``: byte-level BPE encoding.

    Start from the UTF-8 bytes of ``text`` (ids 0-255), then repeatedly apply
    the learned merge with the lowest new id (the earliest learned) among the
    pairs present, until no pair has a merge. ``merges`` maps ``(a, b)`` to
    the new id.
    """
    from ..training.corpus import shakespeare

    merges = {(116, 104): 256, (256, 101): 257, (97, 116): 258, (32, 257): 259, (104, 258): 260}
    merges |= {(104, 97): 261, (261, 116): 262, (32, 262): 263}  # "ha", "hat", " hat": learned after "at"
    texts = ["", "x", "the hat", "the cat in the hat", "héllo wörld", "thethe", "that hat"]
    cases = [Case(f"my_encode({text!r})", (text, merges), textbook_encode(text, merges)) for text in texts]
    sample = shakespeare().train[:3000]
    learned = train_bpe(sample, 80)  # merges learned on the text itself: encoding it replays them
    for label, text in [("3,000 characters of Shakespeare", sample), ("'naïve café 😀'", "naïve café 😀")]:
        cases.append(Case(f"my_encode({label}, 80 merges learned on Shakespeare)", (text, learned),
                          textbook_encode(text, learned)))  # fmt: skip
    check_cases(
        "bpe encode", "my_encode", fn, cases, mistakes=BPE_ENCODE, forbidden=[merge, pair_counts], convert=as_list
    )
