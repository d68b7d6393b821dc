"""SentencePiece's BPE tokenizer (Llama 1 and 2, Mistral), written from scratch.

Encoding a text takes three steps:

1. **Normalise.** With Llama's settings (the ``identity`` rule) the characters stay as they are, but spaces
   become the visible ``▁`` (U+2581) and a "dummy prefix" ``▁`` is put in front, so that the first word of
   a text is spelled like every other word: ``"Hello world" -> "▁Hello▁world"``.
2. **Merge by score.** Start from single characters. Among all neighbouring pairs whose concatenation is a
   piece of the vocabulary, merge the one with the highest *score* (the leftmost on a tie); repeat until no
   pair is in the vocabulary. A BPE trainer gives earlier merges higher scores, so this replays training.
   Note the difference from GPT-2's BPE (:mod:`.byte_bpe`): there is no list of merge rules, only scored
   pieces, and the text is not split into words first.
3. **Fall back to bytes.** A piece that is not in the vocabulary (a character too rare to get its own
   piece, such as an emoji) is written as its UTF-8 bytes, one ``<0x..>`` token each: ``"😀"`` becomes
   ``<0xF0> <0x9F> <0x98> <0x80>``. Without byte fallback it would become ``<unk>``.

A line break gets no special treatment: it is a character like any other. In Llama 2's vocabulary, as in one
trained by ``sentencepiece``, no piece contains it, so it falls back to the byte token ``<0x0A>``.

Decoding joins the pieces, turns ``▁`` back into spaces, reassembles byte tokens into UTF-8 text, and drops
the dummy prefix's space at the start.
"""

from __future__ import annotations

import re
from pathlib import Path

from .bpe import merge_by_priority
from .sentencepiece_model import Piece, PieceType, SentencePieceModel, read_model, write_model

SPACE = "\u2581"  # ▁, how SentencePiece writes a space


