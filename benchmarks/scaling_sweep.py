"""Scaling sweep: model sizes x token budgets on the Shakespeare plays, fitted with Chinchilla's L(N, D).

Trains each of :data:`SIZES` with chapter 07's loop (:func:`llama_from_scratch.training.train.train`) on
chapter 07's corpus (34 plays for training, 4 held out), and records the held-out loss every
``--eval-every`` steps. The learning rate is **constant** after its warm-up (``min_lr = lr``): then the run
to ``D`` tokens is exactly the first part of the run to ``2D``, so one run per size gives every token
budget (Kaplan et al.'s design; Chinchilla anneals a cosine to each budget, which lowers every loss and
costs one run per budget). ``N`` is the number of weights in matrix products
(:func:`llama_from_scratch.systems.flops.matmul_parameters`, the ``N`` of ``C = 6 N D``), ``D`` the
training tokens seen.

Then :func:`llama_from_scratch.systems.scaling_laws.fit_scaling_law` fits ``L(N, D) = E + A/N^alpha +
B/D^beta`` to the sweep's points and predicts the final loss of :data:`HELD_OUT`, a larger model that the
fit never saw (the issue's target: within 2%).

The vocabulary is a 512-piece BPE trained on the training plays (``prepare_shakespeare(..., 512)``), not
the recipe's 4,096: with 4,096 pieces the output head alone would be 130k-790k weights and these tiny
models would be mostly head. The models have one layer and grow in width: in runs this short, deeper
models learn more slowly per step (a first sweep with 1 to 3 layers gave a 3-layer model no better than a
1-layer one at 49k tokens, and a fit with no dependence on ``N`` at all). The defaults (120 steps of
16 x 64 tokens per size) are sized for about 10 minutes on two CPU cores shared with other jobs, so the
token budgets are tiny (49k to 123k tokens fitted); ``--steps`` scales them::

    timeout 900 python benchmarks/scaling_sweep.py --save benchmarks/results/scaling_sweep.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import torch

from llama_from_scratch import Llama, LlamaConfig
from llama_from_scratch.model import count_parameters
from llama_from_scratch.systems.flops import matmul_parameters
from llama_from_scratch.systems.scaling_laws import fit_scaling_law
from llama_from_scratch.training.recipes import prepare_shakespeare
from llama_from_scratch.training.train import TextWindows, TrainConfig, train

VOCAB_SIZE = 512
SIZES = {  # name: (dim, n_layers, n_heads): one layer, the width grown
    "d16": (16, 1, 2),
    "d24": (24, 1, 2),
    "d32": (32, 1, 2),
    "d48": (48, 1, 3),
    "d64": (64, 1, 4),
}
HELD_OUT = ("d96", (96, 1, 4))  # wider than every size in the fit; predicted, never fitted


def model_config(dim: int, n_layers: int, n_heads: int, seq_len: int) -> LlamaConfig:
    """A tiny Llama of the sweep (feed-forward width by Meta's rule, rounded to 16)."""
    return LlamaConfig(
        dim=dim, n_layers=n_layers, n_heads=n_heads, vocab_size=VOCAB_SIZE, multiple_of=16, max_seq_len=seq_len
    )


def run(name: str, shape: tuple[int, int, int], data: TextWindows, config: TrainConfig) -> dict:
    """Train one size; its held-out loss after every ``config.eval_every`` steps, as ``[tokens, loss]`` pairs."""
    model_cfg = model_config(*shape, seq_len=config.seq_len)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    history = train(Llama(model_cfg), data, config)
    seconds = time.perf_counter() - start
    tokens_per_step = config.batch_size * config.seq_len * config.grad_accum
    curve = [[(r["step"] + 1) * tokens_per_step, round(r["val_loss"], 5)] for r in history if "val_loss" in r]
    print(f"{name}: N = {matmul_parameters(model_cfg):,}, final held-out loss {curve[-1][1]:.4f}, {seconds:.0f} s")
    return {
        "name": name,
        "dim": shape[0],
        "n_layers": shape[1],
        "n_heads": shape[2],
        "parameters": count_parameters(model_cfg),
        "matmul_parameters": matmul_parameters(model_cfg),
        "seconds": round(seconds, 1),
        "curve": curve,
    }


def fit_points(runs: list[dict], min_tokens: int) -> tuple[list[int], list[int], list[float]]:
    """``(N, D, L)`` of every recorded budget of ``D >= min_tokens`` tokens (the first steps, still in the
    warm-up's wake, follow no power law)."""
    points = [(r["matmul_parameters"], d, loss) for r in runs for d, loss in r["curve"] if d >= min_tokens]
    n, d, loss = zip(*points)
    return list(n), list(d), list(loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120, help="steps per size (the largest token budget)")
    parser.add_argument("--eval-every", type=int, default=24, help="a token budget every this many steps")
    parser.add_argument("--eval-batches", type=int, default=8, help="held-out batches per evaluation (fixed windows)")
    parser.add_argument("--min-steps", type=int, default=48, help="budgets below this many steps are not fitted")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=Path("data") / f"shakespeare-{VOCAB_SIZE}")
    parser.add_argument("--save", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    os.environ["TQDM_DISABLE"] = "1"
    torch.set_num_threads(args.threads)

    prepared = prepare_shakespeare(args.data_dir, VOCAB_SIZE)
    data = TextWindows(prepared.train, prepared.validation)
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        min_lr=args.lr,
        warmup_steps=10,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        checkpoint_every=args.steps,
    )
    start = time.perf_counter()
    runs = [run(name, shape, data, config) for name, shape in SIZES.items()]
    held_out = run(*HELD_OUT, data, config)

    min_tokens = args.min_steps * args.batch_size * args.seq_len
    law = fit_scaling_law(*fit_points(runs, min_tokens))
    tokens, measured = held_out["curve"][-1]
    predicted = float(law.loss(held_out["matmul_parameters"], tokens))
    error = abs(predicted - measured) / measured
    print(f"fit: E {law.E:.3f}, A {law.A:.3g}, alpha {law.alpha:.3f}, B {law.B:.3g}, beta {law.beta:.3f}")
    print(
        f"held-out {held_out['name']}: measured {measured:.4f}, predicted {predicted:.4f}, "
        f"error {error:.2%} (target 2%)"
    )
    print(f"sweep: {time.perf_counter() - start:.0f} s")

    if args.save:
        result = {
            "command": f"timeout 900 python benchmarks/scaling_sweep.py --save {args.save}",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs)",
            "date": datetime.date.today().isoformat(),
            "torch": torch.__version__,
            "threads": args.threads,
            "vocab_size": VOCAB_SIZE,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "lr": args.lr,
            "steps": args.steps,
            "min_tokens_fitted": min_tokens,
            "seconds": round(time.perf_counter() - start, 1),
            "runs": runs,
            "held_out": held_out,
            "fit": {"E": law.E, "A": law.A, "B": law.B, "alpha": law.alpha, "beta": law.beta},
            "held_out_predicted": round(predicted, 5),
            "held_out_error": round(error, 5),
        }
        args.save.write_text(json.dumps(result, indent=1) + "\n")
        print(f"saved {args.save}")


if __name__ == "__main__":
    main()
