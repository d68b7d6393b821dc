"""The Shakespeare recipe end to end: wall-clock time and bits per byte on the held-out plays.

Runs ``python -m llama_from_scratch train`` as a learner would, in a fresh
folder, so that training the tokenizer and encoding the plays count in the
measured time. Then it loads the final checkpoint and measures bits per byte
on *every* token of the four held-out plays (``evaluate_all``); the training
run itself reports a sample of windows. The reference points are the general
purpose compressors xz and gzip on the same text, which need no training.

Target (issue #5): at most 2.0 bits per byte within 10 minutes on two CPU cores.

    .venv/bin/python benchmarks/train_recipe.py              # the full recipe (about 10 minutes)
    .venv/bin/python benchmarks/train_recipe.py --steps 50   # a quick check that the pipeline works
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch

from llama_from_scratch import shakespeare
from llama_from_scratch.checkpoints import load_pretrained
from llama_from_scratch.training.dataset import read_tokens
from llama_from_scratch.training.recipes import RECIPES
from llama_from_scratch.training.train import evaluate_all

EVAL_LINE = re.compile(r"^step (\d+): val loss ([\d.]+), ([\d.]+) bits/byte$")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="shakespeare", choices=sorted(RECIPES))
    parser.add_argument("--steps", type=int, help="override the recipe's step count (a quick check)")
    parser.add_argument(
        "--keep",
        type=Path,
        help="train in this (new or empty) folder and keep it; default: a temporary folder, removed at the end",
    )
    args = parser.parse_args()
    os.environ["TQDM_DISABLE"] = "1"  # the log reads better without progress bars, here and in the training run

    folder = args.keep or Path(tempfile.mkdtemp(prefix="train_recipe_"))
    data_dir, out_dir = folder / "data", folder / "run"
    if data_dir.exists() or out_dir.exists():
        sys.exit(f"{folder} already holds data/ or run/: give an empty folder, so that the run starts from scratch")
    command = [sys.executable, "-m", "llama_from_scratch", "train", "--recipe", args.recipe]
    command += ["--data-dir", str(data_dir), "--out", str(out_dir)]
    if args.steps is not None:
        command += ["--steps", str(args.steps)]
    print(f"{torch.get_num_threads()} threads; running: {' '.join(command)}", flush=True)

    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    curve = []
    for line in process.stdout:
        print(line, end="", flush=True)
        if match := EVAL_LINE.match(line.strip()):
            curve.append((int(match[1]), float(match[3])))
    if process.wait() != 0:
        sys.exit(f"training failed with exit status {process.returncode}")
    wall_clock = time.perf_counter() - start

    model = load_pretrained(out_dir).model
    val_data = read_tokens(data_dir / "val.bin")
    held_out = evaluate_all(model, val_data, RECIPES[args.recipe].train.seq_len)
    text = shakespeare().validation.encode("utf-8")
    compressors = {"xz": 8 * len(lzma.compress(text)) / len(text), "gzip": 8 * len(zlib.compress(text, 9)) / len(text)}

    print(f"\nwall-clock, data preparation included: {wall_clock / 60:.1f} min ({wall_clock:.0f} s)")
    print(f"validation during training (sampled windows): {curve[-1][1]:.3f} bits/byte at step {curve[-1][0]}")
    print(f"held-out plays, every token: {held_out['bits_per_byte']:.3f} bits/byte (target <= 2.0 within 10 min)")
    print(f"compressors on the same text: xz {compressors['xz']:.3f}, gzip {compressors['gzip']:.3f} bits/byte")
    print(
        json.dumps(
            {
                "recipe": args.recipe,
                "threads": torch.get_num_threads(),
                "wall_clock_s": round(wall_clock, 1),
                "val_curve": curve,
                "held_out_bits_per_byte": round(held_out["bits_per_byte"], 4),
                "held_out_loss": round(held_out["loss"], 4),
                "xz_bits_per_byte": round(compressors["xz"], 4),
                "gzip_bits_per_byte": round(compressors["gzip"], 4),
            }
        )
    )
    if args.keep is None:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