class SentencePieceTokenizer:
    """Encode and decode with a SentencePiece BPE model; gives exactly the ids of the ``sentencepiece`` library.

    Build it from a :class:`SentencePieceModel` (``SentencePieceTokenizer.load("tokenizer.model")`` reads
    one from a file). ``encode(text, bos=False, eos=False) -> list[int]``; ``decode(ids) -> str``.
    """

    def __init__(self, model: SentencePieceModel):
        if model.model_type != "bpe":
            raise NotImplementedError(f"only BPE SentencePiece models are supported, this one is {model.model_type!r}")
        if model.precompiled_charsmap:
            raise NotImplementedError(
                f"normalization rule {model.normalizer_name!r} (a compiled character map) is not supported; "
                f"only 'identity', Llama's setting, is"
            )
        self.model = model
        self.pieces = [p.piece for p in model.pieces]
        self.vocab_size = len(model.pieces)
        types = [p.type for p in model.pieces]
        # Text can only be spelled with normal and user-defined pieces (and unused ones, split up again).
        self._spellable = {
            p.piece: i
            for i, p in enumerate(model.pieces)
            if p.type in (PieceType.NORMAL, PieceType.USER_DEFINED, PieceType.UNUSED)
        }
        self._scores = [p.score for p in model.pieces]
        self._unused = [t == PieceType.UNUSED for t in types]
        # User-defined pieces are cut out of the text whole, the longest where several start at one place
        # (a regular expression tries its alternatives in order), in one scan of the text.
        self._user_defined = {p.piece for p in model.pieces if p.type == PieceType.USER_DEFINED and p.piece}
        alternatives = sorted(self._user_defined, key=len, reverse=True)
        self._user_defined_pattern = re.compile("|".join(map(re.escape, alternatives))) if alternatives else None
        self._bytes = {
            int(p.piece[3:5], 16): i
            for i, p in enumerate(model.pieces)
            if p.type == PieceType.BYTE and re.fullmatch(r"<0x[0-9A-F]{2}>", p.piece)
        }
        if model.byte_fallback and len(self._bytes) != 256:
            raise ValueError(f"byte_fallback needs the 256 pieces <0x00> ... <0xFF>, the model has {len(self._bytes)}")

        def first(kind: PieceType) -> int | None:
            return types.index(kind) if kind in types else None

        self.unk_id = first(PieceType.UNKNOWN)
        controls = {p.piece: i for i, p in enumerate(model.pieces) if p.type == PieceType.CONTROL}
        self.bos_id: int | None = controls.get("<s>")
        self.eos_id: int | None = controls.get("</s>")
        self.pad_id: int | None = controls.get("<pad>")
        # If every piece is some spaces followed by text without spaces, no piece can cross from a non-space
        # into a space, so the text can be cut before each word's spaces and words encoded independently
        # (and remembered: a corpus repeats its words). True of Llama's and our trainer's vocabularies.
        self._words_independent = all(SPACE not in p.lstrip(SPACE) for p in self._spellable)
        self._cache: dict[str, list[int]] = {}
        self._ids = {p: i for i, p in reversed(list(enumerate(self.pieces)))}  # the first id of each piece

    # -- normalisation ----------------------------------------------------------------------------------------

    def normalize(self, text: str) -> str:
        """Apply the model's normaliser: ``"Hello world" -> "▁Hello▁world"`` with Llama's settings."""
        model = self.model
        if model.remove_extra_whitespaces:
            text = re.sub(" +", " ", text.strip(" "))
        if not text:
            return ""
        if model.add_dummy_prefix:
            text = text + " " if model.treat_whitespace_as_suffix else " " + text
        return text.replace(" ", SPACE) if model.escape_whitespaces else text

    # -- encoding ------------------------------------------------------------------------------------------------

    def _symbols(self, text: str) -> list[str]:
        """Split normalised text into initial symbols: user-defined pieces whole, else characters."""
        if self._user_defined_pattern is None:
            return list(text)
        symbols, end = [], 0
        for match in self._user_defined_pattern.finditer(text):
            symbols.extend(text[end : match.start()])
            symbols.append(match.group())
            end = match.end()
        symbols.extend(text[end:])
        return symbols

    def _merge(self, text: str) -> list[str]:
        """Step 2: merge neighbouring symbols, highest-scoring resulting piece first, until none is a piece.

        The heap and linked list of :func:`.bpe.merge_by_priority` make this ``O(n log n)`` for ``n``
        characters, however long the text runs without a space; the priority of a pair is minus the score of
        the piece it makes (a heap pops the lowest first), so the leftmost of equal scores wins, as in
        ``sentencepiece``.
        """
        unmerge: dict[str, tuple[str, str]] = {}  # how each *unused* piece was made, to split it again at the end

        def priority(pair: tuple[str, str]) -> float | None:
            left, right = pair
            if left in self._user_defined or right in self._user_defined:
                return None  # user-defined pieces are frozen: they never merge with a neighbour
            merged = left + right
            piece_id = self._spellable.get(merged)
            if piece_id is None:
                return None
            if self._unused[piece_id]:
                unmerge[merged] = pair  # the last pair pushed wins, as in sentencepiece
            return -self._scores[piece_id]

        pieces = merge_by_priority(self._symbols(text), priority)

        def resegment(piece: str) -> list[str]:
            halves = unmerge.get(piece)
            return [piece] if halves is None else resegment(halves[0]) + resegment(halves[1])

        return [q for p in pieces for q in resegment(p)]

    def _to_ids(self, piece: str) -> list[int]:
        """Step 3: a piece's id, or else its bytes (byte fallback), or else <unk>."""
        piece_id = self._spellable.get(piece)
        if piece_id is not None:
            return [piece_id]
        if self.model.byte_fallback:
            return [self._bytes[b] for b in piece.encode("utf-8")]
        if self.unk_id is None:
            raise ValueError(f"cannot encode {piece!r}: not in the vocabulary, and the model has no <unk>")
        return [self.unk_id]

    def _encode_normalized(self, text: str) -> list[int]:
        if self._words_independent:
            cached = self._cache.get(text)
            if cached is not None:
                return cached
        ids = [i for piece in self._merge(text) for i in self._to_ids(piece)]
        if self._words_independent and len(self._cache) < 1_000_000:
            self._cache[text] = ids
        return ids

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text``, with ``bos_id`` in front and ``eos_id`` at the end if asked for."""
        normalized = self.normalize(text)
        if self._words_independent:  # cut before every run of ▁ that follows something else
            words = re.split(f"(?<=[^{SPACE}])(?={SPACE})", normalized) if normalized else []
        else:
            words = [normalized] if normalized else []
        ids = [i for word in words for i in self._encode_normalized(word)]
        if self.unk_id is not None:  # a run of unknown characters becomes one <unk> (as in sentencepiece)
            ids = [i for k, i in enumerate(ids) if not (i == self.unk_id and k > 0 and ids[k - 1] == self.unk_id)]
        return ([self._special("bos")] if bos else []) + ids + ([self._special("eos")] if eos else [])

    def _special(self, name: str) -> int:
        value = getattr(self, f"{name}_id")
        if value is None:
            raise ValueError(f"this model has no {name} token")
        return value

    # -- decoding ------------------------------------------------------------------------------------------------

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids``: byte tokens reassembled as UTF-8, ``▁`` as spaces, the dummy prefix removed.

        Control tokens (``<s>``, ``</s>``) have no text; ``<unk>`` decodes as the model's ``unk_surface``.
        """
        out, pending, first = [], bytearray(), True
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is out of range for a vocabulary of {self.vocab_size}")
            entry = self.model.pieces[i]
            if entry.type == PieceType.CONTROL:
                continue
            if entry.type == PieceType.BYTE:
                pending.append(int(entry.piece[3:5], 16))
                first = False
                continue
            out.append(pending.decode("utf-8", errors="replace"))
            pending.clear()
            if entry.type == PieceType.UNKNOWN:
                text = self.model.unk_surface
            else:
                text = entry.piece
                if first and self.model.add_dummy_prefix and text.startswith(SPACE):
                    text = text[1:]
                text = text.replace(SPACE, " ")
            out.append(text)
            first = False
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)

    # -- vocabulary and files ----------------------------------------------------------------------------------

    def id_to_piece(self, token_id: int) -> str:
        return self.pieces[token_id]

    def piece_to_id(self, piece: str) -> int:
        if piece not in self._ids:
            raise KeyError(f"{piece!r} is not in the vocabulary")
        return self._ids[piece]

    def save(self, path: str | Path) -> Path:
        """Write the model as a SentencePiece ``.model`` file (loadable by ``sentencepiece`` too)."""
        return write_model(self.model, path)

    @classmethod
    def load(cls, path: str | Path) -> SentencePieceTokenizer:
        """Read a SentencePiece ``.model`` file, such as Llama's ``tokenizer.model``."""
        return cls(read_model(path))

    def __repr__(self) -> str:
        return (
            f"SentencePieceTokenizer(vocab_size={self.vocab_size}, byte_fallback={self.model.byte_fallback}, "
            f"bos_id={self.bos_id}, eos_id={self.eos_id}, unk_id={self.unk_id})"
        )


__all__ = ["SPACE", "Piece", "PieceType", "SentencePieceTokenizer"]
