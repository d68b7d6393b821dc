"""Few-shot prompts: ``k`` solved examples in front of the question ("in-context learning", Brown et al. 2020).

The examples come from the task's *pool*, a split separate from the items scored, and never include the
item itself. Each item gets its own draw from a generator seeded with ``(seed, item index)``, so a run is
reproducible, and a different ``seed`` gives a different set of prompts (the spread over seeds shows how much a
few-shot score depends on the examples picked).

The format is one rule for every task: an example is its context followed by its solved answer
(:func:`~.task.target`), examples are separated by a blank line, and the item's context comes last.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .task import Item, Task, target

SEPARATOR = "\n\n"


def draw_examples(pool: Sequence[Item], k: int, seed: int, index: int, item: Item | None = None) -> list[Item]:
    """``k`` different examples from ``pool`` for the item at ``index``, never ``item`` itself."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"the number of few-shot examples must be an int >= 0, got {k!r}")
    candidates = [example for example in pool if example != item]
    if k > len(candidates):
        raise ValueError(
            f"{k} few-shot examples asked for, but the pool holds {len(candidates)} (other than the item itself)"
        )
    rng = np.random.default_rng([seed, index])
    return [candidates[i] for i in rng.choice(len(candidates), size=k, replace=False)]


def few_shot_prompt(item: Item, examples: Sequence[Item]) -> str:
    """The item's context after its solved ``examples``."""
    return "".join(example.context + target(example) + SEPARATOR for example in examples) + item.context


def prompts(
    task: Task, items: Sequence[Item], k: int, seed: int = 0, indices: Sequence[int] | None = None
) -> list[str]:
    """The prompt of each item with ``k`` examples from the task's pool (``k = 0``: the contexts alone).
    ``indices``: the items' places in the task (by default 0, 1, ...), so that an item gets the same examples
    whichever other items are scored with it."""
    if k > 0 and not task.pool:
        raise ValueError(f"task {task.card.name} has no few-shot pool: it is zero-shot only (use --shots 0)")
    if k > len(task.pool):
        raise ValueError(f"task {task.card.name}: {k} few-shot examples asked for, its pool holds {len(task.pool)}")
    indices = range(len(items)) if indices is None else indices
    return [few_shot_prompt(item, draw_examples(task.pool, k, seed, i, item)) for i, item in zip(indices, items)]
