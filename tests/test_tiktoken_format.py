"""Llama 3's tokenizer file (the tiktoken format) read by our byte-level BPE, against the `tiktoken` library.

No download: the vocabulary is trained here (a few hundred byte-pair merges on Shakespeare, or on the shared
hard strings when the corpus is not installed), written as a tiktoken file, and read by both sides.
"""

import collections
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import HARD_STRINGS, HAS_CORPUS
from llama_from_scratch import load_tokenizer
from llama_from_scratch.chat import LLAMA3_TEMPLATE, render_chat
from llama_from_scratch.errors import FormatError
from llama_from_scratch.tokenization.byte_bpe import LLAMA3_PATTERN, ByteLevelBPE, pre_tokenize
from llama_from_scratch.tokenization.chat import encode_chat
from llama_from_scratch.tokenization.tiktoken_file import LLAMA3_SPECIAL_TOKENS, write_tiktoken_file

tiktoken = pytest.importorskip("tiktoken", reason="the reference for the tiktoken format: pip install tiktoken")

LLAMA3_HARD_STRINGS = HARD_STRINGS + [
    "I'M sure they'LL say we'VE done it's",
    "12345678 1,000,000 3.14159",
    "line one\r\nline two\n\n\n  after\n \n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>",
    "<|eot_id<|eot_id|>|> <|reserved_special_token_247|><|reserved_special_token_248|>",
]
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
WITH_SPECIALS = st.lists(st.one_of(TEXT, st.sampled_from(LLAMA3_SPECIAL_TOKENS[:12])), max_size=5).map("".join)


def train_ranks(texts: list[str], merges: int) -> dict[bytes, int]:
    """A byte-level BPE vocabulary, tiktoken-style: the 256 bytes, then the most frequent pair merged, repeatedly.

    Pairs never cross Llama 3's pre-tokenizer chunks. Plain counting (every chunk re-counted per merge) is
    fast enough for a few hundred merges on a few thousand distinct chunks.
    """
    chunks = collections.Counter(chunk.encode() for text in texts for chunk in pre_tokenize(text, (LLAMA3_PATTERN,)))
    words = {chunk: [bytes([b]) for b in chunk] for chunk in chunks}
    ranks = {bytes([b]): b for b in range(256)}
    for _ in range(merges):
        pairs = collections.Counter()
        for chunk, parts in words.items():
            for pair in zip(parts, parts[1:]):
                pairs[pair] += chunks[chunk]
        if not pairs:
            break
        (left, right), _ = max(pairs.items(), key=lambda item: (item[1], item[0]))  # ties: a fixed order
        ranks[left + right] = len(ranks)
        for chunk, parts in words.items():
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == left and parts[i + 1] == right:
                    merged.append(left + right)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            words[chunk] = merged
    return ranks


def reference_encoding(ranks: dict[bytes, int]):
    special = {text: len(ranks) + i for i, text in enumerate(LLAMA3_SPECIAL_TOKENS)}
    return tiktoken.Encoding("llama3-test", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens=special)


@pytest.fixture(scope="module")
def lines() -> list[str]:
    if not HAS_CORPUS:
        return [line for text in LLAMA3_HARD_STRINGS for line in text.split("\n")]
    from llama_from_scratch.training.corpus import shakespeare

    return shakespeare().validation.split("\n")[:20000]


@pytest.fixture(scope="module")
def pair(lines, tmp_path_factory):
    """(ours, tiktoken's) read from one tokenizer.model file."""
    ranks = train_ranks(lines[:4000] + LLAMA3_HARD_STRINGS, merges=300)
    folder = tmp_path_factory.mktemp("llama3")
    write_tiktoken_file(ranks, folder / "tokenizer.model")
    return load_tokenizer(folder), reference_encoding(ranks)


