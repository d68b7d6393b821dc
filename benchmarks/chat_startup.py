"""Start-up of ``python -m llama_from_scratch chat``: float32 eager, and quantized (compiled), cold and warm.

Each run is a fresh process, as a user starting ``chat`` would see it: import, load SmolLM2-135M-Instruct,
quantize, compile (when asked), read one question from standard input, and print a 24-token answer. Two
clocks run from starting the process: to the first character of the answer (the prompt's prefill runs
eagerly, so this comes before any compiling) and to the end of the answer (the decode steps, compiled on
the first one: this is where a user would wait for the compiler). "Cold" gives the process an empty
inductor cache (``TORCHINDUCTOR_CACHE_DIR`` in a new temporary folder), as on the first start after
installing; "warm" reuses that folder, as on every later start.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def first_token_seconds(options: list[str], cache_dir: str, threads: int) -> tuple[float, float, str]:
    """Seconds from starting ``chat`` to the first character of its answer and to its end, and the answer."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "llama_from_scratch", "chat", "--max-new-tokens", "24", *options]
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True
    )
    process.stdin.write("What is the capital of France?\n")
    process.stdin.close()
    first = process.stdout.read(1)
    elapsed = time.perf_counter() - start
    answer = first + process.stdout.read()
    if process.wait() != 0 or not first:
        raise SystemExit(f"chat {' '.join(options)} failed (exit status {process.returncode})")
    return elapsed, time.perf_counter() - start, answer.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--schemes", nargs="+", default=["int8", "int4"])
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as empty:
        first, end, answer = first_token_seconds([], empty, args.threads)
        results["fp32 eager"] = {"first_token_s": round(first, 1), "answer_s": round(end, 1)}
        print(f"fp32 eager: first token after {first:.1f} s, answer after {end:.1f} s: {answer!r}", flush=True)
    for scheme in args.schemes:
        with tempfile.TemporaryDirectory() as cache:
            cold = first_token_seconds(["--quantize", scheme], cache, args.threads)
            warm = first_token_seconds(["--quantize", scheme], cache, args.threads)
        results[scheme] = {
            "cold_first_token_s": round(cold[0], 1),
            "cold_answer_s": round(cold[1], 1),
            "warm_first_token_s": round(warm[0], 1),
            "warm_answer_s": round(warm[1], 1),
        }
        print(
            f"{scheme} compiled: first token after {cold[0]:.1f} s cold, {warm[0]:.1f} s warm; "
            f"answer after {cold[1]:.1f} s cold, {warm[1]:.1f} s warm: {cold[2]!r}",
            flush=True,
        )
    print(json.dumps({"threads": args.threads, **results}))


if __name__ == "__main__":
    main()
