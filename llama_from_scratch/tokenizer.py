"""One entry point for every tokenizer file: ``load_tokenizer(path)``.

Three formats hold the tokenizers of the Llama family:

* a SentencePiece ``.model`` file (Llama 1 and 2's ``tokenizer.model``): scored pieces, read by
  :mod:`~llama_from_scratch.sentencepiece_model` and encoded by
  :class:`~llama_from_scratch.sentencepiece_bpe.SentencePieceTokenizer`;
* a Hugging Face ``tokenizer.json`` (or a model directory holding one): for byte-level BPE (Llama 3,
  SmolLM2, GPT-2) a vocabulary, merge rules, a pre-tokenizer and the added special tokens, encoded by
  :class:`~llama_from_scratch.byte_bpe.ByteLevelBPE`;
* a GGUF file (llama.cpp): the same information as ``tokenizer.ggml.*`` metadata next to the weights.

Every tokenizer answers the same small interface, :class:`Tokenizer`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Protocol, runtime_checkable

from .byte_bpe import GPT2_PATTERN, PRE_TOKENIZERS, ByteLevelBPE
from .sentencepiece_bpe import SentencePieceTokenizer
from .sentencepiece_model import ModelFormatError, Piece, PieceType, SentencePieceModel, read_model


@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer of this package offers."""

    vocab_size: int
    bos_id: int | None  # beginning of sequence, such as <s> or <|im_start|>; None if the vocabulary has none
    eos_id: int | None  # end of sequence, such as </s> or <|im_end|>
    pad_id: int | None
    unk_id: int | None

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Text to token ids, optionally with ``bos_id`` in front and ``eos_id`` at the end."""
        ...

    def decode(self, ids: list[int]) -> str:
        """Token ids back to text."""
        ...


def load_tokenizer(path: str | Path) -> SentencePieceTokenizer | ByteLevelBPE:
    """Load a tokenizer from a SentencePiece ``.model``, a ``tokenizer.json`` (or its directory) or a ``.gguf``.

    The format is recognised by the file's first bytes, not its name: a GGUF file starts with ``GGUF``,
    a JSON file with ``{``, anything else is tried as a SentencePiece model.
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / "tokenizer.json", path / "tokenizer.model"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"no tokenizer.json or tokenizer.model in the directory {path}")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    with path.open("rb") as f:
        head = f.read(4)
    if head == b"GGUF":
        return read_gguf_tokenizer(path)
    if head.lstrip()[:1] == b"{":
        return read_tokenizer_json(path)
    try:
        return SentencePieceTokenizer(read_model(path))
    except ModelFormatError:
        raise ModelFormatError(
            f"{path} is not a tokenizer file: neither GGUF, nor tokenizer.json, nor a SentencePiece .model"
        ) from None


# -- Hugging Face tokenizer.json ------------------------------------------------------------------------------


def _patterns_from_hf(pre_tokenizer: dict | None, path: Path) -> tuple[list[str], bool]:
    """The regex patterns of a ``pre_tokenizer`` entry, and whether a ByteLevel step is among them."""
    if pre_tokenizer is None:
        return [], False
    kind = pre_tokenizer.get("type")
    if kind == "Sequence":
        patterns, byte_level = [], False
        for step in pre_tokenizer["pretokenizers"]:
            p, b = _patterns_from_hf(step, path)
            patterns += p
            byte_level |= b
        return patterns, byte_level
    if kind == "ByteLevel":
        if pre_tokenizer.get("add_prefix_space"):
            raise NotImplementedError(f"{path}: ByteLevel with add_prefix_space=true is not supported")
        return ([GPT2_PATTERN] if pre_tokenizer.get("use_regex", True) else []), True
    if kind == "Digits":
        return [r"\p{N}" if pre_tokenizer.get("individual_digits") else r"\p{N}+"], False
    if kind == "Split":
        pattern = pre_tokenizer["pattern"]
        behavior = pre_tokenizer.get("behavior")
        if behavior != "Isolated" or pre_tokenizer.get("invert"):
            raise NotImplementedError(
                f"{path}: Split pre-tokenizer with behavior={behavior!r}, "
                f"invert={pre_tokenizer.get('invert')} is not supported (only Isolated)"
            )
        return [pattern["Regex"] if "Regex" in pattern else re.escape(pattern["String"])], False
    raise NotImplementedError(f"{path}: pre-tokenizer type {kind!r} is not supported")


def _token_text(value: object) -> str | None:
    return value.get("content") if isinstance(value, dict) else value  # "<s>" or {"content": "<s>", ...}