def test_load_tokenizer_recognises_the_file(pair):
    ours, reference = pair
    assert isinstance(ours, ByteLevelBPE) and ours.ignore_merges
    assert ours.vocab_size == reference.n_vocab == 256 + 300 + 256
    for name, text in (("bos", "<|begin_of_text|>"), ("eos", "<|end_of_text|>"), ("pad", "<|finetune_right_pad_id|>")):
        assert getattr(ours, f"{name}_id") == reference.encode_single_token(text)
    assert ours.special_tokens["<|eot_id|>"] == 256 + 300 + 9 and len(ours.special_tokens) == 256


def test_corpus_and_hard_strings_encode_as_tiktoken_does(pair, lines):
    ours, reference = pair
    texts = lines + LLAMA3_HARD_STRINGS
    mismatches = [(t, ours.encode(t)) for t in texts if ours.encode(t) != reference.encode(t, allowed_special="all")]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} texts differ, first: {mismatches[0]}"
    for text in LLAMA3_HARD_STRINGS:
        assert ours.decode(ours.encode(text)) == reference.decode(reference.encode(text, allowed_special="all"))


@settings(max_examples=150, deadline=None)
@given(WITH_SPECIALS)
def test_random_text_encodes_as_tiktoken_does(pair, text):
    ours, reference = pair
    ids = ours.encode(text)
    assert ids == reference.encode(text, allowed_special="all")
    assert ours.decode(ids) == reference.decode(ids) == text


def test_overlapping_tokens_merge_as_tiktoken_merges_them(tmp_path):
    """Tokens that overlap and can be made in two ways ("aba" is ab + a and a + ba), tried exhaustively.

    tiktoken ranks a pair by the token it makes, so both ways share one rank and the leftmost pair wins;
    every string of a and b up to 9 letters (each one chunk) puts these merges in competition.
    """
    ranks = {bytes([b]): b for b in range(256)}
    for token in (b"ab", b"ba", b"aba", b"bab", b"aa", b"abab", b"baba"):
        ranks[token] = len(ranks)
    write_tiktoken_file(ranks, tmp_path / "tokenizer.model")
    ours, reference = load_tokenizer(tmp_path / "tokenizer.model"), reference_encoding(ranks)
    words = ["".join(letters) for n in range(1, 10) for letters in itertools.product("ab", repeat=n)]
    differ = [w for w in words if ours.encode(w) != reference.encode(w)]
    assert not differ, f"{len(differ)} of {len(words)} differ, e.g. {differ[:3]}"


def test_llama3_chat_template(pair):
    ours, _ = pair
    messages = [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "\nWhat is a llama?"}]
    text = render_chat(LLAMA3_TEMPLATE, messages, bos_token="<|begin_of_text|>")
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is a llama?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    ids = encode_chat(ours, text)
    special = ours.special_tokens
    assert ids[:2] == [special["<|begin_of_text|>"], special["<|start_header_id|>"]]
    assert ids.count(special["<|eot_id|>"]) == 2 and ids.count(special["<|end_header_id|>"]) == 3
    last_header = len(ids) - 1 - ids[::-1].index(special["<|end_header_id|>"])
    assert ours.decode(ids[last_header + 1 :]) == "\n\n"  # the answer follows the blank line
    assert ours.decode(ids) == text


@pytest.mark.parametrize(
    "content, message",
    [
        (b"IQ== 0\nIg== x\n", r"line 2 is b'Ig== x', expected \"base64-token rank\""),
        (b"IQ== 0\nI=g= 1\n", r"line 2 is b'I=g= 1'"),
        (b"IQ== 0\nIQ== 1\n", r"line 2: token b'!' is listed twice \(also with rank 0\)"),
        (b"IQ== 0\nIg== 5\n", r"the ranks must be 0 .. 1, each once; missing e.g. \[1\]"),
        (b"IQ== 0\nIg== 1\n", r"254 single bytes are not tokens"),
    ],
)
def test_bad_tiktoken_files_name_file_and_line(tmp_path, content, message):
    (tmp_path / "tokenizer.model").write_bytes(content)
    with pytest.raises(FormatError, match=message) as raised:
        load_tokenizer(tmp_path / "tokenizer.model")
    assert "tokenizer.model" in str(raised.value)
