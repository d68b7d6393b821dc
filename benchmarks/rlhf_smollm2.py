"""Chapter 13 at SmolLM2 scale on the arithmetic word problems, whose truth is known (issue 23's targets).

Four parts, each a section (``--sections``), run in this order on the same fixed held-out split (chapter 12's
test questions, :func:`~llama_from_scratch.alignment.arithmetic_task.arithmetic_split`):

* ``sft``: the starting point. The worked solutions of the training questions written as chat conversations
  (``RUNS/sft_train.jsonl``) and one ``finetune --method lora --objective sft`` command on them: the SFT model.
  SmolLM2-135M-Instruct asked cold states the right number in about 2% of samples, so RL alone would have
  almost no right answer to learn from; the SFT model has some.
* ``rl``: one ``rl --algorithm grpo --task arithmetic --adapter RUNS/sft`` command, its wall time measured.
  It prints the held-out accuracy (greedy answers, chapter 12's answer rule) of the starting point as step 0
  and after every ``--eval-every`` steps, with the KL to the reference (the SFT model).
* ``best-of-n``: Llama 2's Figure 7 on the SFT model: ``N`` answers to each held-out question sampled at
  temperature 1, the mean over questions of the best and the median true score among the first ``k``.
* ``rejection``: rejection-sampling fine-tuning. ``N`` samples for each training question, the best (a right
  one where any is) kept as a supervised example, one LoRA SFT run on them from the SFT model, and the held-out
  accuracy before and after, paired (McNemar's test on the questions that changed).

Every figure goes into the JSON file of ``--save`` with its command; the CLI parts' logs are kept beside it.
The runs take minutes each on 2 cores; the figures are only meaningful on an otherwise idle machine.

    python benchmarks/rlhf_smollm2.py --save benchmarks/results/rlhf13/smollm2_arithmetic.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

from llama_from_scratch.alignment.arithmetic_task import arithmetic_conversations, arithmetic_split
from llama_from_scratch.alignment.best_of_n import best_of_n, rejection_sampling_examples
from llama_from_scratch.alignment.builtin import rl_task
from llama_from_scratch.alignment.policy import sample_answers, turn_stop_tokens
from llama_from_scratch.checkpoints import smollm2_path
from llama_from_scratch.checkpoints.load import load_pretrained
from llama_from_scratch.evaluation.statistics import compare, mean_with_stderr
from llama_from_scratch.finetuning import FinetuneConfig, finetune
from llama_from_scratch.finetuning.finetune import apply_adapters
from llama_from_scratch.finetuning.sft import padding_id

SECTIONS = ("sft", "rl", "best-of-n", "rejection")
VALIDATION_LINE = re.compile(r"^step (\d+): (.*)$")


def run_cli(arguments: list[str], log: Path) -> tuple[list[dict], float]:
    """Run ``python -m llama_from_scratch ARGUMENTS``, its output into ``log``; return its validation lines
    (``step N: val name value, ...``) as records and its wall time in seconds."""
    command = [sys.executable, "-m", "llama_from_scratch", *arguments]
    print("$", " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        finished = subprocess.run(command, check=False, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TQDM_DISABLE": "1"})
    seconds = time.perf_counter() - start
    if finished.returncode != 0:
        raise SystemExit(f"{command[3]} failed (exit {finished.returncode}); its output is in {log}")
    records = []
    for line in log.read_text().splitlines():
        if match := VALIDATION_LINE.match(line.strip()):
            figures = dict(pair.split(" ")[1:] for pair in match.group(2).split(", "))
            records.append({"step": int(match.group(1)), **{k: float(v) for k, v in figures.items()}})
    print(*[f"  {r}" for r in records], f"  {seconds:.0f} s", sep="\n", flush=True)
    return records, seconds


def greedy_correct(model, prompts, reward, stop_tokens, pad_id, max_new_tokens, batch_size=16) -> list[bool]:
    """Per held-out question: does the model's greedy answer earn the task's true reward (the right number)?"""
    correct = []
    for start in range(0, len(prompts), batch_size):
        answers = sample_answers(
            model, prompts[start : start + batch_size], 1, max_new_tokens, 0.0, stop_tokens, pad_id=pad_id
        )
        correct += [r > 0 for r in reward(list(range(start, start + len(answers))), answers)]
    return correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--runs", type=Path, default=Path("runs/rlhf13"), help="where the runs' folders go")
    parser.add_argument("--sft-steps", type=int, default=12)
    parser.add_argument("--sft-questions", type=int, default=2000)
    parser.add_argument("--rl-steps", type=int, default=32)
    parser.add_argument("--rl-lr", type=float, default=3e-4)
    parser.add_argument("--rl-eval-every", type=int, default=16, help="rl: held-out validation every this many steps")
    parser.add_argument("--test-questions", type=int, default=200, help="held-out questions (chapter 12's test set)")
    parser.add_argument("--n", type=int, default=16, help="best-of-n: samples per held-out question")
    parser.add_argument("--n-questions", type=int, default=32, help="best-of-n: held-out questions sampled")
    parser.add_argument("--rejection-questions", type=int, default=64)
    parser.add_argument("--rejection-n", type=int, default=8)
    parser.add_argument("--rejection-steps", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--save", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    base = str(smollm2_path())
    sft = args.runs / "sft"
    results: dict = {
        "command": "python benchmarks/rlhf_smollm2.py " + " ".join(sys.argv[1:]),
        "date": str(date.today()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if args.save is not None and args.save.exists() and set(args.sections) != set(SECTIONS):
        stored = json.loads(args.save.read_text())  # sections not run this time are kept, and the first command
        reruns = [*stored.get("reruns", []), results["command"]]
        results = {**stored, **results, "command": stored["command"], "reruns": reruns}

    if "sft" in args.sections:
        train, _ = arithmetic_split(args.sft_questions, args.test_questions)
        data = args.runs / "sft_train.jsonl"
        data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in arithmetic_conversations(train)))
        records, seconds = run_cli(
            ["finetune", "--base", base, "--method", "lora", "--objective", "sft", "--data", str(data),
             "--out", str(sft), "--steps", str(args.sft_steps), "--batch-size", "8", "--rank", "8", "--lr", "0.001",
             "--eval-every", "20", "--checkpoint-every", str(args.sft_steps), "--seq-len", "192", "--overwrite"],
            args.runs / "sft.log",
        )
        results["sft"] = {"questions": len(train), "validation": records, "seconds": round(seconds)}

    if "rl" in args.sections:
        records, seconds = run_cli(
            ["rl", "--algorithm", "grpo", "--task", "arithmetic", "--base", base, "--adapter", str(sft),
             "--out", str(args.runs / "grpo"), "--steps", str(args.rl_steps), "--batch-size", "4",
             "--group-size", "8", "--max-new-tokens", str(args.max_new_tokens), "--lr", str(args.rl_lr),
             "--eval-every", str(args.rl_eval_every), "--checkpoint-every", str(args.rl_steps), "--seq-len", "256",
             "--test-questions", str(args.test_questions), "--overwrite"],
            args.runs / "grpo.log",
        )
        n = args.test_questions
        start, end = records[0], records[-1]
        results["rl"] = {
            "validation": records,
            "seconds": round(seconds),
            "start_accuracy": start["reward"],
            "end_accuracy": end["reward"],
            "points_gained": round(100 * (end["reward"] - start["reward"]), 1),
            "stderr_points": [round(100 * (p * (1 - p) / (n - 1)) ** 0.5, 1) for p in (start["reward"], end["reward"])],
            "end_kl": end["kl"],
        }
        print(f"rl: {start['reward']:.1%} -> {end['reward']:.1%} in {seconds:.0f} s", flush=True)

    if {"best-of-n", "rejection"} & set(args.sections):
        pretrained = load_pretrained(base)
        apply_adapters(pretrained, [sft])
        model, tokenizer = pretrained.model, pretrained.tokenizer
        template, pad_id = pretrained.chat_template, padding_id(tokenizer)
        stops = turn_stop_tokens(tokenizer, template)
        task = rl_task("arithmetic", tokenizer, template, args.rejection_questions, args.test_questions)

    if "best-of-n" in args.sections:
        start = time.perf_counter()
        samples = best_of_n(
            model, task.validation[: args.n_questions], args.n, task.validation_reward, args.max_new_tokens,
            1.0, stops, seed=0, pad_id=pad_id,
        )
        ks = [k for k in (1, 2, 4, 8, 16, 32) if k <= args.n]
        curve = samples.curve(ks)
        results["best_of_n"] = {
            "questions": args.n_questions, "n": args.n, "temperature": 1.0,
            "mean_max": {k: round(v[0], 4) for k, v in curve.items()},
            "mean_median": {k: round(v[1], 4) for k, v in curve.items()},
            "seconds": round(time.perf_counter() - start),
        }
        print("best-of-n:", results["best_of_n"], flush=True)

    if "rejection" in args.sections:
        start = time.perf_counter()
        before = greedy_correct(model, task.validation, task.validation_reward, stops, pad_id, args.max_new_tokens)
        samples = best_of_n(
            model, task.prompts, args.rejection_n, task.reward, args.max_new_tokens, 1.0, stops, seed=1, pad_id=pad_id
        )
        solved = samples.scores.max(dim=1).values > 0
        examples = [e for e, ok in zip(rejection_sampling_examples(samples), solved) if ok]  # a right answer only
        examples, validation = examples[:-8], examples[-8:]  # the loss on a few kept answers: only reported
        config = FinetuneConfig(
            method="lora", objective="sft", steps=args.rejection_steps, batch_size=8, lr=1e-3, warmup_steps=2, rank=8,
            eval_every=args.rejection_steps, checkpoint_every=args.rejection_steps, seq_len=256,
        )
        finetune(model, examples, validation, config, pad_id=pad_id)
        after = greedy_correct(model, task.validation, task.validation_reward, stops, pad_id, args.max_new_tokens)
        paired = compare(after, before)
        results["rejection"] = {
            "questions": args.rejection_questions, "n": args.rejection_n, "kept": len(examples),
            "steps": args.rejection_steps,
            "before": str(mean_with_stderr([float(c) for c in before])),
            "after": str(mean_with_stderr([float(c) for c in after])),
            "after_only": paired.a_only, "before_only": paired.b_only, "mcnemar_p": round(paired.p_value, 4),
            "seconds": round(time.perf_counter() - start),
        }
        print("rejection:", results["rejection"], flush=True)

    if args.save is not None:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(results, indent=1) + "\n")
        print(f"saved {args.save}")


if __name__ == "__main__":
    main()
