"""load_tokenizer: one entry point for .model, tokenizer.json (or its directory) and .gguf; errors name the file."""

from __future__ import annotations

import json

import pytest

from llama_from_scratch.tokenization.trainer import train_bpe
from llama_from_scratch.tokenization.sentencepiece_bpe import SentencePieceTokenizer
from llama_from_scratch.errors import FormatError
from llama_from_scratch.checkpoints import load_tokenizer
from llama_from_scratch.tokenization import Tokenizer

TEXT = "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n" * 20


@pytest.fixture(scope="module")
def small():
    return train_bpe(TEXT, 3 + 256 + 60, character_coverage=1.0)


def test_sentencepiece_model_file(small, tmp_path):
    loaded = load_tokenizer(small.save(tmp_path / "tokenizer.model"))
    assert isinstance(loaded, SentencePieceTokenizer) and isinstance(loaded, Tokenizer)
    assert loaded.encode(TEXT, bos=True, eos=True) == small.encode(TEXT, bos=True, eos=True)
    assert load_tokenizer(tmp_path).pieces == small.pieces  # a directory holding tokenizer.model


def test_gguf_with_a_sentencepiece_vocabulary(small, tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(small.pieces)
    writer.add_token_scores([p.score for p in small.model.pieces])
    writer.add_token_types([int(p.type) for p in small.model.pieces])
    writer.add_bos_token_id(small.bos_id)
    writer.add_eos_token_id(small.eos_id)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    loaded = load_tokenizer(path)
    assert isinstance(loaded, SentencePieceTokenizer)
    for text in (TEXT, "unknown: 😀 ½ 42", ""):
        assert loaded.encode(text, bos=True) == small.encode(text, bos=True)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.json"):
        load_tokenizer(tmp_path / "absent.json")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or tokenizer.model"):
        load_tokenizer(tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json")
    with pytest.raises(FormatError, match="broken.json"):
        load_tokenizer(broken)
    wordpiece = tmp_path / "wordpiece.json"
    wordpiece.write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}}))
    with pytest.raises(NotImplementedError, match="wordpiece.json.*WordPiece"):
        load_tokenizer(wordpiece)
    spm_style = tmp_path / "metaspace.json"
    spm_style.write_text(
        json.dumps({"model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": {"type": "Metaspace"}})
    )
    with pytest.raises(NotImplementedError, match="metaspace.json.*Metaspace"):
        load_tokenizer(spm_style)
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"GGUF\x00\x00")
    with pytest.raises(FormatError, match="weights.gguf"):
        load_tokenizer(not_gguf)
