"""Our SentencePiece BPE encoder gives exactly the ids of the `sentencepiece` library on the same .model file."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import HARD_STRINGS as COMMON_HARD_STRINGS
from helpers import needs_corpus
from llama_from_scratch.tokenization.sentencepiece_bpe import SentencePieceTokenizer
from llama_from_scratch.errors import FormatError
from llama_from_scratch.tokenization.sentencepiece_model import SentencePieceModel, read_model

spm = pytest.importorskip("sentencepiece")
pytestmark = needs_corpus

HARD_STRINGS = COMMON_HARD_STRINGS + [
    "<s> </s> <unk> <0x41> ▁ already escaped",
    "line one\nline two\n\nafter a blank line\n",
    "$(money)",
]

# Llama 2's trainer options (model_type=bpe, byte fallback, split digits, identity normalisation, a dummy
# prefix, extra whitespace kept) and, for contrast, sentencepiece's defaults with no byte fallback.
LLAMA_OPTIONS = dict(
    model_type="bpe",
    byte_fallback=True,
    split_digits=True,
    normalization_rule_name="identity",
    add_dummy_prefix=True,
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,
    character_coverage=0.99995,
)
DEFAULT_OPTIONS = dict(
    model_type="bpe", normalization_rule_name="identity", user_defined_symbols=["<sep>"], split_by_whitespace=False
)


@pytest.fixture(scope="module")
def corpus():
    from llama_from_scratch.training.corpus import shakespeare

    return shakespeare()


def train(corpus, folder, name: str, vocab_size: int, extra_lines: str = "", **options) -> str:
    """Train sentencepiece on the training plays (one sentence per line, as it reads files)."""
    text_file = folder / f"{name}.txt"
    text_file.write_text(corpus.train + extra_lines, encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text_file),
        model_prefix=str(folder / name),
        vocab_size=vocab_size,
        num_threads=2,
        minloglevel=2,
        **options,
    )
    return str(folder / f"{name}.model")


@pytest.fixture(scope="module", params=[512, 4096], ids=["vocab512", "vocab4096"])
def llama_model(request, corpus, tmp_path_factory):
    return train(corpus, tmp_path_factory.mktemp("spm"), f"llama{request.param}", request.param, **LLAMA_OPTIONS)


@pytest.fixture(scope="module")
def pair(llama_model):
    return SentencePieceTokenizer.load(llama_model), spm.SentencePieceProcessor(model_file=llama_model)


def test_reads_the_model_file(llama_model):
    model = read_model(llama_model)
    reference = spm.SentencePieceProcessor(model_file=llama_model)
    assert len(model.pieces) == reference.vocab_size()
    assert [p.piece for p in model.pieces] == [reference.id_to_piece(i) for i in range(reference.vocab_size())]
    assert [p.score for p in model.pieces] == [reference.get_score(i) for i in range(reference.vocab_size())]
    assert (model.model_type, model.byte_fallback, model.split_digits, model.normalizer_name) == (
        "bpe",
        True,
        True,
        "identity",
    )
    assert (model.add_dummy_prefix, model.remove_extra_whitespaces, model.escape_whitespaces) == (True, False, True)
    ours = SentencePieceTokenizer(model)
    assert (ours.unk_id, ours.bos_id, ours.eos_id) == (reference.unk_id(), reference.bos_id(), reference.eos_id())


def test_every_validation_line(pair, corpus):
    ours, reference = pair
    lines = corpus.validation.split("\n")
    expected = reference.encode(lines)
    mismatches = [(line, ours.encode(line), ids) for line, ids in zip(lines, expected) if ours.encode(line) != ids]
    assert not mismatches, f"{len(mismatches)} of {len(lines)} lines differ, first: {mismatches[0]}"


def test_whole_text_with_line_breaks(pair, corpus):
    """A line break is a character like any other: sentencepiece's vocabulary lacks it, so it is <0x0A>."""
    ours, reference = pair
    text = corpus.validation[:20_000]
    assert ours.encode(text) == reference.encode(text)
    assert ours.id_to_piece(ours.encode("a\nb")[1]) == "<0x0A>"


@pytest.mark.parametrize("text", HARD_STRINGS)
def test_hard_strings(pair, text):
    ours, reference = pair
    ids = ours.encode(text, bos=True, eos=True)
    assert ids == reference.encode(text, add_bos=True, add_eos=True)
    assert ours.decode(ids) == reference.decode(ids)
    # SentencePiece cannot tell a "▁" in the text from an escaped space: that one character does not round-trip.
    assert ours.decode(ids) == text.replace("▁", " ")


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="▁"), max_size=40))
def test_random_text_and_round_trip(pair, text):
    ours, reference = pair
    ids = ours.encode(text)
    assert ids == reference.encode(text)
    assert ours.decode(ids) == text


@pytest.fixture(scope="module")
def other_models(corpus, tmp_path_factory):
    """Models that exercise the other code paths: whitespace-only pieces; and <unk> instead of byte fallback,
    removal of extra whitespace, a user-defined symbol, and pieces that span words ("▁of▁the")."""
    folder = tmp_path_factory.mktemp("spm_other")
    indented = "\n".join(f"{' ' * (4 * (i % 4))}def f{i}(x):  return  x  <sep> {i}" for i in range(3000))
    return [
        train(corpus, folder, "whitespace", 1000, extra_lines=indented, **LLAMA_OPTIONS),
        train(corpus, folder, "defaults", 1000, extra_lines=indented, **DEFAULT_OPTIONS),
    ]


def test_other_normalizer_settings(other_models, corpus):
    whitespace, defaults = (SentencePieceTokenizer.load(m) for m in other_models)
    assert "▁▁▁▁" in whitespace.pieces and whitespace._words_independent
    assert not defaults._words_independent  # pieces span words: the text is merged as a whole, no word cache
    assert defaults.model.remove_extra_whitespaces and not defaults.model.byte_fallback
    texts = HARD_STRINGS + corpus.validation.split("\n")[:2000] + ["        def g(y):  return  y  <sep>  <sep>x"]
    for path, ours in zip(other_models, (whitespace, defaults)):
        reference = spm.SentencePieceProcessor(model_file=path)
        for text in texts:
            assert ours.encode(text) == reference.encode(text), (path, text)
            assert ours.decode(ours.encode(text)) == reference.decode(reference.encode(text)), (path, text)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.model"):
        SentencePieceTokenizer.load(tmp_path / "missing.model")
    text_file = tmp_path / "notes.model"
    text_file.write_text("these are not the pieces you are looking for")
    with pytest.raises(FormatError, match="notes.model"):
        SentencePieceTokenizer.load(text_file)
    with pytest.raises(NotImplementedError, match="unigram"):
        SentencePieceTokenizer(SentencePieceModel(pieces=[], model_type="unigram"))
