"""Our BPE trainer: correct incremental counting, a sensible vocabulary, files that sentencepiece reads too."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import needs_corpus
from llama_from_scratch.tokenization.trainer import split_words, train_bpe
from llama_from_scratch.tokenization.sentencepiece_bpe import SentencePieceTokenizer
from llama_from_scratch.errors import FormatError
from llama_from_scratch.tokenization.sentencepiece_model import PieceType
from llama_from_scratch.checkpoints import load_tokenizer


@pytest.fixture(scope="module")
def corpus():
    from llama_from_scratch.training.corpus import shakespeare

    return shakespeare()


@pytest.fixture(scope="module")
def trained(corpus):
    """The course's tokenizer: 4,096 pieces learned from the 34 training plays (about 15 s on 2 cores)."""
    start = time.perf_counter()
    tokenizer = train_bpe(corpus.train, 4096)
    print(f"trained 4096 pieces in {time.perf_counter() - start:.1f} s")
    return tokenizer


def naive_merges(text: str, n_merges: int) -> list[str]:
    """The textbook trainer: recount every pair of the corpus after every merge (slow, obviously right)."""
    words = [(list(w), c) for w, c in Counter(split_words(text)).items()]
    merges = []
    for _ in range(n_merges):
        counts = Counter()
        for symbols, count in words:
            for a, b in zip(symbols, symbols[1:]):
                if not (a.isdigit() or b.isdigit()):
                    counts[a, b] += count
        if not counts:
            break
        (a, b), _ = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # most frequent; ties: smallest pair
        merges.append(a + b)
        for symbols, _ in words:
            i = 0
            while i < len(symbols) - 1:
                if symbols[i] == a and symbols[i + 1] == b:
                    symbols[i : i + 2] = [a + b]
                i += 1
    return merges


def test_split_words():
    assert split_words("I am,\nsir") == ["▁I", "▁am,\n", "sir"]
    assert split_words("a  b\n\n") == ["▁a", "▁", "▁b\n\n"]
    assert split_words("") == []


def test_incremental_counts_match_recounting():
    text = "the cat sat on the mat\nthe hat 1999 sat on that mat\n" * 3 + "aaaa aaa ab ab ba\n"
    tokenizer = train_bpe(text, 3 + 256 + 40, character_coverage=1.0)
    learned = [p for p in tokenizer.pieces[259:] if len(p) > 1]  # the merges; single characters follow them
    assert len(learned) > 20
    assert learned == naive_merges(text, len(learned))


@needs_corpus
def test_vocabulary_layout(trained):
    pieces, types = trained.pieces, [p.type for p in trained.model.pieces]
    assert trained.vocab_size == 4096
    assert pieces[:3] == ["<unk>", "<s>", "</s>"] and (trained.unk_id, trained.bos_id, trained.eos_id) == (0, 1, 2)
    assert pieces[3:259] == [f"<0x{b:02X}>" for b in range(256)] and set(types[3:259]) == {PieceType.BYTE}
    assert len(set(pieces)) == 4096
    assert all(len(p) <= 16 for p in pieces[259:])
    assert not [p for p in pieces[259:] if len(p) > 1 and any(c.isdigit() for c in p)]  # digits stay single
    assert "▁" not in "".join(p.lstrip("▁") for p in pieces[259:])  # ▁ only at the start of a piece
    scores = [p.score for p in trained.model.pieces[259:]]
    assert scores == sorted(scores, reverse=True)  # earlier merges score higher
    assert ":\n" in pieces and ",\n" in pieces  # line breaks are learned with the punctuation before them
    assert "$" not in pieces  # below the character coverage: left to byte fallback
    assert [trained.id_to_piece(i) for i in trained.encode("$")] == ["▁", "<0x24>"]


@needs_corpus
def test_compression_on_held_out_plays(trained, corpus):
    ids = trained.encode(corpus.validation)
    chars_per_token = len(corpus.validation) / len(ids)
    assert 3.2 < chars_per_token < 4.0, chars_per_token
    assert trained.decode(ids) == corpus.validation


@needs_corpus
def test_save_and_load_round_trip_and_sentencepiece_agrees(trained, corpus, tmp_path):
    path = trained.save(tmp_path / "shakespeare.model")
    loaded = load_tokenizer(path)
    assert isinstance(loaded, SentencePieceTokenizer)
    assert loaded.pieces == trained.pieces and [p.score for p in loaded.model.pieces] == [
        p.score for p in trained.model.pieces
    ]
    text = corpus.validation[:50_000]
    assert loaded.encode(text) == trained.encode(text)
    spm = pytest.importorskip("sentencepiece")
    reference = spm.SentencePieceProcessor(model_file=str(path))
    assert reference.encode(text) == trained.encode(text)
    assert reference.decode(trained.encode(text)) == text


@needs_corpus
@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="▁"), max_size=60))
def test_round_trip(trained, text):
    assert trained.decode(trained.encode(text)) == text


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        train_bpe("some text", 100)
    with pytest.raises(ValueError, match="too few for vocab_size"):
        train_bpe("tiny text", 400)
    with pytest.raises(FileNotFoundError, match="nothing.model"):
        load_tokenizer(tmp_path / "nothing.model")
    wrong = tmp_path / "shakespeare.model"
    wrong.write_bytes(b"\x08\x96\x01 definitely not a model \xff\xff")
    with pytest.raises(FormatError, match="shakespeare.model"):
        load_tokenizer(wrong)
