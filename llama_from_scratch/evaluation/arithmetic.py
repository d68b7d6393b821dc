"""Arithmetic word problems from a seeded generator, every answer verified: a GSM8k-shaped task, offline.

GSM8k (Cobbe et al. 2021) asks grade-school word problems whose answer is a number; the LLaMA paper
reports maj1@k on it. Here a problem is a short story of whole-number steps::

    Mara has 12 pears. Mara buys 7 more pears. Mara gives 5 pears to Tom.
    How many pears does Mara have now?

with a worked solution in GSM8k's style, which few-shot examples show and the model is asked to imitate::

    Mara starts with 12 pears. 12 + 7 = 19. 19 - 5 = 14. The answer is 14.

The generator computes the answer while it writes the story; :func:`solve` then reads the story back with
its own rules and computes the answer again, and a problem whose two answers differ is never produced: the
answer key is checked against the text, not just against the generator's intention. A generated answer is
scored by the number it ends with (:func:`extract_number`). Chapter 13 can use the same problems as a
verifiable reward.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .task import GenerationItem, Task, TaskCard

NAMES = ("Mara", "Tom", "Ada", "Ravi", "Lena", "Omar", "Ines", "Kofi", "Yuki", "Sam")
THINGS = ("apples", "pears", "stamps", "marbles", "books", "shells", "coins", "pencils")
_STEPS = {
    "buys": re.compile(r"buys (\d+) more (\w+)"),
    "gives": re.compile(r"gives (\d+) (\w+) to (\w+)"),
    "doubles": re.compile(r"doubles (?:her|his|their) (\w+)"),
}


@dataclass(frozen=True)
class Problem:
    question: str
    solution: str
    answer: int


def _problem(rng: np.random.Generator) -> Problem:
    name, friend = (NAMES[i] for i in rng.choice(len(NAMES), 2, replace=False))
    thing = THINGS[int(rng.integers(len(THINGS)))]
    count = int(rng.integers(2, 21))
    story, work = [f"{name} has {count} {thing}."], [f"{name} starts with {count} {thing}."]
    for _ in range(int(rng.integers(1, 4))):
        step = ("buys", "gives", "doubles")[int(rng.integers(3))]
        if step == "gives" and count < 2:
            step = "buys"
        if step == "buys":
            amount = int(rng.integers(2, 16))
            story.append(f"{name} buys {amount} more {thing}.")
            work.append(f"{count} + {amount} = {count + amount}.")
            count += amount
        elif step == "gives":
            amount = int(rng.integers(1, count))
            story.append(f"{name} gives {amount} {thing} to {friend}.")
            work.append(f"{count} - {amount} = {count - amount}.")
            count -= amount
        else:
            story.append(f"Then {name} doubles their {thing}.")
            work.append(f"{count} * 2 = {count * 2}.")
            count *= 2
    question = " ".join(story) + f" How many {thing} does {name} have now?"
    return Problem(question, " ".join(work) + f" The answer is {count}.", count)


def solve(question: str) -> int:
    """The answer, read back from the question's text alone: the start, then each step in order."""
    start = re.match(r"\w+ has (\d+) (\w+)\.", question)
    if start is None:
        raise ValueError(f"not a problem of this generator: {question[:60]!r}")
    count = int(start.group(1))
    for sentence in question.split(". ")[1:]:
        if match := _STEPS["buys"].search(sentence):
            count += int(match.group(1))
        elif match := _STEPS["gives"].search(sentence):
            count -= int(match.group(1))
        elif _STEPS["doubles"].search(sentence):
            count *= 2
    return count


def problems(n: int, seed: int) -> list[Problem]:
    """``n`` different problems from the generator seeded with ``seed``, each answer checked by :func:`solve`."""
    rng, found, seen = np.random.default_rng(seed), [], set()
    while len(found) < n:
        problem = _problem(rng)
        if problem.question in seen:
            continue
        if solve(problem.question) != problem.answer:
            raise AssertionError(f"the generator wrote a problem its answer does not fit: {problem}")
        seen.add(problem.question)
        found.append(problem)
    return found


_NUMBER = re.compile(r"-?\d[\d,]*")


def extract_number(text: str) -> str:
    """The answer in a generated solution: the number after "The answer is", else the last number ("" if none)."""
    stated = re.search(r"answer is\s*(-?\d[\d,]*)", text)
    numbers = [stated.group(1)] if stated else _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else ""


def _item(problem: Problem) -> GenerationItem:
    return GenerationItem(f"Question: {problem.question}\nAnswer:", " " + problem.solution, (str(problem.answer),))


def arithmetic(n: int = 200, pool: int = 50, seed: int = 0) -> Task:
    """``n`` problems to score and ``pool`` few-shot examples, from separate seeds (and never the same text)."""
    test = problems(n, seed=2 * seed)
    test_questions = {p.question for p in test}
    examples = [p for p in problems(pool + n, seed=2 * seed + 1) if p.question not in test_questions][:pool]
    card = TaskCard(
        "arithmetic", "generated here (seeded, answers verified)", n, f"seed {2 * seed}", None, "exact match"
    )
    return Task(
        card,
        "generation",
        [_item(p) for p in test],
        [_item(p) for p in examples],
        stop=("\n",),
        max_new_tokens=96,
        extract=extract_number,
    )
