"""A task to measure fine-tuning on, built offline from the course's corpus: "Which play is this passage from?"

Each question shows a passage of a few consecutive speeches (speaker names included) from one of ten
well-known plays, lists the ten titles, and asks for the title alone; the answer is scored by exact
match (:func:`normalize` forgives case, curly quotes and a final full stop). Ten choices make chance 10%.

The split is by position inside each play: the first 80% of a play's passages are for training, the
last 20% (mostly its fifth act) are held out, so no held-out line is ever trained on, while the
characters, who give a play away, appear in both. The split is deterministic.

From the same questions come the three ways of teaching the task: *zero-shot* (the question alone),
*few-shot* (a few solved questions from the training part placed before it in the conversation, the
"in-context learning" of GPT-3), fine-tuning on the training questions (:mod:`.sft`), and preference
pairs for DPO (:mod:`.dpo`): the right title preferred over a plausible wrong one, a play of the same
genre when there is one (:func:`preference_data`), or over the model's own wrong answer (:func:`own_mistakes`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from ..generate import GenerationConfig, generate, generate_batch
from ..model import Llama
from ..tokenization.chat import chat_prompt, chat_stop_tokens
from ..tokenization.tokenizer import Tokenizer
from ..training.corpus import load_plays, play_files

TASK_PLAYS: tuple[str, ...] = (
    "a-midsummer-night-s-dream",
    "hamlet",
    "julius-caesar",
    "king-lear",
    "macbeth",
    "othello",
    "romeo-and-juliet",
    "the-merchant-of-venice",
    "the-tempest",
    "twelfth-night",
)
HELD_OUT_FRACTION = 0.2  # the last fifth of each play's passages
MAX_CHARS = 400  # the longest passage by default, in characters (a model with a short context needs less)
_SPEECH = re.compile(r"^[^\n]+:\n")  # a speech starts with its speaker's line "HAMLET:"


@dataclass(frozen=True)
class PlayQuestion:
    """A passage and the play it comes from (``play``: the file name, ``title``: the answer)."""

    passage: str
    play: str
    title: str


@dataclass(frozen=True)
class PlayTask:
    """The task's questions, split: ``train`` (first 80% of every play) and ``test`` (the rest)."""

    titles: tuple[str, ...]
    train: list[PlayQuestion]
    test: list[PlayQuestion]
    genres: dict[str, str]  # play -> its folder in the corpus: tragedies, comedies, ...


def passages(play_text: str, speeches: int = 3, max_chars: int = MAX_CHARS) -> list[str]:
    """Consecutive runs of ``speeches`` speeches, in order, not overlapping; runs longer than ``max_chars``
    characters are left out (not cut), so every passage is whole."""
    found = [p for p in play_text.split("\n\n") if _SPEECH.match(p)]
    runs = ["\n\n".join(found[i : i + speeches]) for i in range(0, len(found) - speeches + 1, speeches)]
    return [run for run in runs if len(run) <= max_chars]


def evenly_spaced(items: list, n: int | None) -> list:
    """``n`` items spread evenly over ``items`` (all of them if ``n`` is None or larger)."""
    if n is None or n >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def play_task(
    plays: tuple[str, ...] = TASK_PLAYS,
    train_per_play: int | None = None,
    test_per_play: int | None = None,
    max_chars: int = MAX_CHARS,
) -> PlayTask:
    """Build the task. ``train_per_play`` / ``test_per_play`` keep that many questions per play, evenly
    spread (for quick runs); by default all of them. ``max_chars``: the longest passage (a model with a
    short context needs shorter ones)."""
    texts = load_plays()
    unknown = [p for p in plays if p not in texts]
    if unknown:
        raise ValueError(f"unknown play name(s) {unknown}; the plays are: {sorted(texts)}")
    files = play_files()
    titles, train, test = [], [], []
    for play in plays:
        title = texts[play].split("\n\n", 1)[0].strip()  # the play's first paragraph is its title
        titles.append(title)
        found = [PlayQuestion(p, play, title) for p in passages(texts[play], max_chars=max_chars)]
        cut = round(len(found) * (1 - HELD_OUT_FRACTION))
        train += evenly_spaced(found[:cut], train_per_play)
        test += evenly_spaced(found[cut:], test_per_play)
    return PlayTask(tuple(titles), train, test, {p: files[p].parent.name for p in plays})


def question(task: PlayTask, passage: str) -> str:
    """The user's message: the passage, then the question and the choices (the question last, where a
    small model's attention to it is freshest)."""
    return (
        passage
        + "\n\nWhich play by Shakespeare is this passage from? Choose one of: "
        + ", ".join(task.titles)
        + ". Answer with the title only."
    )


def messages(task: PlayTask, item: PlayQuestion, shots: list[PlayQuestion] = ()) -> list[dict[str, str]]:
    """The conversation that asks ``item``, after ``shots`` solved examples (few-shot); no answer yet."""
    conversation = []
    for shot in shots:
        conversation += [
            {"role": "user", "content": question(task, shot.passage)},
            {"role": "assistant", "content": shot.title},
        ]
    return conversation + [{"role": "user", "content": question(task, item.passage)}]


def few_shot_examples(task: PlayTask, n: int = 3, seed: int = 0) -> list[PlayQuestion]:
    """``n`` training questions from ``n`` different plays (fixed by ``seed``), for few-shot prompts."""
    rng = np.random.default_rng(seed)
    plays = rng.permutation(len(task.titles))[:n]
    by_play = {p: [q for q in task.train if q.title == task.titles[p]] for p in plays}
    return [by_play[p][int(rng.integers(len(by_play[p])))] for p in plays]


