"""The shipped tasks (held-out Shakespeare, arithmetic, HumanEval) and task files: what they hold, and bad input."""

from __future__ import annotations

import json

import pytest

from llama_from_scratch.errors import FormatError
from llama_from_scratch.evaluation.arithmetic import arithmetic, extract_number, problems, solve
from llama_from_scratch.evaluation.few_shot import prompts
from llama_from_scratch.evaluation.humaneval import read_problems
from llama_from_scratch.evaluation.registry import load_task
from llama_from_scratch.evaluation.shakespeare_tasks import next_line, scenes, which_play, who_speaks
from llama_from_scratch.training.corpus import VALIDATION_PLAYS, load_plays


@pytest.fixture(scope="module")
def tasks():
    return who_speaks(test_per_play=10, pool_per_play=3), next_line(test_per_play=10, pool_per_play=3)


def test_shakespeare_tasks_use_held_out_plays_and_separate_pools(tasks):
    for task in tasks:
        assert task.card.size == len(task.items) == 40 and len(task.pool) == 12
        assert task.card.chance == 0.25
        assert not set(task.items) & set(task.pool)
        for item in task.items:
            assert len(set(item.choices)) == 4 and 0 <= item.answer < 4
    plays = load_plays()
    held_out = "\n".join(plays[p] for p in VALIDATION_PLAYS)
    trained = "\n".join(text for name, text in plays.items() if name not in VALIDATION_PLAYS)
    item = tasks[1].items[0]
    right = item.choices[item.answer]
    assert item.context + right in held_out  # the context and the right line, as the play prints them
    assert right not in trained  # a line of a held-out play (this one appears in no trained play)


def test_who_speaks_names_the_speaker_of_the_speech(tasks):
    macbeth = load_plays()["macbeth"]
    speakers = {speech.speaker for scene in scenes(macbeth) for speech in scene}
    assert {"MACBETH", "LADY MACBETH", "BANQUO"} <= speakers
    item = tasks[0].items[0]
    speech = item.context.split("\n\n?:\n", 1)[1].split("\n\nQuestion:", 1)[0]
    speaker = item.choices[item.answer].strip()
    assert f"{speaker}:\n{speech}" in macbeth


def test_which_play_reuses_chapter_10s_split():
    task = which_play(test_per_play=2, pool_per_play=1)
    assert len(task.items) == 20 and len(task.pool) == 10 and task.card.chance == 0.1
    assert all(len(item.choices) == 10 for item in task.items)


def test_arithmetic_answers_are_verified_by_reading_the_text_back():
    found = problems(100, seed=3)
    assert len({p.question for p in found}) == 100
    for p in found:
        assert solve(p.question) == p.answer and p.solution.endswith(f"The answer is {p.answer}.")
        assert extract_number(p.solution) == str(p.answer)
    task = arithmetic(n=20, pool=5)
    assert not {i.context for i in task.items} & {i.context for i in task.pool}
    assert extract_number("so 3 + 4 = 7, and 1,200 more") == "1200" and extract_number("no idea") == ""
    assert prompts(task, task.items[:1], 2)[0].count("The answer is") == 2


def test_humaneval_has_164_problems_offline():
    problems_ = read_problems()
    assert len(problems_) == 164 and problems_[0].name == "HumanEval/0"
    assert all(p.entry_point in p.context for p in problems_)


def test_bad_task_input_is_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'hellaswag': expected one of who-speaks"):
        load_task("hellaswag")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"context": "Q", "choices": [" a", " b"], "answer": 2}\n')
    with pytest.raises(FormatError, match=r"broken.jsonl, line 1: expected at least 2 choices and 0 <= answer < 2"):
        load_task(str(broken))
    broken.write_text('{"context": "Q", "choices": [" a", 3], "answer": 0}\n')
    with pytest.raises(FormatError, match=r"line 1: choices\[1\] must be a string"):
        load_task(str(broken))
    broken.write_text("{not json\n")
    with pytest.raises(FormatError, match="line 1: not valid JSON"):
        load_task(str(broken))
    with pytest.raises(ValueError, match="humaneval has no few-shot pool"):
        prompts(load_task("humaneval"), [], 3)
    gz = tmp_path / "HumanEval.jsonl.gz"
    gz.write_bytes(b"\x1f\x8b" + b"garbage")
    with pytest.raises(FormatError, match="not gzip-compressed"):
        read_problems(gz)
    good = tmp_path / "ok.jsonl"
    good.write_text(json.dumps({"context": "Q", "choices": [" a", " b"], "answer": 1}) + "\n")
    assert load_task(str(good)).card.chance == 0.5
