"""Training throughput: this package against transformers.LlamaForCausalLM, same config, batch and optimizer.

One training step = forward, cross-entropy loss, backward, gradient clipping,
AdamW update. Each side computes its loss its own way: ours as the package's
training loop does (``model.loss(inputs, targets)``, the output head fused
with the cross-entropy, see ``llama_from_scratch/cross_entropy.py``),
transformers as its users do (``F.cross_entropy`` on the logits, which is also
what ``LlamaForCausalLM`` does when given labels). Both models hold the same
weights and see the same batches; their steps are interleaved in blocks so
that a change in machine load hits both. Reports tokens/s, the ratio, and
model FLOPs utilisation (MFU) against this machine's measured fp32 matmul peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from llama_from_scratch import Llama, LlamaConfig
from llama_from_scratch.checkpoints.hf import to_transformers


def matmul_peak_flops(size: int = 2048, repeat: int = 5) -> float:
    """The machine's fp32 matrix-multiply speed (FLOP/s), measured as in shared/machine_limits.py."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    start = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * size**3 * repeat / (time.perf_counter() - start)


def flops_per_token(config: LlamaConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 per weight of every matrix multiply, plus attention's scores (Kaplan / PaLM)."""
    matmul_weights = sum(
        p.numel() for name, p in Llama(config).named_parameters() if p.ndim == 2 and "tok_embeddings" not in name
    )
    if config.tie_embeddings:
        matmul_weights += config.vocab_size * config.dim  # the tied output head still multiplies
    return 6 * matmul_weights + 12 * config.n_layers * config.n_heads * config.head_dim * seq_len


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = LlamaConfig.from_preset(args.preset)
    ours = Llama(config).train()
    theirs = to_transformers(ours).train()
    optimizers = {
        "ours": torch.optim.AdamW(ours.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True),
        "transformers": torch.optim.AdamW(
            theirs.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True
        ),
    }
    data = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len + 1))
    inputs, targets = data[:, :-1], data[:, 1:]
    loss_of = {
        "ours": lambda: ours.loss(inputs, targets),
        "transformers": lambda: F.cross_entropy(theirs(input_ids=inputs).logits.flatten(0, 1), targets.flatten()),
    }

    def step(name: str) -> None:
        optimizers[name].zero_grad(set_to_none=True)
        loss = loss_of[name]()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(optimizers[name].param_groups[0]["params"], 1.0)
        optimizers[name].step()

    for name in loss_of:  # warm-up
        step(name)
    seconds: dict[str, list[float]] = {name: [] for name in loss_of}
    for _ in range(args.blocks):
        for name in loss_of:
            start = time.perf_counter()
            for _ in range(args.steps):
                step(name)
            seconds[name].append((time.perf_counter() - start) / args.steps)

    tokens = args.batch_size * args.seq_len
    peak = matmul_peak_flops()
    per_token = flops_per_token(config, args.seq_len)
    result = {
        "preset": args.preset,
        "threads": args.threads,
        "batch": args.batch_size,
        "seq_len": args.seq_len,
        "parameters": ours.num_parameters(),
        "peak_gflops": round(peak / 1e9, 1),
    }
    for name, times in seconds.items():
        tps = tokens / statistics.median(times)
        result[f"{name}_tok_s"] = round(tps, 1)
        result[f"{name}_mfu"] = round(tps * per_token / peak, 3)
    result["ratio"] = round(result["ours_tok_s"] / result["transformers_tok_s"], 3)

    print(
        f"{args.preset}: {ours.num_parameters():,} parameters, batch {args.batch_size} x {args.seq_len} tokens, "
        f"{args.threads} threads, fp32 matmul peak {peak / 1e9:.0f} GFLOP/s"
    )
    for name in loss_of:
        print(f"{name:<14} {result[f'{name}_tok_s']:9,.0f} tok/s   MFU {result[f'{name}_mfu']:.1%}")
    print(f"ratio          {result['ratio']:9.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
