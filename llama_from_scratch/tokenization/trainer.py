"""Training a SentencePiece-style BPE tokenizer from scratch.

Byte-pair encoding (Sennrich et al., 2016) builds a vocabulary bottom-up: start from single characters, find
the pair of neighbouring symbols that occurs most often in the corpus, make it a new symbol, and repeat
until the vocabulary is full. Frequent words end up as one token, rare words as a few pieces.

The recipe here is SentencePiece's, the one Llama 1 and 2 were trained with:

* **Words.** Spaces are written ``▁`` and a dummy ``▁`` is put in front of the text, so ``"I am"`` is
  ``"▁I▁am"``; the text is cut before every ``▁``, and a pair never spans two words.
* **Character coverage.** The most frequent characters covering ``character_coverage`` of the text get a
  piece; rarer ones (here ``$``, ``(``, emoji, ...) do not, and are spelled as UTF-8 byte tokens
  ``<0x..>`` when encoding (byte fallback), so no text is ever unknown.
* **Digits** are never merged, so ``1604`` is always four tokens (``split_digits``): ``1 6 0 4`` when the digits
  are common enough to be kept characters, four byte tokens otherwise (Shakespeare has only 22 digits).
* **Line breaks.** A deliberate difference from the ``sentencepiece`` trainer, which reads a corpus line
  by line and therefore never sees a line break (``sentencepiece`` then encodes ``"\\n"`` as ``<0x0A>``).
  Here a line break is an ordinary character that ends the word before it: ``"hand,\\nAnd"`` is the words
  ``"▁hand,\\n"`` and ``"And"``. Pieces such as ``",\\n"`` and ``":\\n"`` are learned, so verse and speaker
  names cost fewer tokens, and decoding gives the line breaks back. (The first word of a line has no ``▁``.)
* **Scripts.** Another difference: ``sentencepiece`` by default never merges characters of different Unicode
  scripts (``split_by_unicode_script``), so letters and punctuation stay apart; this trainer learns pieces
  such as ``e,`` and ``'s``. The two vocabularies therefore differ, while the *encoders* agree exactly on
  any given ``.model`` file.
* **Vocabulary layout**, as ``sentencepiece`` writes it: ``<unk> <s> </s>`` at ids 0, 1, 2, the 256 byte
  tokens, the merged pieces (the score of merge ``i`` is ``-i``: earlier merges win when encoding), then the
  single characters.

The result is a :class:`~llama_from_scratch.sentencepiece_bpe.SentencePieceTokenizer`, saved as a real
SentencePiece ``.model`` file: the ``sentencepiece`` library loads it and encodes exactly as we do.

Counting pairs is the expensive part. A naive trainer recounts every pair of the corpus after each merge.
Here the corpus is first reduced to its distinct words with their counts (Shakespeare: 4.5 million
characters, about 87,000 distinct words), pair counts are kept in a table, and after each merge only the
words that contain the merged pair are updated, and in them only the pairs around the merge change
(:func:`~.bpe.merge`, then the pairs of the word before and after compared): ``x a b y`` loses
``(x, a) (a, b) (b, y)`` and gains ``(x, ab) (ab, y)``. A heap
finds the most frequent pair; its entries are checked against the table when popped (counts change).
"""

from __future__ import annotations

import heapq
import re
from collections import Counter, defaultdict

from .bpe import merge, pair_counts
from .sentencepiece_bpe import SPACE, SentencePieceTokenizer
from .sentencepiece_model import Piece, PieceType, SentencePieceModel

SPECIAL_PIECES = (("<unk>", PieceType.UNKNOWN), ("<s>", PieceType.CONTROL), ("</s>", PieceType.CONTROL))
_DIGITS = frozenset("0123456789")


def split_words(text: str) -> list[str]:
    """Cut text into SentencePiece words: ``"I am,\\nsir"`` -> ``["▁I", "▁am,\\n", "sir"]``.

    Spaces become ``▁``, a dummy ``▁`` goes in front, and a word is an optional ``▁``, then anything but
    ``▁`` and line breaks, then the line breaks that follow. Pieces never cross from one word to the next.
    """
    if not text:
        return []
    normalized = SPACE + text.replace(" ", SPACE)
    return [w for w in re.findall(f"{SPACE}?[^{SPACE}\n]*\n*", normalized) if w]


