"""One entry point for every tokenizer file: ``load_tokenizer(path)``.

Four formats hold the tokenizers of the Llama family:

* a SentencePiece ``.model`` file (Llama 1 and 2's ``tokenizer.model``): scored pieces, read by
  :mod:`.sentencepiece_model` and encoded by :class:`.SentencePieceTokenizer`;
* a tiktoken file (Llama 3's ``tokenizer.model``, text lines ``base64-token rank``): read by
  :mod:`.tiktoken_file` into a :class:`.ByteLevelBPE` with Llama 3's pattern and special tokens;
* a Hugging Face ``tokenizer.json`` (or a model directory holding one): for byte-level BPE (Llama 3,
  SmolLM2, GPT-2) a vocabulary, merge rules, a pre-tokenizer and the added special tokens, encoded by
  :class:`.ByteLevelBPE`; read by :mod:`llama_from_scratch.checkpoints.hf`, which writes it too;
* a GGUF file (llama.cpp): the same information as ``tokenizer.ggml.*`` metadata next to the weights,
  read and written by :mod:`llama_from_scratch.checkpoints.gguf`.

Every tokenizer answers the same small interface, :class:`Tokenizer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from ..errors import FormatError
from .byte_bpe import ByteLevelBPE
from .sentencepiece_bpe import SentencePieceTokenizer
from .sentencepiece_model import read_model
from .tiktoken_file import looks_like_tiktoken, read_tiktoken_file


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

    The format is recognised by the file's first bytes: a GGUF file starts with ``GGUF``, a JSON file with
    ``{`` (a ``.json`` file is read as JSON whatever it starts with), a tiktoken file with a line
    ``base64-token rank``; anything else is tried as a SentencePiece model.
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / "tokenizer.json", path / "tokenizer.model"]
        found = next((c for c in candidates if c.exists()), None)  # checked to be a regular file below
        if found is None:
            raise FileNotFoundError(f"no tokenizer.json or tokenizer.model in the directory {path}")
        path = found
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    from ..checkpoints.files import regular_file

    regular_file(path)  # a FIFO would block the read below forever
    with path.open("rb") as f:
        head = f.read(512)  # enough for a tiktoken line (a token of up to 380 bytes) and its rank
    if head[:4] == b"GGUF":
        from ..checkpoints.gguf import read_gguf_tokenizer  # each checkpoint format reads its own tokenizer

        return read_gguf_tokenizer(path)
    if head.lstrip()[:1] == b"{" or path.suffix == ".json":
        from ..checkpoints.hf import read_tokenizer_json

        return read_tokenizer_json(path)
    if looks_like_tiktoken(head):  # Llama 3's tokenizer.model: text lines "base64-token rank"
        return read_tiktoken_file(path)
    try:
        model = read_model(path)
    except FormatError:
        if path.suffix == ".model":
            raise  # a SentencePiece model, damaged: its error says where
        raise FormatError(
            f"{path} is not a tokenizer file: neither GGUF, nor tokenizer.json, nor a SentencePiece .model"
        ) from None
    try:
        return SentencePieceTokenizer(model)
    except ValueError as error:
        raise FormatError(f"{path}: {error}") from None
    except NotImplementedError as error:
        raise NotImplementedError(f"{path}: {error}") from None


def token_text(tokenizer: SentencePieceTokenizer | ByteLevelBPE, token_id: int | None) -> str | None:
    """The vocabulary entry of ``token_id`` (``"<s>"``, ``"<|im_end|>"``, ``"Ġworld"``); None for None."""
    if token_id is None:
        return None
    if isinstance(tokenizer, SentencePieceTokenizer):
        return tokenizer.id_to_piece(token_id)
    return tokenizer.id_to_special.get(token_id, tokenizer.id_to_piece.get(token_id))
