"""Translating tensor names between checkpoint formats.

Each format names the same weights differently; layer ``3``'s gate
projection is ``layers.3.feed_forward.w1.weight`` for Meta (and this package),
``model.layers.3.mlp.gate_proj.weight`` for Hugging Face and
``blk.3.ffn_gate.weight`` for GGUF. A format module lists its names as
templates with ``{i}`` for the layer index; :class:`NameMap` turns such a
table into translations in both directions.
"""

from __future__ import annotations

import re


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(\d+)") + "$")


def _rename(name: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in table:
        match = pattern.match(name)
        if match:
            return template.format(i=match.group(1)) if match.groups() else template
    return None


class NameMap:
    """Both directions of a ``{their template: Meta template}`` table."""

    def __init__(self, templates: dict[str, str]):
        self._to_meta = [(_pattern(theirs), meta) for theirs, meta in templates.items()]
        self._from_meta = [(_pattern(meta), theirs) for theirs, meta in templates.items()]

    def to_meta(self, name: str) -> str | None:
        """Their name -> Meta's name; None if the name is not a Llama weight."""
        return _rename(name, self._to_meta)

    def from_meta(self, name: str) -> str | None:
        """Meta's name -> their name; None if there is none."""
        return _rename(name, self._from_meta)