def sft_conversations(task: PlayTask, items: list[PlayQuestion]) -> list[list[dict[str, str]]]:
    """Each question with its answer: supervised fine-tuning data."""
    return [messages(task, item) + [{"role": "assistant", "content": item.title}] for item in items]


def wrong_title(task: PlayTask, item: PlayQuestion, rng: np.random.Generator) -> str:
    """A plausible wrong answer: another play of the same genre if the task has one, else any other play."""
    others = [p for p in task.genres if p != item.play]
    same_genre = [p for p in others if task.genres[p] == task.genres[item.play]]
    pool = same_genre or others
    return task.titles[list(task.genres).index(pool[int(rng.integers(len(pool)))])]


def preference_data(task: PlayTask, items: list[PlayQuestion], seed: int = 0) -> list[dict]:
    """``{"messages", "chosen", "rejected"}`` for each question: the right title over a plausible wrong one."""
    rng = np.random.default_rng(seed)
    return [{"messages": messages(task, q), "chosen": q.title, "rejected": wrong_title(task, q, rng)} for q in items]


OWN_MISTAKES = "own-mistakes"
PAIRS = ("other-play", OWN_MISTAKES)  # how DPO's pairs are built: preference_data's rule, or own_mistakes


def own_mistakes(
    model: Llama,
    tokenizer: Tokenizer,
    template: str,
    task: PlayTask,
    items: list[PlayQuestion],
    batch_size: int = 16,
) -> list[dict]:
    """On-policy pairs: for each question ``model`` answers wrong, the right title (chosen) over the model's own
    greedy answer (rejected), ``{"messages", "chosen", "rejected"}`` as :func:`preference_data`. A question it
    answers right gives no pair: its greedy answer *is* the chosen one, and another play put in its place would
    be the easy pair again.

    Why: :func:`preference_data`'s rejected side is a title the fine-tuned model hardly ever says (in chapter
    10's stored run it already prefers the right title in 94% of those pairs before any DPO step), so lowering
    it leaves every greedy answer as it was. DPO changes what the model *says* where the rejected side is what
    it says: the answer greedy decoding picks. So the DPO paper samples its pairs' answers from the SFT model
    itself (Rafailov et al. 2023, section 4), and Llama 2 collects each round's comparisons from the latest
    model's own answers (Touvron et al. 2023, section 3.2.1): pairs the model gets wrong are the ones that can
    change its answers. A few dozen of them are also a skewed sample of titles (its favourite wrong answers
    rejected, the plays it misses chosen), so a short run can move the prior over titles more than the reading
    of the passage: measure the answers, question by question, before and after.

    Deterministic: greedy replies of :func:`answers`, ``batch_size`` questions at a time in order (a batch
    holds one KV cache per question). The replies are compared after :func:`normalize`, as :func:`accuracy`
    scores them, so "Hamlet." is right and gives no pair; the rejected text is the reply as generated.
    """
    was_training = model.training
    model.eval()
    replies = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        replies += answers(model, tokenizer, template, [messages(task, q) for q in chunk])
    model.train(was_training)
    return [
        {"messages": messages(task, q), "chosen": q.title, "rejected": reply}
        for q, reply in zip(items, replies)
        if normalize(reply) != normalize(q.title)
    ]


def normalize(answer: str) -> str:
    """The answer as compared: its first line, curly apostrophes straightened, case and a final full stop ignored."""
    first = answer.strip().split("\n", 1)[0]
    return first.replace("\u2019", "'").strip().rstrip(".").strip().casefold()


@torch.no_grad()
def answer(
    model: Llama, tokenizer: Tokenizer, template: str, conversation: list[dict[str, str]], max_new_tokens: int = 16
) -> str:
    """The model's greedy reply to ``conversation``, up to its end-of-turn token."""
    config = GenerationConfig(max_new_tokens, stop_tokens=chat_stop_tokens(tokenizer))
    return tokenizer.decode(generate(model, chat_prompt(tokenizer, template, conversation), config))


@torch.no_grad()
def answers(
    model: Llama,
    tokenizer: Tokenizer,
    template: str,
    conversations: list[list[dict[str, str]]],
    max_new_tokens: int = 16,
) -> list[str]:
    """The model's greedy replies to several conversations, generated as one batch (:func:`generate_batch`: one
    prefill, then one forward pass per token for all rows, so the weights are read once per token, not once per
    conversation): :func:`answer`'s replies, up to float rounding (which can flip a near-tie between two tokens)."""
    config = GenerationConfig(max_new_tokens, stop_tokens=chat_stop_tokens(tokenizer))
    prompts = [chat_prompt(tokenizer, template, conversation) for conversation in conversations]
    return [tokenizer.decode(ids) for ids in generate_batch(model, prompts, config, pad_id=tokenizer.eos_id)]


def accuracy(
    model: Llama,
    tokenizer: Tokenizer,
    template: str,
    task: PlayTask,
    items: list[PlayQuestion],
    shots: list[PlayQuestion] = (),
) -> tuple[float, list[str]]:
    """Exact-match accuracy on ``items`` (greedy answers, :func:`normalize`d), and the answers."""
    was_training = model.training
    model.eval()
    replies = [answer(model, tokenizer, template, messages(task, item, shots)) for item in items]
    model.train(was_training)
    correct = sum(normalize(r) == normalize(item.title) for r, item in zip(replies, items))
    return correct / len(items), replies
