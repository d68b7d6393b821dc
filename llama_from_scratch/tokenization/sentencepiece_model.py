"""The SentencePiece ``.model`` file, the format of Llama's ``tokenizer.model``, read and written by hand.

A ``.model`` file is one Protocol Buffers message, ``ModelProto``. It holds

* ``pieces``: the vocabulary, in id order; each piece has a string, a score and a type (normal, unknown,
  control such as ``<s>``, user-defined, unused, or byte such as ``<0x0A>``);
* ``trainer_spec``: the options it was trained with (model type, ``byte_fallback``, ``split_digits``, ...);
* ``normalizer_spec``: how text is normalised before encoding (``add_dummy_prefix``,
  ``remove_extra_whitespaces``, ``escape_whitespaces``, and a compiled character map for rules such as NFKC).

Protocol Buffers' wire format is simple enough to read without the ``protobuf`` package. A message is a
sequence of fields, each a *key* followed by a value. The key is a varint ``field_number << 3 | wire_type``;
the wire type says how the value is stored:

* ``0``: a varint, 7 bits per byte, least significant group first, high bit set on every byte but the last
  (ints, bools, enums);
* ``1``: 8 bytes (double); ``5``: 4 bytes (float, little-endian);
* ``2``: a varint length, then that many bytes (strings, bytes, and nested messages).

Fields left out take their default values, which are part of the schema (``sentencepiece_model.proto``);
the ones this module needs are written into :class:`SentencePieceModel` below.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from ..files import regular_file
from ..errors import FormatError


class PieceType(IntEnum):
    """``ModelProto.SentencePiece.Type``: what a vocabulary entry is."""

    NORMAL = 1  # an ordinary piece of text, such as "▁the"
    UNKNOWN = 2  # <unk>: stands for text the vocabulary cannot spell
    CONTROL = 3  # <s>, </s>: ids with no text; never produced by encoding text
    USER_DEFINED = 4  # always one token when it appears in the text; never split or merged
    UNUSED = 5  # in the vocabulary, but never output
    BYTE = 6  # <0x00> ... <0xFF>: one UTF-8 byte, for byte fallback


@dataclass
class Piece:
    """One vocabulary entry. For BPE the score orders the merges: a higher score is merged first."""

    piece: str
    score: float = 0.0
    type: PieceType = PieceType.NORMAL


@dataclass
class SentencePieceModel:
    """The parts of a ``ModelProto`` that encoding and decoding need, with the schema's defaults."""

    pieces: list[Piece]
    model_type: str = "bpe"  # trainer_spec.model_type: "unigram", "bpe", "word" or "char"
    byte_fallback: bool = False  # trainer_spec.byte_fallback: spell unknown characters as <0x..> bytes
    split_digits: bool = False  # trainer_spec.split_digits: digits were never merged in training
    unk_surface: str = " \u2047 "  # trainer_spec.unk_surface: how <unk> decodes, " ⁇ "
    treat_whitespace_as_suffix: bool = False  # trainer_spec: "hello▁" instead of "▁hello"
    normalizer_name: str = ""  # normalizer_spec.name, such as "identity" or "nmt_nfkc"
    precompiled_charsmap: bytes = b""  # normalizer_spec: a compiled character map; empty for "identity"
    add_dummy_prefix: bool = True  # prepend "▁" so that a first word looks like every other word
    remove_extra_whitespaces: bool = True  # strip leading and trailing spaces, squeeze runs of spaces
    escape_whitespaces: bool = True  # write " " as "▁" (U+2581), a visible character
    trainer_options: dict[str, object] = field(default_factory=dict)  # other settings to write (see write_model)


# The ModelProto schema, reduced to the fields used here: field number -> (name, wire type).
_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}
_TRAINER_FIELDS = {
    3: "model_type",
    4: "vocab_size",
    10: "character_coverage",
    20: "max_sentencepiece_length",
    25: "split_digits",
    35: "byte_fallback",
    24: "treat_whitespace_as_suffix",
    44: "unk_surface",
}
_NORMALIZER_FIELDS = {
    1: "name",
    2: "precompiled_charsmap",
    3: "add_dummy_prefix",
    4: "remove_extra_whitespaces",
    5: "escape_whitespaces",
}


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, pos
        if shift > 70:
            raise ValueError("varint longer than 10 bytes")


def read_fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """Split one protobuf message into ``(field_number, value)`` pairs, in file order.

    Varints come back as ``int``, every other wire type as its raw ``bytes`` (a nested message is parsed by
    calling this again on them). Raises ``ValueError`` on bytes that are not a protobuf message.
    """
    fields: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(data, pos)
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            value, pos = data[pos : pos + size], pos + size
        elif wire_type == 2:
            size, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type} (field {number}) at byte {pos}")
        if number == 0 or pos > len(data):
            raise ValueError(f"malformed protobuf field (number {number}) ending at byte {pos} of {len(data)}")
        fields.append((number, value))
    return fields


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative ints are written as their 64-bit two's complement
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(number: int, value: int | bool | float | str | bytes) -> bytes:
    """One protobuf field: ints and bools as varints, floats as 4 bytes, str and bytes length-prefixed."""
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    if isinstance(value, (bool, int)):
        return _varint(number << 3 | 0) + _varint(int(value))
    if isinstance(value, str):
        value = value.encode("utf-8")
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _expect(value: int | bytes, kind: type, what: str) -> int | bytes:
    """``value`` if it came with the wire type the schema gives ``what`` (a varint, or length-prefixed bytes)."""
    if not isinstance(value, kind):
        wire = "a varint" if kind is int else "bytes"
        raise ValueError(f"{what} must be {wire}, got {type(value).__name__}")
    return value