def read_tokenizer_json(path: str | Path) -> ByteLevelBPE:
    """A :class:`ByteLevelBPE` from a Hugging Face ``tokenizer.json``.

    The special tokens are the file's ``added_tokens``. Which of them are BOS, EOS and padding is not in
    ``tokenizer.json`` but in ``tokenizer_config.json`` beside it (``bos_token``, ...), read when present.
    """
    path = Path(path)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        model = spec["model"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise ModelFormatError(f"{path} is not a valid tokenizer.json: {error!r}") from None
    if model.get("type") != "BPE":
        raise NotImplementedError(f"{path}: model type {model.get('type')!r} is not supported (only BPE)")
    patterns, byte_level = _patterns_from_hf(spec.get("pre_tokenizer"), path)
    if not byte_level:
        raise NotImplementedError(
            f"{path} is not a byte-level BPE tokenizer (no ByteLevel pre-tokenizer); for a "
            f"SentencePiece-style model, load its tokenizer.model instead"
        )
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    special = {token["content"]: token["id"] for token in spec.get("added_tokens", [])}
    ids = {"bos": None, "eos": None, "pad": None, "unk": None}
    config_file = path.parent / "tokenizer_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        for name in ids:
            text = _token_text(config.get(f"{name}_token"))
            ids[name] = special.get(text, model["vocab"].get(text)) if text is not None else None
    return ByteLevelBPE(
        model["vocab"],
        merges,
        patterns,
        special,
        bos_id=ids["bos"],
        eos_id=ids["eos"],
        pad_id=ids["pad"],
        unk_id=ids["unk"],
        ignore_merges=bool(model.get("ignore_merges", False)),
    )


# -- GGUF ------------------------------------------------------------------------------------------------------


def read_gguf_tokenizer(path: str | Path, reader=None) -> SentencePieceTokenizer | ByteLevelBPE:
    """The tokenizer stored in a GGUF file's ``tokenizer.ggml.*`` metadata (read with ``gguf.GGUFReader``).

    ``tokenizer.ggml.model`` says which kind: ``"gpt2"`` is byte-level BPE (``tokens`` and ``merges``, and
    ``pre`` names the pre-tokenizer), ``"llama"`` is SentencePiece (``tokens``, ``scores``, ``token_type``).
    Token types use SentencePiece's numbering: 3 (control) and 4 (user-defined) are special tokens.
    Pass an open ``reader`` to avoid parsing the file twice when the weights are read from it too.
    """
    from gguf import GGUFReader

    path = Path(path)
    try:
        fields = (reader or GGUFReader(path)).fields
    except Exception as error:  # the reader raises assorted errors on damaged files
        raise ModelFormatError(f"{path} is not a readable GGUF file: {error}") from None

    def get(key: str, default: object = None) -> object:
        return fields[key].contents() if key in fields else default

    kind = get("tokenizer.ggml.model")
    if kind is None:
        raise ModelFormatError(f"{path} holds no tokenizer (no tokenizer.ggml.model in its metadata)")
    tokens = get("tokenizer.ggml.tokens")
    types = get("tokenizer.ggml.token_type", [1] * len(tokens))
    special_ids = {
        name: get(f"tokenizer.ggml.{key}_token_id")
        for name, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown"))
    }
    if kind == "gpt2":
        pre = get("tokenizer.ggml.pre", "gpt2")
        if pre not in PRE_TOKENIZERS:
            raise NotImplementedError(
                f"{path}: pre-tokenizer {pre!r} is not supported; known: {sorted(PRE_TOKENIZERS)}"
            )
        merges = [tuple(m.split(" ", 1)) for m in get("tokenizer.ggml.merges")]
        special = {t: i for i, (t, kind_) in enumerate(zip(tokens, types)) if kind_ in (3, 4)}
        vocab = {t: i for i, t in enumerate(tokens)}
        return ByteLevelBPE(
            vocab,
            merges,
            PRE_TOKENIZERS[pre],
            special,
            bos_id=special_ids["bos"],
            eos_id=special_ids["eos"],
            pad_id=special_ids["pad"],
            unk_id=special_ids["unk"],
        )
    if kind == "llama":
        scores = get("tokenizer.ggml.scores", [0.0] * len(tokens))
        pieces = [Piece(t, float(s), PieceType(int(k))) for t, s, k in zip(tokens, scores, types)]
        model = SentencePieceModel(
            pieces,
            model_type="bpe",
            normalizer_name="identity",
            byte_fallback=any(p.type == PieceType.BYTE for p in pieces),
            add_dummy_prefix=bool(get("tokenizer.ggml.add_space_prefix", True)),
            remove_extra_whitespaces=False,
        )
        return SentencePieceTokenizer(model)
    raise NotImplementedError(f"{path}: tokenizer model {kind!r} is not supported (only 'gpt2' and 'llama')")
