"""Our byte-level BPE gives exactly the ids of Hugging Face `tokenizers` with the same vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import HARD_STRINGS as COMMON_HARD_STRINGS
from helpers import HAS_CORPUS, SMOLLM2, SMOLLM2_INSTALL
from llama_from_scratch.tokenization.byte_bpe import LLAMA3_PATTERN, PRE_TOKENIZERS, ByteLevelBPE, bytes_to_unicode, pre_tokenize
from llama_from_scratch.checkpoints import load_tokenizer
from llama_from_scratch.tokenization import Tokenizer

tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("regex", reason="byte-level BPE needs the regex package")
from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers  # noqa: E402

HARD_STRINGS = COMMON_HARD_STRINGS + [
    "I'm sure they'LL say we've DONE it",
    "line one\nline two\n\n  after\n",
    "   \n  x",
    "<|im_start|>user\nHello!<|im_end|>\n",
    "<|im_start<|im_end|>|> <|endoftext|><|endoftext|>",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@pytest.fixture(scope="module")
def lines() -> list[str]:
    if not HAS_CORPUS:
        return [line for text in HARD_STRINGS for line in text.split("\n")]
    from llama_from_scratch.training.corpus import shakespeare

    return shakespeare().validation.split("\n")


def train_reference(folder: Path, pre_tokenizer, vocab_size: int = 600) -> tokenizers.Tokenizer:
    """A small byte-level BPE trained by `tokenizers` itself, saved as tokenizer.json (+ tokenizer_config.json)."""
    reference = tokenizers.Tokenizer(models.BPE())
    reference.pre_tokenizer = pre_tokenizer
    reference.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    sample = [
        "To be, or not to be, that is the question:",
        "Whether 'tis nobler in the mind to suffer",
        "1599, 1600 and 1601: the years of Hamlet.",
        "Ça va? Très bien, merci — 日本 😀",
    ] * 50
    reference.train_from_iterator(sample, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    reference.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "pad_token": "<|endoftext|>"})
    )
    return reference


STYLES = {
    "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "smollm": lambda: pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    ),
    "llama3": lambda: pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    ),
}


@pytest.fixture(scope="module", params=sorted(STYLES))
def small(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    reference = train_reference(folder, STYLES[request.param]())
    return load_tokenizer(folder), reference


def check_parity(ours: ByteLevelBPE, reference, texts: list[str]) -> None:
    expected = [e.ids for e in reference.encode_batch(texts, add_special_tokens=False)]
    mismatches = [(t, ours.encode(t), ids) for t, ids in zip(texts, expected) if ours.encode(t) != ids]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} texts differ, first: {mismatches[0]}"


def test_small_vocabulary_parity(small, lines):
    ours, reference = small
    assert isinstance(ours, ByteLevelBPE) and isinstance(ours, Tokenizer)
    assert ours.vocab_size == reference.get_vocab_size()
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (1, 2, 0)
    check_parity(ours, reference, lines + HARD_STRINGS)
    for text in HARD_STRINGS:
        ids = ours.encode(text, bos=True, eos=True)
        assert ids[0] == 1 and ids[-1] == 2
        assert ours.decode(ids[1:-1]) == reference.decode(ids[1:-1], skip_special_tokens=False) == text


@settings(max_examples=150, deadline=None)
@given(TEXT)
def test_random_text_parity_and_round_trip(small, text):
    ours, reference = small
    ids = ours.encode(text)
    assert ids == reference.encode(text, add_special_tokens=False).ids
    assert ours.decode(ids) == text


@pytest.fixture(scope="module")
def smollm2():
    if SMOLLM2 is None:
        pytest.skip(f"SmolLM2's GGUF file comes with the data package: {SMOLLM2_INSTALL}")
    ours = load_tokenizer(SMOLLM2)
    # The same vocabulary in Hugging Face's tokenizer, set up as SmolLM2's tokenizer.json sets it up.
    reference = tokenizers.Tokenizer(models.BPE(ours.vocab, list(ours.ranks), unk_token="<|endoftext|>"))
    reference.pre_tokenizer = STYLES["smollm"]()
    reference.decoder = decoders.ByteLevel()
    reference.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ours.special_tokens])
    return ours, reference


def test_smollm2_gguf_parity(smollm2, lines):
    ours, reference = smollm2
    assert (ours.vocab_size, len(ours.ranks), len(ours.special_tokens)) == (49152, 48900, 17)
    assert (ours.bos_id, ours.eos_id) == (1, 2)
    assert ours.encode("<|im_start|>user\n") == [1, *ours.encode("user\n")]
    check_parity(ours, reference, lines + HARD_STRINGS)
    for text in HARD_STRINGS:
        ids = ours.encode(text)
        assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=False) == text


@settings(max_examples=100, deadline=None)
@given(TEXT)
def test_smollm2_random_text(smollm2, text):
    ours, reference = smollm2
    assert ours.encode(text) == reference.encode(text, add_special_tokens=False).ids


def test_bytes_to_unicode():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256 and all(c.isprintable() for c in table.values())
    assert (table[ord(" ")], table[ord("\n")], table[ord("A")]) == ("Ġ", "Ċ", "A")


def test_pre_tokenize():
    assert pre_tokenize("Hello world 2024!", PRE_TOKENIZERS["smollm"]) == [
        "Hello",
        " world",
        " ",
        "2",
        "0",
        "2",
        "4",
        "!",
    ]
    assert pre_tokenize("I'm  here\n", PRE_TOKENIZERS["gpt2"]) == ["I", "'m", " ", " here", "\n"]
