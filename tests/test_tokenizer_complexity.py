"""Both encoders are near-linear on long runs without spaces, and the heap gives the textbook's pieces.

Speed is measured in ``benchmarks/tokenizer_speed.py``, never here: these tests count *work*, not seconds.
The unit of work is a look-up of a pair in the vocabulary, which is what every BPE encoder does for each
candidate pair; :func:`~llama_from_scratch.tokenization.bpe.merge_by_priority` makes exactly one per pair it
pushes on its heap, so the count is the heap's work too (each push and pop costs ``O(log n)`` on top). We
count by handing the encoder a dictionary that counts its ``get`` calls. The textbook loop looks every pair
up again in every pass: on 500 random letters with SmolLM2's vocabulary it compared 65,521 pairs, on 4,000
1,855,306 (28 times as many for 8 times the text); the heap looks up about ``n + 2 * merges`` pairs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import random
import string
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import SMOLLM2, SMOLLM2_INSTALL
from llama_from_scratch.checkpoints import load_tokenizer
from llama_from_scratch.tokenization import ByteLevelBPE, SentencePieceTokenizer, merge, pair_counts
from llama_from_scratch.tokenization.byte_bpe import GPT2_PATTERN, bytes_to_unicode, pre_tokenize
from llama_from_scratch.tokenization.sentencepiece_model import Piece, PieceType
from llama_from_scratch.tokenization.trainer import train_bpe

pytest.importorskip("regex", reason="byte-level BPE needs the regex package")

SAMPLE = """To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer the slings
and arrows of outrageous fortune, or to take arms against a sea of troubles and by opposing end them. To die,
to sleep, no more; and by a sleep to say we end the heart-ache and the thousand natural shocks that flesh is
heir to: 'tis a consummation devoutly to be wish'd. To die, to sleep; to sleep, perchance to dream: ay,
there's the rub, for in that sleep of death what dreams may come, when we have shuffled off this mortal
coil, must give us pause. There's the respect that makes calamity of so long life."""

N = 2_000  # each input is encoded at N and 8 N characters
GROWTH = 8 * 1.5  # allowed growth of the work for 8 times the input: linear, with room for a log factor


