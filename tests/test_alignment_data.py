"""Chapter 13's data with a known truth: arithmetic pairs, the secret-keeping task, and bad preference records."""

import json

import numpy as np
import pytest

from llama_from_scratch import FormatError
from llama_from_scratch.alignment.arithmetic_task import (
    arithmetic_conversations,
    arithmetic_preferences,
    arithmetic_split,
    is_correct,
    wrong_solution,
)
from llama_from_scratch.alignment.secret_task import (
    HELD_OUT_ATTEMPTS,
    TRAIN_ATTEMPTS,
    declines,
    leaks,
    secret_items,
    secret_preferences,
    true_scores,
)
from llama_from_scratch.evaluation.arithmetic import arithmetic
from llama_from_scratch.finetuning.data import check_pair, read_jsonl
from llama_from_scratch.finetuning.sft import check_messages


def test_arithmetic_split_holds_out_chapter_12s_test_questions():
    train, test = arithmetic_split(40, 20, seed=3)
    chapter12 = arithmetic(n=20, pool=5, seed=3)
    assert [p.question for p in test] == [item.context.removeprefix("Question: ").removesuffix("\nAnswer:") for item in chapter12.items]
    assert len(train) == 40 and not {p.question for p in train} & {p.question for p in test}
    assert arithmetic_split(40, 20, seed=3) == (train, test)  # fixed before any run


def test_arithmetic_pairs_are_right_against_wrong():
    train, _ = arithmetic_split(30, 5)
    for conversation, problem in zip(arithmetic_conversations(train), train):  # the SFT start: right answers
        assert check_messages(conversation) and is_correct(conversation[-1]["content"], problem)
    for record, problem in zip(arithmetic_preferences(train), train):
        assert is_correct(record["chosen"], problem) and not is_correct(record["rejected"], problem)
        check_pair(record, "pair")
    # the slip is in the last step only: everything before it is the correct solution
    problem = train[0]
    wrong = wrong_solution(problem, np.random.default_rng(0))
    assert wrong.rsplit("=", 2)[0] == problem.solution.rsplit("=", 2)[0]


def test_secret_task_rules_and_split():
    train, held_out = secret_items(12, 8, seed=1), secret_items(6, 4, held_out=True, seed=1)
    assert sum(i.is_attempt for i in train) == 12 and sum(not i.is_attempt for i in held_out) == 4
    assert {i.question for i in train if i.is_attempt} <= set(TRAIN_ATTEMPTS)
    assert {i.question for i in held_out if i.is_attempt} <= set(HELD_OUT_ATTEMPTS)
    assert not set(TRAIN_ATTEMPTS) & set(HELD_OUT_ATTEMPTS)
    assert leaks("it is 4 8 2-1 3", "48213") and leaks("31284", "48213") and not leaks("4821", "48213")
    assert declines("Sorry, I can't do that.", "48213") and not declines("Sorry, it is 48213.", "48213")
    for item, record in zip(train, secret_preferences(train)):
        assert item.messages()[0]["content"].count(item.passkey) == 1 and record["safety"] == item.is_attempt
        chosen, rejected = true_scores(item, record["chosen"]), true_scores(item, record["rejected"])
        assert chosen == (1.0, 1.0)
        # an attempt's rejected answer leaks (unsafe); a question's rejected answer refuses (unhelpful)
        assert rejected == ((0.0, 0.0) if item.is_attempt else (0.0, 1.0))


@pytest.mark.parametrize(
    "record, message",
    [
        ({"messages": [], "chosen": "a"}, "pair 7: missing rejected"),
        ({"messages": [], "chosen": "same", "rejected": "same"}, "pair 7: chosen and rejected are the same text"),
    ],
)
def test_bad_preference_records_fail_in_one_line(record, message, tmp_path):
    with pytest.raises(FormatError, match=message) as error:
        check_pair(record, "pair 7")
    assert "\n" not in str(error.value)
    path = tmp_path / "prefs.jsonl"
    good = {"messages": [{"role": "user", "content": "q"}], "chosen": "x", "rejected": "y"}
    path.write_text(json.dumps(good) + "\n"
                    + json.dumps({**record, "messages": [{"role": "user", "content": "q"}]}) + "\n")
    with pytest.raises(FormatError, match=f"{path.name}:2: " + message.removeprefix("pair 7: ")):
        read_jsonl(path, "dpo")
