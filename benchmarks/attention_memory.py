"""Time and peak memory of causal attention against sequence length: materialised scores, tiled, SDPA (issue #15).

One attention layer of SmolLM2's shape (9 query heads, 3 key/value heads, head_dim 64, batch 1, float32):

* ``materialised``: ``softmax(q k^T / sqrt(d)) v`` with the package's ``attention_weights``, ``causal_mask``
  and ``repeat_kv``: the whole ``(heads, seq, seq)`` score matrix exists, twice (scores, then weights);
* ``tiled``: the package's from-scratch :func:`~llama_from_scratch.long_context.flash_attention` (online
  softmax over key blocks; plain PyTorch operations in a Python loop);
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention(is_causal=True, enable_gqa=True)``, PyTorch's
  fused kernel (on the CPU a FlashAttention-style tiled kernel in C++).

Peak memory: every (method, length) runs in a fresh child process. The child makes its inputs, runs the
method once on a short sequence (one-time allocations: thread pools, kernels' buffers), then resets the
kernel's high-water mark of its resident memory (``/proc/self/clear_refs``, value 5, Linux >= 4.0), calls
the method once, and reports ``VmHWM - VmRSS before the call`` from ``/proc/self/status``: the memory the
call itself added at its peak, inputs excluded, output included (9 x seq x 64 floats). Time: the median of
``--repeats`` further calls in the same child, after the memory measurement.

Target: tiled peak memory at 8,192 tokens at least 10x below materialised.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from llama_from_scratch.attention import attention_weights, causal_mask, repeat_kv
from llama_from_scratch.long_context import flash_attention

METHODS = ("materialised", "tiled", "sdpa")
HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64  # SmolLM2-135M


def attend(method: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int) -> torch.Tensor:
    """Causal attention ``(1, heads, seq, head_dim)`` by ``method``."""
    if method == "materialised":
        n_rep, seq = q.shape[1] // k.shape[1], q.shape[2]
        weights = attention_weights(q, repeat_kv(k, n_rep), causal_mask(seq, seq))  # (1, heads, seq, seq)
        return weights @ repeat_kv(v, n_rep)
    if method == "tiled":
        return flash_attention(q, k, v, causal=True, block_size=block_size)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def status_kb(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def child(method: str, seq: int, block_size: int, repeats: int, threads: int) -> dict:
    """One measurement, in this (fresh) process: peak MB added by one call, and the median seconds per call."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(seq)
    q = torch.randn(1, HEADS, seq, HEAD_DIM, generator=generator)
    k, v = (torch.randn(1, KV_HEADS, seq, HEAD_DIM, generator=generator) for _ in range(2))
    with torch.inference_mode():
        attend(method, q[:, :, :128], k[:, :, :128], v[:, :, :128], block_size)  # one-time allocations
        Path("/proc/self/clear_refs").write_text("5")  # the high-water mark := the current resident size
        before = status_kb("VmRSS")
        out = attend(method, q, k, v, block_size)
        peak_mb = (status_kb("VmHWM") - before) / 1024
        del out
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            attend(method, q, k, v, block_size)
            times.append(time.perf_counter() - start)
    return {"peak_mb": round(peak_mb, 1), "seconds": round(statistics.median(times), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-materialised-gb", type=float, default=8.0,
                        help="skip materialised attention where its two score matrices would exceed this")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", type=Path, help="write the figures to this JSON file (notebook 11 reads it)")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "SEQ"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.block_size, args.repeats, args.threads)))
        return
    seconds = {m: [] for m in args.methods}
    peak_mb = {m: [] for m in args.methods}
    skipped = {}
    for seq in args.lengths:
        for method in args.methods:
            scores_gb = 2 * HEADS * seq * seq * 4 / 1e9  # scores and weights, float32
            if method == "materialised" and scores_gb > args.max_materialised_gb:
                skipped[f"{method} {seq}"] = f"two {HEADS} x {seq} x {seq} float32 matrices: {scores_gb:.1f} GB"
                seconds[method].append(None)
                peak_mb[method].append(None)
                continue
            command = [sys.executable, __file__, "--child", method, str(seq), "--block-size", str(args.block_size),
                       "--repeats", str(args.repeats), "--threads", str(args.threads)]
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            seconds[method].append(result["seconds"])
            peak_mb[method].append(result["peak_mb"])
            print(f"{method:>12} {seq:>6}: {result['seconds']:8.4f} s, peak {result['peak_mb']:9.1f} MB", flush=True)
    print(f"\none layer, {HEADS} heads, {KV_HEADS} kv heads, head_dim {HEAD_DIM}, float32, causal; "
          f"tiled block {args.block_size}; {args.threads} threads")
    header = "".join(f"{m + ' s':>16}" for m in args.methods) + "".join(f"{m + ' MB':>17}" for m in args.methods)
    print(f"{'length':>7}{header}")
    for i, seq in enumerate(args.lengths):
        cells = "".join(f"{seconds[m][i]:16.4f}" if seconds[m][i] is not None else f"{'-':>16}" for m in args.methods)
        cells += "".join(f"{peak_mb[m][i]:17.1f}" if peak_mb[m][i] is not None else f"{'-':>17}" for m in args.methods)
        print(f"{seq:>7}{cells}")
    summary = {
        "threads": args.threads,
        "heads": HEADS,
        "kv_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "block_size": args.block_size,
        "lengths": args.lengths,
        "seconds": seconds,
        "peak_mb": peak_mb,
        "skipped": skipped,
        "memory_method": "fresh process per measurement; VmHWM after one call minus VmRSS before it, the "
        "high-water mark reset through /proc/self/clear_refs; inputs excluded, output included",
    }
    if {"materialised", "tiled"} <= set(args.methods):
        i = args.lengths.index(max(args.lengths))
        m, t = peak_mb["materialised"][i], peak_mb["tiled"][i]
        if m is not None and t is not None:
            ratio = m / max(t, 1e-9)
            summary["materialised_over_tiled_at_longest"] = round(ratio, 1)
            print(f"TARGET (tiled peak at {max(args.lengths)} at least 10x below materialised): {ratio:.0f}x, "
                  f"{'met' if ratio >= 10 else 'NOT met'}")
    print(json.dumps(summary))
    if args.save is not None:
        from long_context_perplexity import save

        save(args.save, "attention_memory.py", summary)


if __name__ == "__main__":
    main()