def long_runs(n: int) -> dict[str, str]:
    """Inputs of ``n`` characters with no space: the cases that made the textbook loop hang."""
    rng = random.Random(n)
    words = "".join(c for c in SAMPLE.lower() if c.isalpha())
    return {
        "random letters": "".join(rng.choice(string.ascii_letters) for _ in range(n)),
        "one letter repeated": "a" * n,
        "words run together": (words * (n // len(words) + 1))[:n],
    }


class CountingDict(dict):
    """A dictionary that counts its ``get`` calls: the encoders' look-ups of candidate pairs."""

    calls = 0

    def get(self, key, default=None):
        self.calls += 1
        return super().get(key, default)


def textbook_merges(text: str, n_merges: int) -> list[tuple[str, str]]:
    """Byte-level merge rules learned the textbook way, with ``pair_counts`` and ``merge``: most frequent first."""
    table = bytes_to_unicode()
    words = Counter(tuple(table[b] for b in w.encode("utf-8")) for w in pre_tokenize(text, (GPT2_PATTERN,)))
    merges = []
    for _ in range(n_merges):
        counts = Counter()
        for word, count in words.items():
            for pair, k in pair_counts(word).items():
                counts[pair] += k * count
        if not counts:
            break
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        merged = Counter()
        for word, count in words.items():
            merged[tuple(merge(word, best, best[0] + best[1]))] += count
        words = merged
    return merges


def textbook_bpe(chunk: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """The definition of encoding (notebook 01): merge the best-ranked pair everywhere, then look again."""
    symbols = list(chunk)
    while len(symbols) > 1:
        best = min(pair_counts(symbols), key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break
        symbols = merge(symbols, best, best[0] + best[1])
    return symbols


def byte_level(merges: list[tuple[str, str]], **options) -> ByteLevelBPE:
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    return ByteLevelBPE(vocab, merges, **options)


@pytest.fixture(scope="module", params=["trained", "smollm2"])
def byte_level_tokenizer(request) -> ByteLevelBPE:
    if request.param == "trained":
        return byte_level(textbook_merges(SAMPLE, 300))
    if SMOLLM2 is None:
        pytest.skip(f"SmolLM2's GGUF file comes with the data package: {SMOLLM2_INSTALL}")
    return load_tokenizer(SMOLLM2)


@pytest.fixture(scope="module", params=["trained", "user-defined pieces"])
def sentencepiece_tokenizer(request) -> SentencePieceTokenizer:
    tokenizer = train_bpe(SAMPLE, 512)
    if request.param == "trained":
        return tokenizer
    # User-defined pieces are cut out whole before merging; a long run full of them must stay linear too.
    model = tokenizer.model
    extra = [Piece(p, 0.0, PieceType.USER_DEFINED) for p in ("<sep>", "tob", "question", "x")]
    return SentencePieceTokenizer(dataclasses.replace(model, pieces=[*model.pieces, *extra]))


def work(count_in: CountingDict, encode, text: str) -> int:
    count_in.calls = 0
    encode(text)
    return count_in.calls


@pytest.mark.parametrize("kind", list(long_runs(N)))
def test_byte_level_work_is_linear(byte_level_tokenizer, kind, monkeypatch):
    tokenizer = byte_level_tokenizer
    ranks = CountingDict(tokenizer.ranks)
    monkeypatch.setattr(tokenizer, "ranks", ranks)  # the fixture's tokenizer is shared: restored after the test
    tokenizer._cache.clear()
    small, large = (work(ranks, tokenizer.encode, long_runs(n)[kind]) for n in (N, 8 * N))
    print(f"byte-level, {kind}: {small:,} look-ups at {N:,} characters, {large:,} at {8 * N:,}")
    assert small >= N - 1  # the counter sees the work: at least one look-up per neighbouring pair
    assert large <= GROWTH * small, f"{kind}: {large:,} look-ups for 8x the input of {small:,}"


@pytest.mark.parametrize("kind", list(long_runs(N)))
def test_sentencepiece_work_is_linear(sentencepiece_tokenizer, kind, monkeypatch):
    tokenizer = sentencepiece_tokenizer
    spellable = CountingDict(tokenizer._spellable)
    monkeypatch.setattr(tokenizer, "_spellable", spellable)  # the fixture's tokenizer is shared: restored after
    tokenizer._cache.clear()
    text = long_runs(N)[kind]
    if tokenizer._user_defined:
        text = text[: N // 2] + "<sep>x" + text[N // 2 :]
    small = work(spellable, tokenizer.encode, text[:N])
    large = work(spellable, tokenizer.encode, text[:N] * 8)
    print(f"sentencepiece ({len(tokenizer._user_defined)} user-defined), {kind}: {small:,} look-ups, {large:,} at 8x")
    assert small >= N - 1
    assert large <= GROWTH * small, f"{kind}: {large:,} look-ups for 8x the input of {small:,}"


# -- the heap gives the textbook's pieces --------------------------------------------------------------------


@st.composite
def ordered_merges(draw) -> list[tuple[str, str]]:
    """Merge lists like a trainer's: each rule comes after every rule that builds one of its two sides.

    Several rules may build the same piece (``("a", "bc")`` and ``("ab", "c")``), as in vocabularies converted
    from tiktoken, as long as none of them comes after a rule that uses that piece.
    """
    symbols, merges, used = ["a", "b", "c"], [], set()
    for _ in range(draw(st.integers(0, 14))):
        left, right = draw(st.sampled_from(list(symbols))), draw(st.sampled_from(list(symbols)))
        if (left, right) in merges or left + right in used:
            continue
        merges.append((left, right))
        used |= {left, right}
        symbols.append(left + right)
    return merges


@settings(max_examples=300, deadline=None)
@given(ordered_merges(), st.text(alphabet="abc", max_size=40))
def test_heap_equals_textbook(merges, text):
    tokenizer = byte_level(merges)
    assert tokenizer.bpe(text) == textbook_bpe(text, tokenizer.ranks)


REPEATS = [
    ([("a", "a")], "aaaa", ["aa", "aa"]),
    ([("a", "a")], "aaa", ["aa", "a"]),
    ([("a", "a")], "aaaaa", ["aa", "aa", "a"]),
    ([("a", "a"), ("aa", "aa")], "a" * 7, ["aaaa", "aa", "a"]),
    ([("a", "a"), ("aa", "a")], "aaaaa", ["aa", "aaa"]),
    ([("a", "b"), ("b", "a")], "ababa", ["ab", "ab", "a"]),
    ([("b", "a"), ("a", "b")], "ababa", ["a", "ba", "ba"]),
    ([("a", "b"), ("ab", "ab"), ("b", "a")], "abababa", ["abab", "ab", "a"]),
]


@pytest.mark.parametrize("merges, text, pieces", REPEATS)
def test_tricky_repeats(merges, text, pieces):
    tokenizer = byte_level(merges)
    assert tokenizer.bpe(text) == textbook_bpe(text, tokenizer.ranks) == pieces
    for k in range(1, 30):  # every length of the repeat, both ways
        long = (text * k)[: k + len(text)]
        assert tokenizer.bpe(long) == textbook_bpe(long, tokenizer.ranks)


def test_misordered_merges_follow_hugging_face():
    """A rule before the rule that builds its side: ``("aa", "a")`` ranks before ``("a", "a")``.

    The textbook loop merges ``("a", "a")`` everywhere before it looks again (``aa aa``); the heap, like
    Hugging Face ``tokenizers``, uses ``("aa", "a")`` as soon as the first ``aa`` exists (``aaa a``).
    Training never produces such a list.
    """
    merges = [("aa", "a"), ("a", "a")]
    tokenizer = byte_level(merges)
    assert textbook_bpe("aaaa", tokenizer.ranks) == ["aa", "aa"]
    assert tokenizer.bpe("aaaa") == ["aaa", "a"]
    if importlib.util.find_spec("tokenizers") is not None:
        from tokenizers import Tokenizer, models

        reference = Tokenizer(models.BPE({"a": 0, "aa": 1, "aaa": 2}, merges))
        assert reference.encode("aaaa").tokens == ["aaa", "a"]


@st.composite
def any_merges(draw) -> list[tuple[str, str]]:
    """Merge rules in any order, each building on pieces of earlier or later rules."""
    symbols, merges = ["a", "b", "c"], []
    for _ in range(draw(st.integers(0, 14))):
        pair = (draw(st.sampled_from(list(symbols))), draw(st.sampled_from(list(symbols))))
        if pair not in merges:
            merges.append(pair)
            symbols.append(pair[0] + pair[1])
    return draw(st.permutations(merges))


@settings(max_examples=200, deadline=None)
@given(any_merges(), st.text(alphabet="abc", max_size=40))
def test_heap_equals_hugging_face_for_any_merge_list(merges, text):
    tokenizers = pytest.importorskip("tokenizers")
    tokenizer = byte_level(merges)
    reference = tokenizers.Tokenizer(tokenizers.models.BPE(dict(tokenizer.vocab), merges))
    assert tokenizer.bpe(text) == (reference.encode(text).tokens if text else [])


# -- a pattern that backtracks catastrophically --------------------------------------------------------------


def test_catastrophic_pattern_is_a_clear_error():
    # (a|a)+$ on "aaa...ab" tries all 2^30 ways to split the a's before failing. (The classic (a+)+$ is
    # no example here: the regex package recognises it and fails at once.) Without the time limit this
    # call runs for hours; with it, about a second.
    pattern = r"(a|a)+$"
    tokenizer = ByteLevelBPE({"a": 0, "b": 1}, [], patterns=[pattern])
    with pytest.raises(ValueError, match=r"pattern '\(a\|a\)\+\$' backtracks catastrophically"):
        tokenizer.encode("a" * 30 + "b")
    assert tokenizer.encode("aab") == [0, 0, 1]  # where it does not backtrack, it works
