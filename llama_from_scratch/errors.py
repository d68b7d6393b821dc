"""The one error type for a file that does not hold what its format requires, and the type checks behind it.

Every reader of this package (checkpoints in Hugging Face, Meta and GGUF format, tokenizer files) raises
:class:`FormatError` for a damaged or unexpected file, with a message that names the file and the field
or tensor that was wrong. It is a ``ValueError``, so ``except ValueError`` catches it too.
"""

from __future__ import annotations

import math


class FormatError(ValueError):
    """A file is not what its format requires; the message names the file and what was wrong."""


# Every validator (configs, training settings, RoPE scaling, fields read from files) asks the same two
# questions. Python's ``True`` is an ``int`` equal to 1, so a config that says ``"n_layers": true`` would pass
# a plain ``isinstance`` check: booleans are not numbers here. NaN and infinity are not usable numbers either.


def is_int(value: object) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: object) -> bool:
    """An ``int`` or ``float`` that is not a ``bool``, NaN or infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
