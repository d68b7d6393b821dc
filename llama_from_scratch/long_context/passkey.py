"""Passkey retrieval (Mohtashami and Jaggi, 2023): can a model find one number in a long text?

A random 5-digit number is hidden at some depth of a long, repetitive filler text, and the model is asked
for it at the end. Perplexity averages over every token and can look fine while the model ignores all but
the last few hundred; the passkey test asks for one fact from exactly one place, so it shows whether
attention still *reaches* that far. The filler carries no information and repeats, so the key is the only
thing worth remembering, and the answer is exact: the greedy continuation holds the number or it does not.

The prompt, as in the landmark-attention and YaRN papers::

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. ...
    The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.   (repeated)
    The pass key is 71432. Remember it. 71432 is the pass key.
    The grass is green. ...                                                                      (repeated)
    What is the pass key? The pass key is

Each part is tokenized on its own and the token ids joined, so the length is exact in tokens and the key
sits at a known token position. Nothing here depends on the model or the tokenizer's kind: any function
from text to token ids will do.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there."
)
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY_LINE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"


@dataclass(frozen=True)
class PasskeyPrompt:
    """A passkey prompt: its token ids, the key, and where the key's sentence starts (a token index)."""

    tokens: list[int]
    passkey: str
    key_position: int


def passkey_prompt(
    encode: Callable[[str], Sequence[int]], n_tokens: int, depth: float, passkey: str, prefix: Sequence[int] = ()
) -> PasskeyPrompt:
    """A prompt of at most ``n_tokens`` tokens with ``passkey`` hidden at ``depth`` (0 .. 1) of the filler.

    ``encode``: text to token ids (``tokenizer.encode``); ``prefix``: ids placed first (a BOS token, if the
    model wants one). The filler is repeated as often as fits, whole sentences only, so the prompt is
    shorter than ``n_tokens`` by less than one filler unit; ``round(depth * units)`` units come before the
    key and the rest after it. ``ValueError`` if ``depth`` is outside 0 .. 1, the key is not digits, or
    ``n_tokens`` leaves no room for one unit of filler.
    """
    if not (isinstance(depth, (int, float)) and 0 <= depth <= 1):
        raise ValueError(f"passkey depth must be a number from 0 to 1, got {depth!r}")
    if not (isinstance(passkey, str) and passkey.isascii() and passkey.isdigit()):
        raise ValueError(f"passkey must be a string of digits, got {passkey!r}")
    intro, filler = list(prefix) + list(encode(INTRO)), list(encode(FILLER))
    key, question = list(encode(KEY_LINE.format(key=passkey))), list(encode(QUESTION))
    units = (n_tokens - len(intro) - len(key) - len(question)) // len(filler)
    if units < 1:
        needed = len(intro) + len(key) + len(question) + len(filler)
        raise ValueError(
            f"a passkey prompt needs at least {needed} tokens with this tokenizer, got n_tokens={n_tokens}"
        )
    before = round(depth * units)
    tokens = intro + filler * before + key + filler * (units - before) + question
    return PasskeyPrompt(tokens, passkey, len(intro) + len(filler) * before)


def read_passkey(answer: str, n_digits: int = 5) -> str | None:
    """The first run of ``n_digits`` digits in a model's answer (``" 71432. Remember"`` -> ``"71432"``), or None.

    A longer run of digits is not a match: ``"714321"`` does not answer ``71432``.
    """
    match = re.search(rf"(?<![0-9])[0-9]{{{n_digits}}}(?![0-9])", answer)
    return match.group(0) if match else None
