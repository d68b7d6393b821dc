"""Writing a tokenizer next to exported weights, in the format each checkpoint expects.

* Hugging Face: a SentencePiece model is copied as ``tokenizer.model``; a
  byte-level BPE is written as ``tokenizer.json`` (the ``tokenizers``
  library's format: vocabulary, merges, pre-tokenizer, added tokens).
  ``tokenizer_config.json`` names the BOS/EOS tokens and holds the chat template.
* GGUF: the vocabulary goes into the file's ``tokenizer.ggml.*`` metadata
  (``model`` is ``"llama"`` for SentencePiece, ``"gpt2"`` for byte-level BPE),
  the template into ``tokenizer.chat_template``.

``load_tokenizer`` / ``load_pretrained`` read all of these back.
"""

from __future__ import annotations

import json
from pathlib import Path

from .byte_bpe import PRE_TOKENIZERS, ByteLevelBPE
from .sentencepiece_bpe import SentencePieceTokenizer
from .sentencepiece_model import PieceType


def _token_text(tokenizer, token_id: int | None) -> str | None:
    if token_id is None:
        return None
    if isinstance(tokenizer, SentencePieceTokenizer):
        return tokenizer.id_to_piece(token_id)
    return tokenizer.id_to_special.get(token_id, tokenizer.id_to_piece.get(token_id))


def hf_tokenizer_json(tokenizer: ByteLevelBPE) -> dict:
    """A ``tokenizer.json`` dictionary for a byte-level BPE tokenizer."""
    split = [
        {"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": False} for p in tokenizer.patterns
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    added = [
        {
            "id": i,
            "content": text,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for text, i in sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])
    ]
    merges = [f"{a} {b}" for (a, b), _ in sorted(tokenizer.ranks.items(), key=lambda item: item[1])]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [*split, byte_level]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": tokenizer.ignore_merges,
            "vocab": tokenizer.vocab,
            "merges": merges,
        },
    }


def write_hf_tokenizer(tokenizer, directory: Path, chat_template: str | None = None) -> None:
    """Write ``tokenizer.model`` or ``tokenizer.json``, and ``tokenizer_config.json``, into ``directory``."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        tokenizer.save(directory / "tokenizer.model")
    elif isinstance(tokenizer, ByteLevelBPE):
        text = json.dumps(hf_tokenizer_json(tokenizer), ensure_ascii=False)
        (directory / "tokenizer.json").write_text(text, encoding="utf-8")
    else:
        raise TypeError(f"cannot export a tokenizer of type {type(tokenizer).__name__}")
    config = {
        f"{name}_token": _token_text(tokenizer, getattr(tokenizer, f"{name}_id"))
        for name in ("bos", "eos", "pad", "unk")
    }
    config = {key: value for key, value in config.items() if value is not None}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def add_gguf_tokenizer(writer, tokenizer, chat_template: str | None = None) -> None:
    """Add ``tokenizer.ggml.*`` metadata (and the chat template) to a ``gguf.GGUFWriter``."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        model = tokenizer.model
        if model.remove_extra_whitespaces:
            raise ValueError("GGUF cannot record remove_extra_whitespaces=True; this SentencePiece model needs it")
        writer.add_tokenizer_model("llama")
        writer.add_token_list([p.piece for p in model.pieces])
        writer.add_token_scores([p.score for p in model.pieces])
        writer.add_token_types([int(p.type) for p in model.pieces])
        writer.add_add_space_prefix(model.add_dummy_prefix)
    elif isinstance(tokenizer, ByteLevelBPE):
        names = [name for name, patterns in PRE_TOKENIZERS.items() if patterns == tokenizer.patterns]
        if not names:
            raise ValueError(
                "this tokenizer's pre-tokenizer has no GGUF name (known: " + ", ".join(PRE_TOKENIZERS) + ")"
            )
        tokens = [_token_text(tokenizer, i) or f"[PAD{i}]" for i in range(tokenizer.vocab_size)]
        types = [
            int(PieceType.CONTROL if i in tokenizer.id_to_special else PieceType.NORMAL)
            for i in range(tokenizer.vocab_size)
        ]
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(names[0])
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges([f"{a} {b}" for (a, b), _ in sorted(tokenizer.ranks.items(), key=lambda kv: kv[1])])
    else:
        raise TypeError(f"cannot export a tokenizer of type {type(tokenizer).__name__}")
    for name, add in (
        ("bos", writer.add_bos_token_id),
        ("eos", writer.add_eos_token_id),
        ("unk", writer.add_unk_token_id),
        ("pad", writer.add_pad_token_id),
    ):
        if getattr(tokenizer, f"{name}_id") is not None:
            add(getattr(tokenizer, f"{name}_id"))
    if chat_template is not None:
        writer.add_chat_template(chat_template)
