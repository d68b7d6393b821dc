"""From text to token ids and back: the tokenizers of the Llama family, written from scratch.

Read in this order: :mod:`.bpe` (the one merge operation of byte-pair encoding), :mod:`.trainer`
(training a SentencePiece-style BPE vocabulary), :mod:`.sentencepiece_model` and
:mod:`.sentencepiece_bpe` (Llama 1 and 2's ``tokenizer.model`` format and its encoder), :mod:`.byte_bpe`
(byte-level BPE: GPT-2, Llama 3, SmolLM2), :mod:`.tiktoken_file` (Llama 3's ``tokenizer.model``) and
:mod:`.load` (``load_tokenizer`` for any tokenizer file).
"""

from .bpe import merge, pair_counts
from .byte_bpe import ByteLevelBPE
from .load import Tokenizer, load_tokenizer
from .sentencepiece_bpe import SPACE, SentencePieceTokenizer
from .trainer import train_bpe

__all__ = [
    "SPACE",
    "ByteLevelBPE",
    "SentencePieceTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "merge",
    "pair_counts",
    "train_bpe",
]