def kept_characters(char_counts: Counter[str], character_coverage: float) -> list[str]:
    """The most frequent characters, in order, until they cover ``character_coverage`` of all characters."""
    total = sum(char_counts.values())
    kept, covered = [], 0
    for char, count in sorted(char_counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if kept and covered >= character_coverage * total:
            break
        kept.append(char)
        covered += count
    return kept


def train_bpe(
    text: str,
    vocab_size: int,
    character_coverage: float = 0.9995,
    max_piece_length: int = 16,
    split_digits: bool = True,
    byte_fallback: bool = True,
    verbose: bool = False,
) -> SentencePieceTokenizer:
    """Learn a BPE vocabulary of ``vocab_size`` pieces from ``text``; see the module docstring for the recipe.

    ``max_piece_length`` caps pieces, in characters. With ``byte_fallback`` the 256 byte tokens are part of
    the vocabulary; without it, characters outside the coverage encode as ``<unk>``.
    """
    words = Counter(split_words(text))
    char_counts: Counter[str] = Counter()
    for word, count in words.items():
        for char in word:
            char_counts[char] += count
    chars = kept_characters(char_counts, character_coverage)
    n_fixed = len(SPECIAL_PIECES) + (256 if byte_fallback else 0) + len(chars)
    n_merges = vocab_size - n_fixed
    if n_merges < 0:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the special, byte and character pieces alone need {n_fixed}"
        )
    known = set(chars)

    def mergeable(a: str, b: str) -> bool:
        if a not in known or b not in known or len(a) + len(b) > max_piece_length:
            return False
        return not (split_digits and (a[0] in _DIGITS or b[0] in _DIGITS))  # a digit is a piece of its own

    # The corpus as distinct words, each a list of symbols, with the pair-count table and an index
    # pair -> words that contain it, so that a merge visits only those words.
    symbols = [list(word) for word in words]
    counts = list(words.values())
    table: defaultdict[tuple[str, str], int] = defaultdict(int)
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for w, word in enumerate(symbols):
        for pair, k in pair_counts(word).items():
            if mergeable(*pair):
                table[pair] += k * counts[w]
                where[pair].add(w)
    heap = [(-count, pair) for pair, count in table.items()]
    heapq.heapify(heap)

    merges: list[str] = []
    while len(merges) < n_merges and heap:
        negative_count, pair = heapq.heappop(heap)
        if table.get(pair, 0) != -negative_count:
            continue  # an outdated heap entry: the count changed after it was pushed
        a, b = pair
        new = a + b
        merges.append(new)
        known.add(new)
        changed = set()
        for w in where.pop(pair):
            merged = merge(symbols[w], pair, new)
            delta: defaultdict[tuple[str, str], int] = defaultdict(int)  # pairs after the merge minus before
            for p in zip(merged, merged[1:]):
                delta[p] += 1
            for p in zip(symbols[w], symbols[w][1:]):
                delta[p] -= 1
            for p, k in delta.items():
                if k < 0 and p in table:  # such as (x, a), (a, b) and (b, y) around x a b y ...
                    table[p] += k * counts[w]
                    changed.add(p)
                elif k > 0 and mergeable(*p):  # ... and (x, ab) and (ab, y)
                    table[p] += k * counts[w]
                    where[p].add(w)
                    changed.add(p)
            symbols[w] = merged
        del table[pair]
        for p in changed:
            if p in table:
                if table[p] > 0:
                    heapq.heappush(heap, (-table[p], p))
                else:
                    del table[p]
        if verbose and len(merges) % 500 == 0:
            print(f"merge {len(merges)}/{n_merges}: {new!r} ({-negative_count} times)")
    if len(merges) < n_merges:
        raise ValueError(
            f"the text allows only {len(merges)} merges, too few for vocab_size={vocab_size}; "
            f"give more text or a smaller vocab_size"
        )

    pieces = [Piece(piece, 0.0, kind) for piece, kind in SPECIAL_PIECES]
    if byte_fallback:
        pieces += [Piece(f"<0x{b:02X}>", 0.0, PieceType.BYTE) for b in range(256)]
    pieces += [Piece(piece, -float(i)) for i, piece in enumerate(merges + chars)]
    model = SentencePieceModel(
        pieces,
        model_type="bpe",
        byte_fallback=byte_fallback,
        split_digits=split_digits,
        normalizer_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        trainer_options={"character_coverage": float(character_coverage), "max_sentencepiece_length": max_piece_length},
    )
    return SentencePieceTokenizer(model)
