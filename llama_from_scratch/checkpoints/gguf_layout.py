"""Checking a GGUF file's layout before anything parses it: every count, length and offset against the file.

The ``gguf`` package's reader trusts the file: an array header that claims 2**62 items makes it loop and
allocate until the machine runs out of memory, and tensor offsets are used as they are. So
:func:`~.gguf.open_gguf` first walks the header with :mod:`struct` (:func:`check_gguf_layout`), checking
every count and length against the bytes left in the file and every tensor against the data section, and
only then hands the file to the reader. A damaged or crafted file is a :class:`FormatError` naming the
file and the field, never a reader that runs out of memory.
"""

from __future__ import annotations

import math
import mmap
import struct
from pathlib import Path

from ..errors import FormatError
from ..files import regular_file


# GGUF's value types: the struct format of each fixed-size one; 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
# The gguf reader keeps about 700 bytes of Python objects per array item, so the items of all metadata arrays
# together are limited: a 262,144-token vocabulary with its scores, types and merges needs about a million.
MAX_ARRAY_ITEMS = 1 << 22
_MAX_NESTING = 4  # arrays of arrays of ...
_MAX_DIMS = 4  # GGML_MAX_DIMS


class _Cursor:
    """Reads a GGUF header front to back and refuses to read past the end of the file."""

    def __init__(self, path: Path, data: mmap.mmap):
        self.path, self.data, self.pos, self.order, self.items = path, data, 0, "<", 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, size: int, what: str) -> int:
        """Step over ``size`` bytes; their offset."""
        if size > self.left():
            raise FormatError(
                f"{self.path}: {what} needs {size} bytes at offset {self.pos}, but the file ends at {len(self.data)}"
            )
        self.pos += size
        return self.pos - size

    def number(self, code: str, what: str) -> int | float | bool:
        return struct.unpack_from(self.order + code, self.data, self.take(struct.calcsize(code), what))[0]

    def string(self, what: str) -> bytes:
        length = self.number("Q", f"the length of {what}")
        start = self.take(length, what)
        return self.data[start : start + length]

    def text(self, what: str) -> str:
        try:
            return self.string(what).decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{self.path}: {what} is not UTF-8 text") from None

    def name(self, what: str, seen: set[str], kind: str) -> str:
        """A name (a metadata key, a tensor name) that must not repeat one of ``seen``; added to it."""
        name = self.text(what)
        if name in seen:
            raise FormatError(f"{self.path}: {kind} {name!r} appears twice")
        seen.add(name)
        return name

    def value(self, kind: int, what: str, depth: int = 0) -> int | float | bool | None:
        """Step over one metadata value of type ``kind``; its value if it is a number."""
        if kind in _SCALARS:
            return self.number(_SCALARS[kind], what)
        if kind == _STRING:
            self.take(self.number("Q", f"the length of {what}"), what)
            return None
        if kind != _ARRAY:
            raise FormatError(f"{self.path}: {what} has value type {kind}, which GGUF does not define")
        if depth == _MAX_NESTING:
            raise FormatError(f"{self.path}: {what} nests arrays more than {_MAX_NESTING} deep")
        item = self.number("I", f"the item type of {what}")
        count = self.number("Q", f"the item count of {what}")
        least = struct.calcsize(_SCALARS[item]) if item in _SCALARS else {_STRING: 8, _ARRAY: 12}.get(item)
        if least is None:
            raise FormatError(f"{self.path}: {what} has items of type {item}, which GGUF does not define")
        if count * least > self.left():
            raise FormatError(
                f"{self.path}: {what} claims {count} items, more than the {self.left()} bytes left in the file hold"
            )
        self.items += count
        if self.items > MAX_ARRAY_ITEMS:
            raise FormatError(f"{self.path}: {what}: the metadata arrays hold more than {MAX_ARRAY_ITEMS} items")
        if item in _SCALARS:
            self.take(count * least, what)
        else:
            for i in range(count):
                self.value(item, f"{what}[{i}]", depth + 1)
        return None


