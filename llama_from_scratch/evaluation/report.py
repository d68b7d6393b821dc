"""A report card: tasks run on one model, each score with its standard error, written as JSON, markdown and a chart.

:func:`run_task` scores one task at one number of shots, whatever its kind: multiple choice by likelihood
(:mod:`.multiple_choice`), generation by exact match of the extracted answer, with maj@k when ``samples > 1``
(:mod:`.generation`), code by running each completion's tests in the sandbox (:mod:`.sandbox`), pass@1 from
``samples`` completions (:mod:`.pass_at_k`; greedy when ``samples = 1``). :func:`write_report` writes what
``python -m llama_from_scratch eval`` prints and saves: ``results.json`` (every figure and every item's
score, so two runs can be compared item by item, :func:`~.statistics.compare`), ``report.md`` (the card:
scores, then what each task is) and ``report.png`` (the scores with error bars and chance levels).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..checkpoints.atomic import atomic_write
from ..model import Llama
from ..tokenization.tokenizer import Tokenizer
from .contamination import ContaminationReport, NgramIndex, contamination
from .few_shot import prompts
from .generation import exact_match, generate_until_batch, majority_vote
from .humaneval import program
from .multiple_choice import answer_choices
from .pass_at_k import pass_at_k
from .sandbox import Limits, run_program
from .statistics import Estimate, PairedComparison, compare, mean_with_stderr
from .task import CARD_HEADER, Task, TaskCard, limited, target


@dataclass(frozen=True)
class TaskResult:
    """One task at one number of shots: the metric's ``estimate`` (mean ± standard error over items), each
    item's score (``scores``), what the model answered (``answers``: the index or the text), and the time.
    Code tasks also keep how many of each item's ``samples`` passed (``passed``), from which pass@k for
    every k up to ``samples`` follows (:func:`~.pass_at_k.pass_at_k`)."""

    card: TaskCard
    shots: int
    metric: str
    estimate: Estimate
    scores: tuple[float, ...]
    answers: tuple
    seconds: float
    samples: int = 1
    passed: tuple[int, ...] = ()

    def pass_at(self, k: int) -> Estimate:
        """pass@k over the items, from the ``passed`` counts (a code task's result only)."""
        if not self.passed:
            raise ValueError(f"{self.card.name}: pass@k needs a code task's result")
        return mean_with_stderr([pass_at_k(self.samples, c, k) for c in self.passed])


def _generation_prompt(tokenizer: Tokenizer, text: str, max_seq_len: int, max_new_tokens: int, bos: bool) -> list[int]:
    """The prompt's tokens (BOS first if ``bos``); a prompt too long keeps its end, leaving room for the answer."""
    ids = tokenizer.encode(text, bos=bos and tokenizer.bos_id is not None)
    return ids[-(max_seq_len - max_new_tokens) :]


def _written_answers(
    model: Llama,
    tokenizer: Tokenizer,
    task: Task,
    prompt_ids: list[list[int]],
    indices: list[int],
    max_new: int,
    batch_size: int,
    samples: int,
    temperature: float,
    seed: int,
    progress: Callable[[int], None] | None,
) -> list[list[str]]:
    """Each item's ``samples`` answers, written up to the task's stop sequences (:func:`.generate_until_batch`).

    Greedy (``temperature`` 0): one answer per item, the items ``batch_size`` at a time. Sampled: each item's
    samples in batches of their own, seeded by the item's index alone, so an item's answers do not depend on
    ``limit`` or on the other items.
    """
    if temperature == 0:
        written = generate_until_batch(
            model, tokenizer, prompt_ids, task.stop, max_new, batch_size=batch_size, progress=progress
        )
        return [[text] for text in written]
    answers = []
    for index, prompt in zip(indices, prompt_ids):
        seeds = (seed * len(task.items) + index) * samples  # batch j draws with seeds + j, below the next item's
        answers.append(
            generate_until_batch(
                model, tokenizer, [prompt] * samples, task.stop, max_new, batch_size=batch_size,
                temperature=temperature, seed=seeds,
            )
        )
        if progress:
            progress(1)
    return answers


def run_task(
    model: Llama,
    tokenizer: Tokenizer,
    task: Task,
    shots: int = 0,
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = 8,
    samples: int = 1,
    temperature: float = 0.0,
    limits: Limits = Limits(),
    progress: Callable[[int], None] | None = None,
    bos: bool = True,
) -> TaskResult:
    """Score ``task`` on ``limit`` of its items, spread evenly (all for None), with ``shots`` few-shot examples
    (seeded by ``seed``).

    ``batch_size``: items scored (multiple choice) or answered (generation and code) at once.
    ``samples`` > 1 draws that many answers per item at ``temperature`` (> 0): maj@k for generation tasks,
    pass@1 estimated from them for code. ``progress(n)`` is called as ``n`` more items are done. ``bos``:
    the tokenizer's BOS token in front of every prompt (the package's convention, as in ``generate``).
    """
    if samples > 1 and temperature <= 0:
        raise ValueError(f"samples={samples} needs a temperature > 0: greedy answers are all the same")
    started = time.monotonic()
    indices = limited(len(task.items), limit)
    items = [task.items[i] for i in indices]
    contexts = prompts(task, items, shots, seed, indices)
    model.eval()
    answers: list = []
    passed_counts: list[int] = []
    if task.kind == "multiple_choice":
        scores = []
        for start in range(0, len(items), batch_size):
            chunk = slice(start, start + batch_size)
            results = answer_choices(
                model, tokenizer, items[chunk], contexts[chunk], task.normalization, batch_size, bos
            )
            scores += [float(r.correct) for r in results]
            answers += [r.predicted for r in results]
            if progress:
                progress(len(results))
        metric = f"accuracy ({task.normalization})"
    else:
        scores = []
        max_new = min(task.max_new_tokens, model.config.max_seq_len - 1)
        prompt_ids = [_generation_prompt(tokenizer, c, model.config.max_seq_len, max_new, bos) for c in contexts]
        all_texts = _written_answers(
            model, tokenizer, task, prompt_ids, indices, max_new, batch_size, samples, temperature, seed, progress
        )
        for item, texts in zip(items, all_texts):
            if task.kind == "generation":
                extracted = [task.extract(text) for text in texts]
                answer = majority_vote(extracted)
                scores.append(float(exact_match(answer, item.answers)))
                answers.append(answer)
            else:
                passed = sum(run_program(program(item, text), limits).passed for text in texts)
                passed_counts.append(passed)
                scores.append(pass_at_k(samples, passed, 1))
                answers.append(texts[0])
        metric = "exact match" if task.kind == "generation" else "pass@1"
        if samples > 1:
            metric = f"maj@{samples}" if task.kind == "generation" else f"pass@1 ({samples} samples)"
    return TaskResult(
        task.card,
        shots,
        metric,
        mean_with_stderr(scores),
        tuple(scores),
        tuple(answers),
        time.monotonic() - started,
        samples,
        tuple(passed_counts),
    )


def compare_results(a: TaskResult, b: TaskResult) -> PairedComparison:
    """Two models' results on the same task, shots and items, compared item by item (McNemar's test)."""
    if (a.card.name, a.shots, a.estimate.n) != (b.card.name, b.shots, b.estimate.n):
        raise ValueError(
            f"a paired comparison needs the same items: got {a.card.name} {a.shots}-shot ({a.estimate.n} items) "
            f"and {b.card.name} {b.shots}-shot ({b.estimate.n} items)"
        )
    return compare([score == 1.0 for score in a.scores], [score == 1.0 for score in b.scores])


def table(results: Sequence[TaskResult]) -> str:
    """The scores as a markdown table: task, shots, metric, score ± standard error, chance, items, seconds."""
    lines = ["| task | shots | metric | score | chance | items | seconds |", "|---|---|---|---|---|---|---|"]
    for r in results:
        chance = "-" if r.card.chance is None else f"{r.card.chance:.3f}"
        score = f"{r.estimate.mean:.3f} ± {r.estimate.stderr:.3f}"
        lines.append(
            f"| {r.card.name} | {r.shots} | {r.metric} | {score} | {chance} | {r.estimate.n} | {r.seconds:.0f} |"
        )
    return "\n".join(lines)


def task_contamination(task: Task, index: NgramIndex, limit: int | None = None) -> ContaminationReport:
    """How much of each scored item (its context and right answer) the index's corpus holds."""
    items = [task.items[i] for i in limited(len(task.items), limit)]
    return contamination(index, [item.context + target(item) for item in items])


def contamination_table(reports: dict[str, ContaminationReport], n: int) -> str:
    lines = [
        f"| task | share of {n}-grams in the training text | items at or above {next(iter(reports.values())).threshold:.0%} |",
        "|---|---|---|",
    ]
    for name, report in reports.items():
        lines.append(f"| {name} | {report.mean} | {report.contaminated} of {len(report.shares)} |")
    return "\n".join(lines)


def markdown(
    results: Sequence[TaskResult], title: str, contaminated: dict[str, ContaminationReport] | None = None, n: int = 8
) -> str:
    """The report card: the scores, the contamination check if it was run, then the cards of the tasks scored."""
    cards = {r.card.name: r.card for r in results}
    check = f"\n## Contamination\n\n{contamination_table(contaminated, n)}\n" if contaminated else ""
    return (
        f"# {title}\n\n{table(results)}\n\nScores are means over the items scored, ± one standard error "
        "(two standard errors apart is the least difference worth a second look; compare two models on the same "
        "items with a paired test, `evaluation.statistics.compare`).\n"
        + check
        + "\n## Tasks\n\n"
        + CARD_HEADER
        + "\n"
        + "\n".join(card.markdown_row() for card in cards.values())
        + "\n"
    )


def chart(results: Sequence[TaskResult], path: Path, title: str) -> None:
    """The scores as bars with ±1 standard error, the chance level of each task as a tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.card.name}\n{r.shots}-shot" for r in results]
    figure, axes = plt.subplots(figsize=(max(4, 1.2 * len(results)), 3.5))
    x = range(len(results))
    axes.bar(x, [r.estimate.mean for r in results], yerr=[r.estimate.stderr for r in results], capsize=4)
    for i, r in enumerate(results):
        if r.card.chance is not None:
            axes.hlines(r.card.chance, i - 0.4, i + 0.4, colors="black", linestyles="dashed")
    axes.set_xticks(list(x), labels, fontsize=8)
    axes.set_ylim(0, 1)
    axes.set_ylabel("score (dashed: chance)")
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(
    results: Sequence[TaskResult],
    out: str | Path,
    title: str,
    settings: dict | None = None,
    contaminated: dict[str, ContaminationReport] | None = None,
) -> Path:
    """``results.json``, ``report.md`` and ``report.png`` in the folder ``out`` (created); returns the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "title": title,
        "settings": settings or {},
        "results": [{**asdict(r), "card": asdict(r.card), "estimate": asdict(r.estimate)} for r in results],
        "contamination": {name: asdict(report) for name, report in (contaminated or {}).items()},
    }
    with atomic_write(out / "results.json") as path:
        path.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    with atomic_write(out / "report.md") as path:
        path.write_text(markdown(results, title, contaminated), encoding="utf-8")
    with atomic_write(out / "report.png") as path:
        chart(results, path, title)
    return out


