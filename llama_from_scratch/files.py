"""Reading files that may be damaged or hostile: regular files only, JSON with every fault named.

A checkpoint comes from the internet. Its files can be truncated, bit-flipped or crafted, and every one of
them must end in a clear :class:`FormatError` naming the file and the field, never in a hang, a runaway
allocation or a traceback from deep inside a library. Three rules keep the readers of this package safe:

* **Only regular files are opened, and only as much as their kind may hold.** A FIFO named ``config.json``
  blocks ``open`` until someone writes into it, forever; ``/dev/zero`` named ``model.safetensors`` never
  ends. :func:`regular_file` checks ``stat.S_ISREG`` before anything opens the file, and :func:`read_bytes`
  compares its size with a limit before reading it (a 4 GB ``config.json`` is refused, not read).
* **JSON is parsed with its failures caught**: invalid UTF-8, invalid syntax, integers of more than 4300
  digits and nesting deep enough to exhaust Python's recursion all become a ``FormatError``, whether the
  JSON is a file (:func:`read_json`) or a text inside one (:func:`parse_json`: a safetensors header's
  metadata, a line of a JSON Lines file).
* **Every value read from a file has its type checked** before it is used (:func:`check_type`):
  ``"tie_word_embeddings": "false"`` is a string, and ``bool("false")`` is ``True``.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from .errors import FormatError, is_finite_number, is_int

_KINDS = {
    "int": "an integer",
    "float": "a finite number",
    "bool": "true or false",
    "str": "a string",
    "list": "a list",
    "dict": "an object",
}
_FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def regular_file(path: str | Path) -> Path:
    """``path``, after checking that it is a regular file (symbolic links are followed).

    Raises ``FileNotFoundError`` if nothing is there and :class:`FormatError` for a directory, a FIFO, a
    device or a socket, which would block or never end when read.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    if not stat.S_ISREG(mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise FormatError(f"{path}: expected a regular file, got {kind}")
    return path


MAX_JSON_BYTES = 256 << 20  # a JSON file's limit: Llama 3's tokenizer.json is 9 MB, a config a few KB


def read_bytes(path: str | Path, limit: int) -> bytes:
    """The bytes of the regular file ``path``, after checking that it holds at most ``limit`` of them.

    The size is read from the file system before the file is opened, so a file too large is refused
    without reading (or allocating) anything.
    """
    path = regular_file(path)
    size = path.stat().st_size
    if size > limit:
        raise FormatError(f"{path}: {size:,} bytes, more than the {limit:,} such a file may hold")
    return path.read_bytes()


def plain_file_name(name: object, where: str, directory: str | Path) -> str:
    """``name`` if it names an entry directly inside ``directory``: no ``/``, no ``..``, not absolute.

    A file that names another file (a safetensors index, a training run's ``latest``) must not reach outside
    its folder: ``../../home/me/.ssh/id_rsa`` is refused. ``where`` names the file and field for the error.
    """
    check_type(name, "str", where)
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise FormatError(f"{where} is {name!r:.80}; expected the name of an entry inside {directory}")
    return name


def parse_json(text: str | bytes, where: str, kind: str = "dict") -> object:
    """The JSON value in ``text``, which must be of ``kind`` (see :func:`check_type`; ``None``: any).

    ``where`` names the file (and the field or line) for the :class:`FormatError` that any fault becomes.
    """
    try:
        value = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except UnicodeDecodeError as error:
        raise FormatError(f"{where}: not UTF-8 text ({error})") from None
    except RecursionError:
        raise FormatError(f"{where}: JSON nested deeper than Python can parse") from None
    except ValueError as error:  # JSONDecodeError, and integers too long to convert
        raise FormatError(f"{where}: not valid JSON ({str(error)[:200]})") from None
    if kind is not None and not _is(value, kind):
        wanted = "a JSON object" if kind == "dict" else _KINDS[kind]
        raise FormatError(f"{where}: expected {wanted}, got {type(value).__name__}")
    return value


def read_json(path: str | Path, limit: int = MAX_JSON_BYTES) -> dict:
    """A JSON object from the regular file ``path`` of at most ``limit`` bytes; :class:`FormatError` naming
    the file if it is not one."""
    return parse_json(read_bytes(path, limit), str(path))


def _is(value: object, kind: str) -> bool:
    if kind == "int":
        return is_int(value)
    if kind == "float":
        return is_finite_number(value)
    return isinstance(value, {"bool": bool, "str": str, "list": list, "dict": dict}[kind])


def check_type(value: object, kind: str, where: str, items: str | None = None) -> object:
    """``value`` if it is of ``kind`` (``"int"``, ``"float"``, ``"bool"``, ``"str"``, ``"list"`` or ``"dict"``).

    Booleans are not numbers here and floats must be finite. ``items``: the kind of every element of a list.
    ``where`` names the file and the field (``"config.json: vocab_size"``) for the :class:`FormatError`.
    """
    if not _is(value, kind):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise FormatError(f"{where} must be {_KINDS[kind]}, got {shown} ({type(value).__name__})")
    if items is not None:
        for i, item in enumerate(value):
            if not _is(item, items):
                check_type(item, items, f"{where}[{i}]")
    return value


REQUIRED = object()  # the default of a field that must be present


def json_field(
    mapping: dict, key: str, kind: str, source: str | Path, default: object = None, nullable: bool = False, items=None
) -> object:
    """``mapping[key]`` checked by :func:`check_type`; ``default`` if the key is absent (or null, if ``nullable``).

    With ``default=REQUIRED`` an absent key is a :class:`FormatError` naming ``source`` and the key.
    """
    if key not in mapping or (nullable and mapping[key] is None):
        if default is REQUIRED:
            raise FormatError(f"{source}: missing {key}")
        return default
    return check_type(mapping[key], kind, f"{source}: {key}", items)