def _check_layout(path: Path, data: mmap.mmap) -> None:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    cursor = _Cursor(path, data)
    if data[:4] != b"GGUF":
        raise FormatError(f"{path}: not a GGUF file (it does not start with the magic bytes 'GGUF')")
    cursor.take(4, "the magic bytes")
    version = cursor.number("I", "the version")
    if version & 0xFFFF == 0:  # written on a machine of the other byte order
        cursor.order, version = ">", int.from_bytes(version.to_bytes(4, "little"), "big")
    if version not in (2, 3):
        if version == 1:
            raise NotImplementedError(f"{path}: GGUF version 1 is not supported (only versions 2 and 3)")
        raise FormatError(f"{path}: the version is {version}, expected GGUF version 2 or 3")
    n_tensors = cursor.number("Q", "the tensor count")
    n_fields = cursor.number("Q", "the metadata count")
    for count, least, what in ((n_fields, 13, "metadata count"), (n_tensors, 24, "tensor count")):
        if count * least > cursor.left():  # the smallest entry takes 13 (24) bytes
            raise FormatError(f"{path}: the {what} is {count}, more than the {cursor.left()} bytes left can hold")
    keys, alignment = set(), 32
    for i in range(n_fields):
        key = cursor.name(f"the name of metadata entry #{i}", keys, "metadata")
        kind = cursor.number("I", f"the type of metadata {key}")
        value = cursor.value(kind, f"metadata {key}")
        if key == "general.alignment":
            if kind != _UINT32 or value == 0 or value & (value - 1):
                raise FormatError(f"{path}: metadata general.alignment must be a uint32 power of two, got {value!r}")
            alignment = value
    tensors, names = [], set()
    for i in range(n_tensors):
        name = cursor.name(f"the name of tensor #{i}", names, "tensor")
        n_dims = cursor.number("I", f"the dimension count of tensor {name!r}")
        if n_dims > _MAX_DIMS:
            raise FormatError(f"{path}: tensor {name!r} has {n_dims} dimensions, GGUF allows at most {_MAX_DIMS}")
        dims = [cursor.number("Q", f"the shape of tensor {name!r}") for _ in range(n_dims)]
        kind = cursor.number("I", f"the type of tensor {name!r}")
        offset = cursor.number("Q", f"the offset of tensor {name!r}")
        if kind not in GGMLQuantizationType._value2member_map_:
            raise FormatError(f"{path}: tensor {name!r} has type {kind}, which is not a GGML tensor type")
        qtype = GGMLQuantizationType(kind)
        block, type_size = GGML_QUANT_SIZES[qtype]
        if dims and dims[0] % block:
            raise FormatError(
                f"{path}: tensor {name!r} ({qtype.name}) has rows of {dims[0]} values, not a multiple of its block "
                f"of {block}"
            )
        tensors.append((offset, math.prod(dims) // block * type_size, name))
    data_start = -(-cursor.pos // alignment) * alignment
    end, previous = data_start, None
    for offset, size, name in sorted(tensors):
        if offset % alignment:
            raise FormatError(
                f"{path}: tensor {name!r} starts at offset {offset}, not a multiple of general.alignment ({alignment})"
            )
        start = data_start + offset
        if start + size > len(data):
            raise FormatError(
                f"{path}: tensor {name!r} needs bytes {start} to {start + size}, but the file ends at {len(data)}"
            )
        if start < end:
            raise FormatError(f"{path}: tensor {name!r} overlaps tensor {previous!r}")
        end, previous = start + size, name


def check_gguf_layout(path: str | Path) -> None:
    """Walk a GGUF file's header and tensor table, checking every count, length and offset against the file.

    The layout (versions 2 and 3, little- or big-endian): the magic ``GGUF``, a uint32 version, a uint64
    tensor count and metadata count; then each metadata entry (a string key, a uint32 value type, the
    value), where a string is a uint64 length and its bytes and an array a uint32 item type, a uint64 count
    and the items; then each tensor's name, uint32 dimension count, uint64 dimensions, uint32 type and
    uint64 offset into the data section, which starts at the next multiple of ``general.alignment``.
    Raises :class:`FormatError` naming the file and the field for anything that cannot fit in the file.
    """
    path = regular_file(path)
    with open(path, "rb") as file:
        if not file.seek(0, 2):
            raise FormatError(f"{path}: empty file, not a GGUF file")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            _check_layout(path, data)