def _text(value: int | bytes, what: str) -> str:
    return _expect(value, bytes, what).decode("utf-8")


def _message(value: int | bytes, names: dict[int, str], what: str) -> dict[str, int | bytes]:
    """The known fields of a nested message (trainer_spec, normalizer_spec) by name."""
    return {names[n]: v for n, v in read_fields(_expect(value, bytes, what)) if n in names}


def check_pieces(pieces: list[Piece]) -> None:
    """Raise ``ValueError`` for pieces no tokenizer can use: a byte piece that is not ``<0x00>`` ... ``<0xFF>``
    (decoding reads the byte from its text), an empty user-defined piece (it would match everywhere)."""
    for i, p in enumerate(pieces):
        if p.type == PieceType.BYTE and not re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", p.piece):
            raise ValueError(f"piece {i} is a byte piece, so its text must be <0x00> ... <0xFF>, got {p.piece!r:.60}")
        if p.type == PieceType.USER_DEFINED and not p.piece:
            raise ValueError(f"piece {i} is an empty user-defined piece")


def _parse_model(data: bytes) -> SentencePieceModel:
    pieces, trainer, normalizer = [], {}, {}
    for number, value in read_fields(data):
        if number == 1:  # repeated SentencePiece {1: piece, 2: score, 3: type}
            entry = Piece("")
            what = f"piece {len(pieces)}"
            for n, v in read_fields(_expect(value, bytes, what)):
                if n == 1:
                    entry.piece = _text(v, f"the text of {what}")
                elif n == 2:
                    entry.score = struct.unpack("<f", _expect(v, bytes, f"the score of {what}"))[0]
                elif n == 3:
                    entry.type = PieceType(_expect(v, int, f"the type of {what}"))
            pieces.append(entry)
        elif number == 2:
            trainer = _message(value, _TRAINER_FIELDS, "trainer_spec")
        elif number == 3:
            normalizer = _message(value, _NORMALIZER_FIELDS, "normalizer_spec")
    if not pieces:
        raise ValueError("the model has no pieces")
    check_pieces(pieces)

    def flag(fields: dict, name: str, default: bool) -> bool:
        return bool(_expect(fields.get(name, default), int, name))

    return SentencePieceModel(
        pieces=pieces,
        model_type=_MODEL_TYPES.get(_expect(trainer.get("model_type", 1), int, "model_type"), "unknown"),
        byte_fallback=flag(trainer, "byte_fallback", False),
        split_digits=flag(trainer, "split_digits", False),
        unk_surface=_text(trainer["unk_surface"], "unk_surface") if "unk_surface" in trainer else " \u2047 ",
        treat_whitespace_as_suffix=flag(trainer, "treat_whitespace_as_suffix", False),
        normalizer_name=_text(normalizer.get("name", b""), "normalizer_spec.name"),
        precompiled_charsmap=_expect(normalizer.get("precompiled_charsmap", b""), bytes, "precompiled_charsmap"),
        add_dummy_prefix=flag(normalizer, "add_dummy_prefix", True),
        remove_extra_whitespaces=flag(normalizer, "remove_extra_whitespaces", True),
        escape_whitespaces=flag(normalizer, "escape_whitespaces", True),
    )


def read_model(path: str | Path) -> SentencePieceModel:
    """Read a SentencePiece ``.model`` file (such as Llama's ``tokenizer.model``).

    Raises ``FileNotFoundError`` if there is no such file and :class:`FormatError`, naming the file,
    if it is not a SentencePiece model (or not a regular file: a FIFO would block the read forever).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no SentencePiece model file at {path}")
    regular_file(path)  # a FIFO would block the read below forever
    try:
        return _parse_model(path.read_bytes())
    except (ValueError, UnicodeDecodeError, struct.error) as error:
        raise FormatError(f"{path} is not a valid SentencePiece .model file: {error}") from None


def write_model(model: SentencePieceModel, path: str | Path) -> Path:
    """Write ``model`` as a ``.model`` file that the ``sentencepiece`` library (and :func:`read_model`) loads.

    Only non-default values need writing; ``model.trainer_options`` may add trainer fields by name
    (those in ``_TRAINER_FIELDS``, such as ``character_coverage``).
    """
    model_types = {name: number for number, name in _MODEL_TYPES.items()}
    trainer_numbers = {name: number for number, name in _TRAINER_FIELDS.items()}
    unknown = sorted(set(model.trainer_options) - set(trainer_numbers))
    if unknown:
        raise ValueError(f"cannot write trainer option(s) {unknown}; known: {sorted(trainer_numbers)}")
    trainer = {
        "model_type": model_types[model.model_type],
        "vocab_size": len(model.pieces),
        "byte_fallback": model.byte_fallback,
        "split_digits": model.split_digits,
        "treat_whitespace_as_suffix": model.treat_whitespace_as_suffix,
        "unk_surface": model.unk_surface,
        **model.trainer_options,
    }
    normalizer = {
        "name": model.normalizer_name,
        "precompiled_charsmap": model.precompiled_charsmap,
        "add_dummy_prefix": model.add_dummy_prefix,
        "remove_extra_whitespaces": model.remove_extra_whitespaces,
        "escape_whitespaces": model.escape_whitespaces,
    }
    normalizer_numbers = {name: number for number, name in _NORMALIZER_FIELDS.items()}
    data = b"".join(
        _field(1, _field(1, p.piece) + _field(2, float(p.score)) + _field(3, int(p.type))) for p in model.pieces
    )
    data += _field(2, b"".join(_field(trainer_numbers[k], v) for k, v in trainer.items()))
    data += _field(3, b"".join(_field(normalizer_numbers[k], v) for k, v in normalizer.items()))
    path = Path(path)
    path.write_bytes(data)
    return path
