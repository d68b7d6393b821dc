"""From text to token ids and back: the tokenizers of the Llama family, written from scratch.

Read in this order: :mod:`.bpe` (the one merge operation of byte-pair encoding), :mod:`.trainer`
(training a SentencePiece-style BPE vocabulary), :mod:`.sentencepiece_model` and
:mod:`.sentencepiece_bpe` (Llama 1 and 2's ``tokenizer.model`` format and its encoder), :mod:`.byte_bpe`
(byte-level BPE: GPT-2, Llama 3, SmolLM2), :mod:`.tiktoken_file` (Llama 3's ``tokenizer.model``),
:mod:`.tokenizer` (the :class:`Tokenizer` interface they all offer) and :mod:`.chat` (a conversation's
token ids, stop tokens and streamed text, and the chat loop).

This package reads only the tokenizer's own files; ``load_tokenizer``, which recognises any tokenizer
file, checkpoints' included (``tokenizer.json``, GGUF metadata), is in :mod:`llama_from_scratch.checkpoints`.
Below it are only the model core and :mod:`llama_from_scratch.files` (the rules for untrusted files).
"""

from .bpe import merge, pair_counts
from .byte_bpe import ByteLevelBPE
from .sentencepiece_bpe import SPACE, SentencePieceTokenizer
from .tokenizer import Tokenizer
from .trainer import train_bpe

__all__ = [
    "SPACE",
    "ByteLevelBPE",
    "SentencePieceTokenizer",
    "Tokenizer",
    "merge",
    "pair_counts",
    "train_bpe",
]
