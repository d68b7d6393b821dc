"""The one error type for a file that does not hold what its format requires, and the type checks behind it.

Every reader of this package (checkpoints in Hugging Face, Meta and GGUF format, tokenizer files) raises
:class:`FormatError` for a damaged or unexpected file, with a message that names the file and the field
or tensor that was wrong. It is a ``ValueError``, so ``except ValueError`` catches it too.
"""

from __future__ import annotations

import math
import struct


class FormatError(ValueError):
    """A file is not what its format requires; the message names the file and what was wrong."""


# Every validator (configs, training settings, RoPE scaling, fields read from files) asks the same two
# questions. Python's ``True`` is an ``int`` equal to 1, so a config that says ``"n_layers": true`` would pass
# a plain ``isinstance`` check: booleans are not numbers here. NaN and infinity are not usable numbers either.


def is_int(value: object) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: object) -> bool:
    """An ``int`` or ``float`` that is not a ``bool``, NaN or infinite (nor an int too large for a float)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int of more than 308 digits
        return False


def is_float32(value: object) -> bool:
    """A finite number that float32, the type training and sampling compute in, holds as a finite number and,
    unless it is 0, not as 0: ``1e39`` overflows to infinity and ``1e-46`` underflows to 0, so a learning
    rate or a top-p checked only as a Python float would pass and then break the computation."""
    if not is_finite_number(value):
        return False
    (rounded,) = struct.unpack("f", struct.pack("f", value))  # float32's nearest: infinity beyond its range
    return math.isfinite(rounded) and (value == 0 or rounded != 0)
