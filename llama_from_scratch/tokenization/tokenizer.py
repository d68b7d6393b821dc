"""What every tokenizer of this package offers: the :class:`Tokenizer` interface, and :func:`token_text`.

Two kinds of tokenizer implement it: :class:`.SentencePieceTokenizer` (Llama 1 and 2) and
:class:`.ByteLevelBPE` (Llama 3, SmolLM2, GPT-2). The code that only encodes and decodes (training,
generation, chat) is written against :class:`Tokenizer`; :func:`token_text`, the vocabulary entry of an
id, is the one place that tells the two kinds apart, because they keep their vocabularies differently.

Reading a tokenizer from any file (``load_tokenizer``) is done by
:mod:`llama_from_scratch.checkpoints.load`, since a tokenizer often travels inside a checkpoint's files
(GGUF metadata, Hugging Face's ``tokenizer.json``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .byte_bpe import ByteLevelBPE
from .sentencepiece_bpe import SentencePieceTokenizer


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


def token_text(tokenizer: SentencePieceTokenizer | ByteLevelBPE, token_id: int | None) -> str | None:
    """The vocabulary entry of ``token_id`` (``"<s>"``, ``"<|im_end|>"``, ``"Ġworld"``); None for None."""
    if token_id is None:
        return None
    if isinstance(tokenizer, SentencePieceTokenizer):
        return tokenizer.id_to_piece(token_id)
    return tokenizer.id_to_special.get(token_id, tokenizer.id_to_piece.get(token_id))
