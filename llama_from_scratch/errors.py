"""The one error type for a file that does not hold what its format requires.

Every reader of this package (checkpoints in Hugging Face, Meta and GGUF format, tokenizer files) raises
:class:`FormatError` for a damaged or unexpected file, with a message that names the file and the field
or tensor that was wrong. It is a ``ValueError``, so ``except ValueError`` catches it too.
"""

from __future__ import annotations


class FormatError(ValueError):
    """A file is not what its format requires; the message names the file and what was wrong."""
