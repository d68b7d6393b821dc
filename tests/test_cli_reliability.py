"""The command line as a user meets it: resume, interruptions, used or unwritable folders, bad input.

Every expected failure is one ``error: ...`` line with exit status 1; Ctrl-C and SIGTERM stop training
after the current step with a checkpoint (exit status 130). The training runs use the real Shakespeare
recipe (its data prepared once for the module) with batches of one sequence, so each step is quick.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import random_llama
from llama_from_scratch import LlamaConfig, load_checkpoint, save_checkpoint, train_bpe
from llama_from_scratch.checkpoints import latest_checkpoint
from llama_from_scratch.training.recipes import RECIPES


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "llama_from_scratch", *args], capture_output=True, text=True, env=env, **kwargs
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("data")
    RECIPES["shakespeare"].prepare(directory)  # the tokenizer and both token files, once
    return directory


def train_args(out: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["train", "--out", str(out), "--data-dir", str(data_dir), "--batch-size", "1", *extra]


@pytest.mark.slow
def test_resume_continues_a_run_the_cli_wrote_with_the_recipe_config(tmp_path, data_dir):
    """The recipe's model (multiple_of=64, ...) resumes: the checkpoint keeps the complete config."""
    out = tmp_path / "run"
    first = run_cli(*train_args(out, data_dir, "--steps", "1"))
    assert first.returncode == 0, first.stderr
    second = run_cli(*train_args(out, data_dir, "--steps", "2", "--resume"))
    assert second.returncode == 0, second.stderr
    assert latest_checkpoint(out).name == "step-0000002"
    assert load_checkpoint(out, device="cpu").config.dim == RECIPES["shakespeare"].model.dim

    again = run_cli(*train_args(out, data_dir, "--steps", "1"))  # a second run into the same folder
    assert_one_line_error(again, "already holds a run (up to step-0000002)", "--resume", "--overwrite")
    assert latest_checkpoint(out).name == "step-0000002"  # nothing was deleted
    changed = run_cli(*train_args(out, data_dir, "--steps", "3", "--resume", "--lr", "1e-3"))
    assert_one_line_error(changed, "cannot resume with other settings", "lr: 0.0025 -> 0.001")
    fresh = run_cli(*train_args(out, data_dir, "--steps", "1", "--overwrite"))
    assert fresh.returncode == 0, fresh.stderr
    assert latest_checkpoint(out).name == "step-0000001"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.slow
def test_a_signal_stops_training_after_the_step_with_a_checkpoint(tmp_path, data_dir, sig):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # the progress bar says the loop runs
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_from_scratch", *train_args(out, data_dir, "--steps", "100000")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    shown = ""
    while "training:" not in shown:  # the bar appears once Ctrl-C stops after a step
        char = process.stderr.read(1)
        assert char, f"training ended before it began: {shown}"
        shown += char
    process.send_signal(sig)
    stderr = shown + process.communicate(timeout=120)[1]
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "\ninterrupted: stopped after step" in stderr, stderr
    step = int(stderr.split("stopped after step ")[1].split()[0])
    assert latest_checkpoint(out).name == f"step-{step:07d}"
    load_checkpoint(out, device="cpu")
    resumed = run_cli(*train_args(out, data_dir, "--steps", str(step + 1), "--resume"))
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.slow
def test_an_unusable_out_folder_is_found_before_training(tmp_path, data_dir):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    assert_one_line_error(run_cli(*train_args(a_file, data_dir, "--steps", "1")), "notes.txt", "names a file")

    source, read_only = tmp_path / "source", tmp_path / "read-only"
    source.mkdir()
    read_only.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", source, read_only], capture_output=True).returncode != 0:
        pytest.skip("this machine does not allow mounting a read-only folder (needs root)")
    try:
        started = time.perf_counter()
        result = run_cli(*train_args(read_only / "run", data_dir, "--steps", "1000"))
        assert_one_line_error(result, "Read-only file system")
        assert "parameters" not in result.stdout  # refused before the model was built
        assert time.perf_counter() - started < 60
    finally:
        subprocess.run(["umount", read_only], check=True)


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path):
    from llama_from_scratch.training import checkpoint as training_checkpoint
    from test_train import new_model, quick_config, synthetic_data

    from llama_from_scratch.training.checkpoint import RunFolder
    from llama_from_scratch.training.train import TextWindows, train

    disk = tmp_path / "small-disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", disk], capture_output=True).returncode != 0:
        pytest.skip("this machine does not allow mounting a small filesystem (needs root)")
    try:
        train(new_model(), TextWindows(synthetic_data()), quick_config(steps=2), RunFolder(disk / "run"))
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * (free - 4096))  # leave a few KB: too little for a checkpoint
        with pytest.raises(OSError, match=r"no space left on device while writing step-0000004; "
                                          r"the previous checkpoint \(step-0000002\) is kept"):
            train(new_model(), TextWindows(synthetic_data()), quick_config(steps=4), RunFolder(disk / "run", True))
        assert latest_checkpoint(disk / "run").name == "step-0000002"
        assert [p.name for p in (disk / "run").iterdir() if p.name.startswith(".")] == []  # nothing half-written
        (disk / "filler").unlink()
        load_checkpoint(disk / "run", device="cpu")
        assert training_checkpoint.checkpoints_of(disk / "run")[-1].name == "step-0000002"
    finally:
        subprocess.run(["umount", disk], check=True)


@pytest.mark.slow
def test_non_finite_learning_rate_is_one_line(tmp_path, data_dir):
    assert_one_line_error(run_cli(*train_args(tmp_path / "run", data_dir, "--lr", "inf")), "lr must be a finite number")


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory) -> Path:
    tokenizer = train_bpe("To be, or not to be, that is the question.\nROMEO:\nWhat light\n" * 50, vocab_size=300)
    config = LlamaConfig(dim=32, n_layers=1, n_heads=2, vocab_size=300, hidden_dim=64)
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    path = tmp_path_factory.mktemp("chat") / "model"
    save_checkpoint(random_llama(config), tokenizer, path, chat_template=template)
    return path


@pytest.mark.slow
def test_chat_with_bad_or_closed_input_is_one_line(chat_checkpoint):
    args = ("chat", "--checkpoint", str(chat_checkpoint), "--max-new-tokens", "4")
    env = {**os.environ, "TQDM_DISABLE": "1"}
    invalid = subprocess.run([sys.executable, "-m", "llama_from_scratch", *args], input=b"\xff\xfe hello\n",
                             capture_output=True, env=env)
    assert_one_line_error(
        subprocess.CompletedProcess(invalid.args, invalid.returncode, invalid.stdout.decode(), invalid.stderr.decode()),
        "standard input is not UTF-8 text",
    )
    closed = subprocess.run([sys.executable, "-m", "llama_from_scratch", *args], preexec_fn=lambda: os.close(0),
                            capture_output=True, text=True, env=env)
    assert_one_line_error(closed, "standard input, which is closed")


@pytest.mark.slow
def test_ctrl_c_ends_a_chat_without_a_traceback(chat_checkpoint):
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_from_scratch", "chat", "--checkpoint", str(chat_checkpoint),
         "--max-new-tokens", "4"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"},
        # A shell starts background jobs with SIGINT ignored, and Python keeps an inherited "ignore": give the
        # child the default disposition, as a terminal's foreground process has, so that Ctrl-C reaches it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    process.stdin.write("Who are you?\n")
    process.stdin.flush()
    assert process.stdout.read(1)  # the answer has begun: the conversation is running
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip() == "interrupted", stderr
