"""Llama 3's ``tokenizer.model``: the tiktoken file format, read into this package's byte-level BPE.

Llama 1 and 2 ship a SentencePiece protobuf as ``tokenizer.model``; Llama 3 ships a file of the same name
in OpenAI's tiktoken format, which is plain text, one token a line::

    IQ== 0
    Ig== 1
    ...
    IHRoZQ== 279

Each line is a token's *bytes*, base64-encoded, and its rank. The rank is the token's id **and** its merge
priority: there is no list of merge rules. Encoding a chunk (after the same regex pre-tokenisation as
:mod:`.byte_bpe`) starts from its single bytes and repeatedly joins the neighbouring pair whose joined
bytes form the token of lowest rank, until no neighbouring pair forms a token; a chunk that is itself a
token is that one token at once.

That is byte-level BPE with the merge rules written implicitly, so :class:`.ByteLevelBPE` encodes it: every
way to cut a token into two tokens is a merge rule, ranked by the token it makes (two rules that make the
same token share its rank, so that the leftmost pair wins, as in tiktoken), and ``ignore_merges`` gives
whole-chunk tokens directly. Llama 3's 128,000 ranked tokens are followed by 256 special tokens
(``<|begin_of_text|>`` = 128000, ...), which the file does not list: Meta's code adds them, and so does
:func:`read_tiktoken_file`, after however many ranks the file holds.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path

from ..files import regular_file
from ..errors import FormatError
from .byte_bpe import LLAMA3_PATTERN, ByteLevelBPE, bytes_to_unicode

# Llama 3.1's special tokens, in id order after the ranked ones (Meta's tokenizer.py): eleven with a use,
# then reserved ones up to 256 in all. <|eot_id|> ends a chat turn; <|end_of_text|> ends a document.
LLAMA3_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    *(f"<|reserved_special_token_{i}|>" for i in range(3, 248)),
)
# Where Meta's chat code ends an answer besides at <|end_of_text|> (a base tokenizer's EOS, the end of a
# document): <|eot_id|>, the end of a turn, and <|eom_id|>, the end of a message after which Llama 3.1 waits
# for a tool's output. An instruct model ends its answers with <|eot_id|>, never with <|end_of_text|>.
LLAMA3_END_OF_TURN_TOKENS: tuple[str, ...] = ("<|eot_id|>", "<|eom_id|>")

# One line: base64 characters, a space, a decimal rank. A file whose first line looks so is a tiktoken file.
LINE = re.compile(rb"[A-Za-z0-9+/]+={0,2} [0-9]+")


def looks_like_tiktoken(head: bytes) -> bool:
    """Whether a file's first bytes are a tiktoken line (a SentencePiece protobuf starts with byte 0x0a)."""
    first = head.split(b"\n", 1)[0].rstrip(b"\r")
    return LINE.fullmatch(first) is not None


def read_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """``{token bytes: rank}`` of a tiktoken file, checked: :class:`FormatError` naming the file and line.

    Every line must be ``base64 rank``; tokens and ranks must be unique; the ranks must be ``0 .. n - 1``
    (so that they are the ids of the first ``n`` tokens); all 256 single bytes must be tokens, or some
    text could not be encoded at all.
    """
    path = Path(path)
    regular_file(path)
    ranks: dict[bytes, int] = {}
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            where = f"{path}: line {number}"
            if LINE.fullmatch(line) is None:
                raise FormatError(f'{where} is {line[:60]!r}, expected "base64-token rank"')
            encoded, rank_text = line.split(b" ")
            try:
                token = base64.b64decode(encoded, validate=True)
            except binascii.Error as error:
                raise FormatError(f"{where}: {encoded[:60]!r} is not base64 ({error})") from None
            if not token:
                raise FormatError(f"{where}: an empty token")
            if token in ranks:
                raise FormatError(f"{where}: token {token!r} is listed twice (also with rank {ranks[token]})")
            if len(rank_text) > 18:  # ranks count the file's lines: no file holds 10**18 of them
                raise FormatError(f"{where}: rank {rank_text[:20].decode()}... has {len(rank_text)} digits")
            ranks[token] = int(rank_text)
    if sorted(ranks.values()) != list(range(len(ranks))):
        seen = sorted(set(range(len(ranks))) - set(ranks.values()))[:3]
        raise FormatError(f"{path}: the ranks must be 0 .. {len(ranks) - 1}, each once; missing e.g. {seen}")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise FormatError(f"{path}: {len(missing)} single bytes are not tokens (e.g. {bytes(missing[:3])!r})")
    return ranks


def tiktoken_to_byte_bpe(
    ranks: dict[bytes, int],
    special_tokens: tuple[str, ...] = LLAMA3_SPECIAL_TOKENS,
    pattern: str = LLAMA3_PATTERN,
    bos: str | None = "<|begin_of_text|>",
    eos: str | None = "<|end_of_text|>",
    pad: str | None = "<|finetune_right_pad_id|>",
) -> ByteLevelBPE:
    """A :class:`ByteLevelBPE` that encodes exactly as tiktoken does with ``ranks``.

    The vocabulary is the ranked tokens, written in GPT-2's byte alphabet, then ``special_tokens`` from id
    ``len(ranks)`` on. ``bos``, ``eos`` and ``pad`` name special tokens (``None``: none); Llama 3's defaults
    suit a base model, whose documents end with ``<|end_of_text|>``; a chat model ends its turns with
    ``<|eot_id|>``.
    """
    alphabet = bytes_to_unicode()

    def piece(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    vocab = {piece(token): rank for token, rank in ranks.items()}
    merges = {}
    # Every way to make a token from two tokens: a cut is only worth trying where the left part has the
    # length of some token. Trying every cut would cost len(token)**2 (a slice and a lookup per cut): minutes
    # for a crafted 1 MB token; Llama 3's lengths are a few dozen, so this is as fast for real files.
    lengths = sorted({len(token) for token in ranks})
    for token, rank in ranks.items():
        for cut in lengths:
            if cut >= len(token):
                break
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges[(piece(left), piece(right))] = rank
    special = {text: len(ranks) + i for i, text in enumerate(special_tokens)}
    ids = {}
    for name, text in (("bos", bos), ("eos", eos), ("pad", pad)):
        if text is not None and text not in special:
            raise ValueError(f"{name} {text!r} is not one of the special tokens")
        ids[f"{name}_id"] = None if text is None else special[text]
    return ByteLevelBPE(vocab, merges, (pattern,), special, ignore_merges=True, **ids)


def read_tiktoken_file(path: str | Path, **options) -> ByteLevelBPE:
    """Llama 3's ``tokenizer.model`` (or any tiktoken file) as a :class:`ByteLevelBPE`.

    ``options`` as in :func:`tiktoken_to_byte_bpe` (special tokens, pattern, bos/eos/pad); by default
    Llama 3's.
    """
    return tiktoken_to_byte_bpe(read_tiktoken_ranks(path), **options)


def write_tiktoken_file(ranks: dict[bytes, int], path: str | Path) -> None:
    """Write ``{token bytes: rank}`` as a tiktoken file, in rank order (as Meta's file is)."""
    in_order = sorted(ranks.items(), key=lambda item: item[1])
    lines = [base64.b64encode(token) + b" " + str(rank).encode() for token, rank in in_order]
    Path(path).write_bytes(b"\n".join(lines) + b"\n")
