"""``python -m llama_from_scratch eval``: a report card from one command, and bad input as one clear line."""

from __future__ import annotations

import json

import pytest
import torch
from test_evaluation import byte_tokenizer, tiny_model

from llama_from_scratch import save_checkpoint
from llama_from_scratch.cli import main

TASK = '{"context": "Q%d:", "choices": ["yes", "no"], "answer": %d}\n'


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tiny_model(torch.float32), byte_tokenizer(), tmp_path_factory.mktemp("eval") / "tiny")


def test_eval_writes_the_report_card(checkpoint, tmp_path, capsys):
    task = tmp_path / "yes_no.jsonl"
    task.write_text("".join(TASK % (i, i % 2) for i in range(6)))
    out = tmp_path / "card"
    assert main(["eval", "--checkpoint", str(checkpoint), "--tasks", str(task), "--limit", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| yes_no | 0 | accuracy (char) |" in printed and "report.md" in printed
    data = json.loads((out / "results.json").read_text())
    assert data["results"][0]["estimate"]["n"] == 4 and (out / "report.png").exists()
    assert main(["eval", "--checkpoint", str(checkpoint), "--tasks", str(task), "--no-bos", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["settings"]["no_bos"] == "True"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--tasks", "hellaswag"], "error: unknown task 'hellaswag'"),
        (["--tasks", "which-play", "--shots", "0,99"], "error: task which-play: 99 few-shot examples asked for"),
        (["--shots", "zero"], "error: --shots must be comma-separated integers"),
    ],
)
def test_bad_eval_input_is_one_line(checkpoint, arguments, message, capsys, tmp_path):
    assert main(["eval", "--checkpoint", str(checkpoint), "--out", str(tmp_path), *arguments]) == 1
    error = capsys.readouterr().err
    assert error.startswith(message) and error.count("\n") == 1


def test_a_checkpoint_that_is_not_a_model_is_one_line(tmp_path, capsys):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"hello": "world"}')
    assert main(["eval", "--checkpoint", str(folder), "--tasks", "arithmetic", "--out", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    errors = [line for line in error.splitlines() if "error" in line]  # (after the loading progress bar)
    assert len(errors) == 1 and errors[0].startswith("error: ") and error.endswith(errors[0] + "\n")