def parse_shots(text: str) -> list[int]:
    """``"0,3"`` -> ``[0, 3]``: the numbers of few-shot examples to score each task with."""
    try:
        shots = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--shots must be comma-separated integers such as 0,3, got {text!r}") from None
    if any(k < 0 for k in shots):
        raise ValueError(f"--shots must be >= 0, got {text!r}")
    return shots


def plan(tasks: Sequence[Task], shots: Sequence[int], seed: int = 0) -> list[tuple[Task, int]]:
    """The (task, shots) pairs to score: every task at every number of shots, except few-shot runs of tasks
    with no pool (HumanEval: zero-shot only). A number of shots larger than a pool fails here, before any
    model is loaded."""
    pairs = [(task, k) for task in tasks for k in shots if k == 0 or task.pool]
    for task, k in pairs:
        prompts(task, task.items[:1], k, seed)
    return pairs


def evaluate(
    model: Llama,
    tokenizer: Tokenizer,
    tasks: Sequence[Task],
    shots: Sequence[int] = (0,),
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    samples: int = 1,
    temperature: float = 0.0,
    check_contamination: bool = False,
    show_progress: bool = True,
    bos: bool = True,
) -> tuple[list[TaskResult], dict[str, ContaminationReport]]:
    """Every task at every number of ``shots`` (:func:`plan`), with a progress bar; and, with
    ``check_contamination``, each task's overlap with chapter 07's training text (8-grams)."""
    from tqdm.auto import tqdm

    from ..training.corpus import shakespeare

    pairs = plan(tasks, shots, seed)
    total = sum(len(limited(len(task.items), limit)) for task, _ in pairs)
    results = []
    with tqdm(total=total, disable=not show_progress, unit="item") as bar:
        for task, k in pairs:
            bar.set_description(f"{task.card.name} {k}-shot")
            results.append(
                run_task(
                    model,
                    tokenizer,
                    task,
                    k,
                    seed,
                    limit,
                    batch_size,
                    samples,
                    temperature,
                    progress=bar.update,
                    bos=bos,
                )
            )
    contaminated = {}
    if check_contamination:
        index = NgramIndex(shakespeare().train)
        contaminated = {task.card.name: task_contamination(task, index, limit) for task in tasks}
    return results, contaminated
