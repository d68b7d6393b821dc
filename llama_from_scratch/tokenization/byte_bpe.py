"""Byte-level BPE, the tokenizer of GPT-2, Llama 3 and SmolLM2, written from scratch.

SentencePiece (:mod:`.sentencepiece_bpe`) starts from characters and needs byte fallback for rare ones.
Byte-level BPE starts from *bytes*: every text is a sequence of UTF-8 bytes, all 256 of them are in the
vocabulary, so nothing is ever unknown. Encoding takes four steps:

1. **Special tokens** such as ``<|im_start|>`` are cut out of the text first and become their own ids;
   BPE never sees them. (So a user who types ``<|im_end|>`` produces the real control token, which is why
   chat front-ends escape user text.)
2. **Pre-tokenisation.** A regular expression cuts the rest into chunks, roughly words with their leading
   space, runs of digits or punctuation, and whitespace: ``"Hello world!!"`` -> ``"Hello", " world", "!!"``.
   Merges never cross a chunk boundary, so a piece never mixes a word with the punctuation after it.
   The patterns use Unicode classes (``\\p{L}`` letters, ``\\p{N}`` numbers) that Python's ``re`` lacks;
   the ``regex`` package has them. Patterns read from a file run under a time limit (:func:`pre_tokenize`).
3. **Bytes as characters.** Each chunk's UTF-8 bytes are written as printable characters with GPT-2's
   byte-to-unicode table (:func:`bytes_to_unicode`): printable ASCII and Latin-1 bytes stand for themselves,
   the others are shifted to U+0100 and up, so the space byte is ``Ġ`` and the newline ``Ċ``. Vocabularies
   (``tokenizer.json``, GGUF) store pieces in this alphabet: ``"Ġworld"`` is the token for ``" world"``.
4. **Merge by rank.** The vocabulary comes with an ordered list of merge rules (``"Ġ w"``, ``"o r"``, ...).
   Repeatedly find the neighbouring pair whose rule comes *first* in the list, and merge it, until no
   neighbouring pair has a rule. The result pieces are looked up in the vocabulary. A heap of candidate
   pairs does this in near-linear time (:meth:`ByteLevelBPE.bpe`), even for one long word without spaces.

Decoding maps each token back to its bytes and decodes the whole byte string as UTF-8.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import lru_cache

from .bpe import merge_by_priority

try:
    import regex
except ModuleNotFoundError:  # pragma: no cover - regex comes with transformers; the error says what to do
    regex = None

# GPT-2's pattern, as Hugging Face's ByteLevel pre-tokenizer uses it: contractions, letters, numbers,
# other symbols (each with an optional leading space), then whitespace.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Llama 3's pattern: case-insensitive contractions, numbers of at most three digits, line breaks kept apart.
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# The pre-tokenizers named by GGUF's ``tokenizer.ggml.pre``: patterns applied one after the other.
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "gpt2": (GPT2_PATTERN,),
    "smollm": (r"\p{N}", GPT2_PATTERN),  # SmolLM2 and StarCoder: every digit alone, then GPT-2's pattern
    "starcoder": (r"\p{N}", GPT2_PATTERN),
    "llama-bpe": (LLAMA3_PATTERN,),  # Llama 3
}

# Patterns come from tokenizer files, which are untrusted. One that backtracks catastrophically, such as
# ``(a|a)+$``, takes time exponential in the length of the text it fails on (minutes for 30 characters) and
# would hang ``encode``. So matching a text runs under a time limit: a generous budget per character,
# 20 µs, where patterns like those above need about 0.5 µs (1 MB of Shakespeare in 0.5 s, the limit on),
# plus half a second, so that neither a large legitimate text (1 MB gets 20 s) nor a short one on a busy
# machine ever runs out, while a catastrophic pattern is stopped within about a second on a short text.
# The patterns above are known to run in linear time and go without the limit: ``regex`` checks the clock
# at every match, which costs about a microsecond each (70% more time for Shakespeare).
MATCH_SECONDS = 0.5
MATCH_SECONDS_PER_CHARACTER = 20e-6
KNOWN_PATTERNS = frozenset(p for patterns in PRE_TOKENIZERS.values() for p in patterns)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from the 256 byte values to 256 printable characters.

    Bytes that are printable characters in Latin-1 (``!`` to ``~``, ``¡`` to ``¬``, ``®`` to ``ÿ``) map to
    themselves; the remaining 68 (controls, space, ...) map to U+0100, U+0101, ... in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


def _require_regex() -> None:
    if regex is None:
        raise ModuleNotFoundError("byte-level BPE needs the `regex` package for \\p{L} and \\p{N}: pip install regex")


def pre_tokenize(text: str, patterns: Sequence[str]) -> list[str]:
    """Cut ``text`` into chunks: each pattern in turn splits every chunk into its matches and the gaps between.

    ``pre_tokenize("Hello world 2024!", PRE_TOKENIZERS["smollm"])``
    -> ``["Hello", " world", " ", "2", "0", "2", "4", "!"]``.

    All the matching for ``text`` with patterns other than the known ones shares one time limit (see
    :data:`MATCH_SECONDS`); a pattern that runs out of it raises ``ValueError``: it backtracks catastrophically.
    """
    _require_regex()
    budget = MATCH_SECONDS + MATCH_SECONDS_PER_CHARACTER * len(text)
    deadline = time.monotonic() + budget
    chunks = [text] if text else []
    for pattern in patterns:
        compiled, limited = _compile(pattern), pattern not in KNOWN_PATTERNS
        split = []
        for chunk in chunks:
            timeout = max(deadline - time.monotonic(), 1e-3) if limited else None
            try:
                matches = list(compiled.finditer(chunk, timeout=timeout))
            except TimeoutError:
                raise ValueError(
                    f"pre-tokenizer pattern {pattern!r} backtracks catastrophically: matching it on a text of "
                    f"{len(text):,} characters ran past the time limit of {budget:.1f} s (the usual patterns need "
                    f"about 0.5 µs a character); fix or remove this Split pattern in the tokenizer file"
                ) from None
            end = 0
            for match in matches:
                if match.start() > end:
                    split.append(chunk[end : match.start()])  # a gap no alternative matched: kept as it is
                if match.end() > match.start():
                    split.append(match.group())
                end = match.end()
            if end < len(chunk):
                split.append(chunk[end:])
        chunks = split
    return chunks


@lru_cache(maxsize=None)
def _compile(pattern: str):
    return regex.compile(pattern)


class ByteLevelBPE:
    """A byte-level BPE tokenizer: a vocabulary ``{piece: id}``, ordered merge rules, a pre-tokenizer.

    Pieces and merges are written in GPT-2's byte alphabet (``"Ġworld"``), as in ``tokenizer.json`` and GGUF;
    ``merges`` is the rules in order, or ``{rule: rank}``.
    ``special_tokens`` maps texts such as ``"<|im_start|>"`` to ids; they are matched before anything else.
    ``ignore_merges`` (Llama 3): a chunk that is itself in the vocabulary is one token, whatever the merges.
    ``load_tokenizer`` builds one from a ``tokenizer.json`` or a GGUF file.
    """

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]] | dict[tuple[str, str], int],
        patterns: Sequence[str] = (GPT2_PATTERN,),
        special_tokens: dict[str, int] | None = None,
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
        unk_id: int | None = None,
        ignore_merges: bool = False,
    ):
        _require_regex()
        self.vocab = dict(vocab)
        # Lower rank: merged first. A list ranks its rules by position; a dict gives the ranks, which rules may
        # share (a tiktoken file ranks a rule by the token it makes: :mod:`.tiktoken_file`).
        pairs = merges.items() if isinstance(merges, dict) else ((pair, rank) for rank, pair in enumerate(merges))
        self.ranks = {tuple(pair): rank for pair, rank in pairs}
        self.patterns = tuple(patterns)
        self.special_tokens = dict(special_tokens or {})
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = bos_id, eos_id, pad_id, unk_id
        self.ignore_merges = ignore_merges
        self.vocab_size = max([*self.vocab.values(), *self.special_tokens.values()]) + 1
        self.id_to_piece = {i: piece for piece, i in self.vocab.items()}
        self.id_to_special = {i: text for text, i in self.special_tokens.items()}
        self.byte_to_char = bytes_to_unicode()
        self.char_to_byte = {char: byte for byte, char in self.byte_to_char.items()}
        # Longest first, so that "<|im_start|>" wins over a shorter special token it starts with.
        alternatives = sorted(self.special_tokens, key=len, reverse=True)
        self._special_pattern = regex.compile("|".join(regex.escape(s) for s in alternatives)) if alternatives else None
        self._cache: dict[str, list[int]] = {}

    # -- encoding ------------------------------------------------------------------------------------------------

    def bpe(self, chunk: str) -> list[str]:
        """Merge one chunk (already in the byte alphabet) by rank: ``"Ġworld" -> ["Ġworld"]``.

        The definition, the loop notebook 01 writes (there on byte ids) with :func:`.bpe.merge`::

            symbols = list(chunk)
            while len(symbols) > 1:
                best = min(pair_counts(symbols), key=lambda pair: self.ranks.get(pair, float("inf")))
                if best not in self.ranks:
                    break  # no neighbouring pair has a merge rule: done
                symbols = merge(symbols, best, best[0] + best[1])  # every occurrence, left to right

        Each pass scans every pair to apply one rule, and a chunk of ``n`` symbols can need about ``n`` passes:
        ``O(n^2)``. That is harmless for words of ten letters, and hangs on one pasted word of 100,000 (over
        150 s). :func:`.bpe.merge_by_priority` gives the same pieces with a heap of candidate pairs keyed by
        ``(rank, position)``, in ``O(n log n)``: it pops the pairs of the best rule present left to right, and an
        occurrence that overlaps one merged to its left is stale when popped, just as :func:`.bpe.merge`
        skips it. (The two differ only for a merge list in which a rule comes before a rule that builds one of
        its sides, which training never produces; there the heap does what Hugging Face ``tokenizers`` does.)
        """
        if self.ignore_merges and chunk in self.vocab:
            return [chunk]
        return merge_by_priority(chunk, self.ranks.get)

    def _encode_chunk(self, chunk: str) -> list[int]:
        ids = self._cache.get(chunk)
        if ids is None:
            as_chars = "".join(self.byte_to_char[b] for b in chunk.encode("utf-8"))
            ids = [i for piece in self.bpe(as_chars) for i in self._piece_ids(piece)]
            if len(self._cache) < 1_000_000:
                self._cache[chunk] = ids
        return ids

    def _piece_ids(self, piece: str) -> list[int]:
        # Only a byte that never occurred in training can be missing from a byte-level vocabulary (SmolLM2's
        # lacks 21 control bytes). Like Hugging Face's BPE, give <unk> if there is one, else drop it.
        if piece in self.vocab:
            return [self.vocab[piece]]
        return [] if self.unk_id is None else [self.unk_id]

    def split_special(self, text: str) -> list[tuple[str, bool]]:
        """Cut ``text`` around special tokens: ``[(text, is_special), ...]``."""
        if self._special_pattern is None:
            return [(text, False)] if text else []
        parts, end = [], 0
        for match in self._special_pattern.finditer(text):
            if match.start() > end:
                parts.append((text[end : match.start()], False))
            parts.append((match.group(), True))
            end = match.end()
        if end < len(text):
            parts.append((text[end:], False))
        return parts

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text``; special tokens in the text become their ids. ``bos``/``eos`` add those ids."""
        ids = [self._special("bos")] if bos else []
        for part, is_special in self.split_special(text):
            if is_special:
                ids.append(self.special_tokens[part])
            else:
                for chunk in pre_tokenize(part, self.patterns):
                    ids.extend(self._encode_chunk(chunk))
        return ids + ([self._special("eos")] if eos else [])

    def _special(self, name: str) -> int:
        value = getattr(self, f"{name}_id")
        if value is None:
            raise ValueError(f"this tokenizer has no {name} token")
        return value

    # -- decoding ------------------------------------------------------------------------------------------------

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """The text of ``ids``: bytes joined, then decoded as UTF-8 (invalid bytes become U+FFFD)."""
        out, pending = [], bytearray()
        for i in ids:
            if i in self.id_to_special:
                out.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
                if not skip_special:
                    out.append(self.id_to_special[i])
            elif i in self.id_to_piece:
                pending.extend(self.char_to_byte[char] for char in self.id_to_piece[i])
            else:
                raise ValueError(f"token id {i} is not in the vocabulary (size {self.vocab_size})")
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)

    def __repr__(self) -> str:
        return (
            f"ByteLevelBPE(vocab_size={self.vocab_size}, merges={len(self.ranks)}, "
            f"special_tokens={len(self.special_tokens)}, bos_id={self.bos_id}, eos_id={self.eos_id})"
        )
