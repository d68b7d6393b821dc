"""run_task for each kind of task, and the report card's files."""

from __future__ import annotations

import json

import pytest
import torch
from test_evaluation import byte_tokenizer, tiny_model

from llama_from_scratch.evaluation import answer_choices, generate_until, generate_until_batch, majority_vote
from llama_from_scratch.evaluation.multiple_choice import MultipleChoiceItem
from llama_from_scratch.evaluation.report import compare_results, run_task, write_report
from llama_from_scratch.evaluation.sandbox import Limits
from llama_from_scratch.evaluation.task import CodeProblem, GenerationItem, Task, TaskCard, limited

MC = [MultipleChoiceItem(f"Item {i}:", (" yes", " no", " maybe"), i % 3) for i in range(6)]


def card(name: str, chance=None) -> TaskCard:
    return TaskCard(name, "made here", 6, "test", chance, "m")


def test_multiple_choice_task_scores_as_answer_choices():
    model, tokenizer = tiny_model(torch.float32), byte_tokenizer()
    task = Task(card("mc", 1 / 3), "multiple_choice", MC, MC, normalization="token")
    result = run_task(model, tokenizer, task, shots=2, batch_size=4)
    from llama_from_scratch.evaluation.few_shot import prompts

    expected = answer_choices(model, tokenizer, MC, prompts(task, MC, 2), "token")
    assert result.scores == tuple(float(r.correct) for r in expected)
    assert result.answers == tuple(r.predicted for r in expected)
    assert result.estimate.mean == sum(result.scores) / 6 and result.metric == "accuracy (token)"


def test_generation_task_is_exact_match_of_the_extracted_answer():
    model, tokenizer = tiny_model(torch.float32), byte_tokenizer()
    prompt = tokenizer.encode("Q:", bos=True)
    said = generate_until(model, tokenizer, prompt, max_new_tokens=4)  # what the greedy model answers
    items = [GenerationItem("Q:", "", (said,)), GenerationItem("Q:", "", (said + "x",))]
    task = Task(card("gen"), "generation", items, stop=(), max_new_tokens=4, extract=lambda text: text)
    result = run_task(model, tokenizer, task)
    assert result.scores == (1.0, 0.0) and result.answers == (said, said)
    with pytest.raises(ValueError, match="needs a temperature > 0"):
        run_task(model, tokenizer, task, samples=3)


def test_maj_at_k_votes_over_the_samples():
    model, tokenizer = tiny_model(torch.float32), byte_tokenizer()
    items = [GenerationItem(f"Q{i}:", "", ("?",)) for i in range(2)]
    task = Task(card("gen"), "generation", items, stop=(), max_new_tokens=2, extract=lambda text: text[:1])
    result = run_task(model, tokenizer, task, samples=5, temperature=2.0, seed=1)
    assert result.metric == "maj@5"
    for index, item in enumerate(items):  # each item's samples: one batch, seeded (seed * items + index) * samples
        prompt = tokenizer.encode(item.context, bos=True)
        texts = generate_until_batch(model, tokenizer, [prompt] * 5, (), 2, temperature=2.0, seed=(2 + index) * 5)
        assert result.answers[index] == majority_vote([t[:1] for t in texts])


@pytest.mark.slow
def test_code_task_runs_the_tests_in_the_sandbox():
    model, tokenizer = tiny_model(torch.float32), byte_tokenizer()
    good = CodeProblem("good", "def f():\n    return 1\n", "", "def check(f):\n    assert f() == 1\n", "f")
    bad = CodeProblem("bad", "def f():\n    return 2\n", "", "def check(f):\n    assert f() == 1\n", "f")
    task = Task(card("code"), "code", [good, bad], max_new_tokens=0)  # no completion: the context is the code
    result = run_task(model, tokenizer, task, limits=Limits(wall_seconds=5))
    assert result.scores == (1.0, 0.0) and result.metric == "pass@1" and result.passed == (1, 0)
    assert result.pass_at(1).mean == 0.5


def test_two_models_are_compared_item_by_item():
    tokenizer = byte_tokenizer()
    task = Task(card("mc", 1 / 3), "multiple_choice", MC)
    a = run_task(tiny_model(torch.float32, seed=0), tokenizer, task)
    b = run_task(tiny_model(torch.float32, seed=1), tokenizer, task)
    paired = compare_results(a, b)
    assert paired.a_only == sum(x == 1 and y == 0 for x, y in zip(a.scores, b.scores))
    assert paired.difference.mean == pytest.approx(a.estimate.mean - b.estimate.mean)
    with pytest.raises(ValueError, match="needs the same items"):
        compare_results(a, run_task(tiny_model(torch.float32), tokenizer, task, limit=3))


def test_limit_spreads_the_items_evenly():
    assert limited(10, 3) == [0, 4, 9] and limited(3, None) == [0, 1, 2]
    with pytest.raises(ValueError, match="limit must be None or an int >= 1"):
        limited(3, 0)


def test_report_card_files(tmp_path):
    model, tokenizer = tiny_model(torch.float32), byte_tokenizer()
    task = Task(card("mc", 1 / 3), "multiple_choice", MC)
    results = [run_task(model, tokenizer, task), run_task(model, tokenizer, task, limit=3)]
    out = write_report(results, tmp_path / "card", "tiny", {"checkpoint": "random"})
    data = json.loads((out / "results.json").read_text())
    assert [r["estimate"]["n"] for r in data["results"]] == [6, 3] and data["settings"] == {"checkpoint": "random"}
    report = (out / "report.md").read_text()
    assert report.startswith("# tiny") and "| mc | 0 | accuracy (char) |" in report and "| made here |" in report
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
