"""Every quantization scheme on SmolLM2-135M: decode speed, bits per byte on held-out Shakespeare, weight memory.

One process, one prompt, batch 1, KV cache, greedy. For each scheme (float32, int8, int4 in groups of
32/64/128, symmetric int4; int4 decodes through the C++ kernel of chapter 14, ``quantization.int4_kernel``,
and "int4 g32 pytorch" is the same model on the pure-PyTorch path of chapter 09) the packaged model is quantized with its output head (tied to the embedding,
so one matrix), decoded with ``generate_stream(..., compile=True)`` (the compiled one-row kernels; compile
time reported apart and not counted), and evaluated on the first ``--eval-chars`` characters of the four
held-out plays. The references run in the same loop, interleaved with ours so that a change in machine
load hits all alike: ``transformers`` ``generate`` on the float32 weights, and llama.cpp on the Q4_1
file itself when ``llama-cpp-python`` is installed.

Decode speed is tokens per second *after the first token*, for all three: the prompt's prefill is left out
(llama.cpp's loop starts after it; ours from the first token yielded; transformers' is the time of a
``--tokens`` generation minus that of a one-token generation, measured in the same round). Optionally (``--trained RUN``) the same quality
figures for a model trained by this course (chapter 07 / ``python -m llama_from_scratch train``).

Targets (issue #13): int4 (group 32) decode >= llama.cpp on the Q4_1 file and >= 3.5x transformers;
int8 >= 2.5x transformers; bits per byte within 1% of float32 for int8 and within 5% for int4 group 32.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from decode_smollm2 import llama_cpp_tok_s, smollm2_file, transformers_smollm2

from llama_from_scratch import GenerationConfig, generate_stream, load_pretrained
from llama_from_scratch.checkpoints import model_tensors
from llama_from_scratch.quantization import int4_kernel, quantize, quantized_layers
from llama_from_scratch.training.corpus import shakespeare
from llama_from_scratch.training.dataset import TokenData
from llama_from_scratch.training.train import evaluate_all

SCHEMES = {  # name -> (scheme, group size) for quantize(); None: the float32 model
    "fp32": None,
    "int8": ("int8", 32),
    "int4 g32": ("int4", 32),
    "int4 g32 pytorch": ("int4", 32),  # Int4Linear.use_kernel off: the compiled one-row PyTorch path
    "int4 g64": ("int4", 64),
    "int4 g128": ("int4", 128),
    "int4-sym g32": ("int4-sym", 32),
}


def quantized(model, name: str):
    """A quantized copy of ``model`` (every linear, output head and embedding included), or the model itself."""
    if SCHEMES[name] is None:
        return model
    scheme, group_size = SCHEMES[name]
    model = quantize(copy.deepcopy(model), scheme, group_size, include_embeddings=True, include_output=True)
    if name.endswith("pytorch"):
        for layer in quantized_layers(model).values():
            layer.use_kernel = False
    return model


def weight_megabytes(model) -> float:
    return sum(t.numel() * t.element_size() for t in model_tensors(model).values()) / 1e6


def bits_per_byte(model, tokenizer, text: str, seq_len: int) -> float:
    """Bits per byte of ``text`` under ``model``: every token predicted once, in windows of ``seq_len``."""
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    return evaluate_all(model, TokenData(ids, len(text.encode("utf-8"))), seq_len, batch_size=4)["bits_per_byte"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-chars", type=int, default=20_000, help="held-out characters scored per scheme")
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    parser.add_argument("--trained", type=Path, help="a run folder or checkpoint trained by this course (optional)")
    parser.add_argument("--save", type=Path, help="also write the figures to this JSON file (chapter 09 reads one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    held_out = shakespeare().validation

    pretrained = load_pretrained(smollm2_file(), device="cpu", dtype=torch.float32)
    theirs, tokenizer, prompt = transformers_smollm2()
    eos = tokenizer.eos_token_id
    models = {name: quantized(pretrained.model, name) for name in args.schemes}

    results = {name: {"weights_MB": round(weight_megabytes(m), 1)} for name, m in models.items()}
    for name, model in models.items():
        start = time.perf_counter()
        bpb = bits_per_byte(model, pretrained.tokenizer, held_out[: args.eval_chars], seq_len=512)
        results[name]["bits_per_byte"] = round(bpb, 4)
        print(f"{name:>13}: {bpb:.4f} bits/byte on {args.eval_chars:,} held-out characters "
              f"({time.perf_counter() - start:.0f} s)", flush=True)

    def decode(model) -> tuple[float, list[int]]:
        """Seconds from the first token yielded to the last, and the tokens."""
        tokens, first = [], None
        for token in generate_stream(model, prompt, GenerationConfig(args.tokens, stop_tokens=[eos]), compile=True):
            tokens.append(token)
            first = first or time.perf_counter()
        return time.perf_counter() - first, tokens

    def transformers_seconds(n: int) -> tuple[float, list[int]]:
        start = time.perf_counter()
        with torch.no_grad():
            out = theirs.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)
        return time.perf_counter() - start, [t for t in out[0, len(prompt) :].tolist() if t != eos]

    def decode_transformers() -> tuple[float, list[int]]:
        """Seconds of a generation minus those of its prefill and first token, and the tokens."""
        whole, tokens = transformers_seconds(args.tokens)
        return whole - transformers_seconds(1)[0], tokens

    for name, model in models.items():  # the first compiled call compiles the decode step
        compile_s, _ = decode(model)
        results[name]["compile_s"] = round(compile_s, 1)
        print(f"{name:>13}: compiled in {compile_s:.0f} s", flush=True)
    decode_transformers()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in [*models, "transformers", "llama.cpp"]}
    tokens = {}
    for _ in range(args.repeats):  # interleaved: every contender in every round
        for name, model in models.items():
            seconds, tokens[name] = decode(model)
            times[name].append((len(tokens[name]) - 1) / seconds)
        seconds, tokens["transformers"] = decode_transformers()
        times["transformers"].append((len(tokens["transformers"]) - 1) / seconds)
        cpp = llama_cpp_tok_s(smollm2_file(), prompt, args.tokens, args.threads)
        if cpp is not None:
            times["llama.cpp"].append(cpp)
    reference = statistics.median(times["transformers"])
    cpp_speed = statistics.median(times["llama.cpp"]) if times["llama.cpp"] else None
    fp32_bpb = results.get("fp32", {}).get("bits_per_byte")
    print(f"\nthreads {args.threads}, prompt {len(prompt)} tokens, {args.tokens} new tokens, median of {args.repeats}")
    print(f"{'scheme':>13} {'tok/s':>7} {'x transformers':>15} {'x llama.cpp':>12} {'bits/byte':>10} {'vs fp32':>8} {'MB':>7}")
    for name in models:
        speed = statistics.median(times[name])
        r = results[name]
        r.update(tok_s=round(speed, 2), x_transformers=round(speed / reference, 2), same_tokens=tokens[name] == tokens["transformers"])
        if cpp_speed:
            r["x_llama_cpp"] = round(speed / cpp_speed, 2)
        if fp32_bpb:
            r["bpb_vs_fp32_percent"] = round(100 * (r["bits_per_byte"] / fp32_bpb - 1), 2)
        print(
            f"{name:>13} {speed:7.1f} {speed / reference:15.2f} {r.get('x_llama_cpp', float('nan')):12.2f} "
            f"{r['bits_per_byte']:10.4f} {r.get('bpb_vs_fp32_percent', float('nan')):+7.2f}% {r['weights_MB']:7.1f}"
        )
    print(f"{'transformers':>13} {reference:7.1f}")
    if cpp_speed:
        print(f"{'llama.cpp Q4_1':>13} {cpp_speed:7.1f}")
    summary = {"threads": args.threads, "transformers_tok_s": round(reference, 2), "schemes": results}
    summary["int4_kernel"] = int4_kernel.available()
    if {"int4 g32", "int4 g32 pytorch"} <= results.keys():
        ratio = results["int4 g32"]["tok_s"] / results["int4 g32 pytorch"]["tok_s"]
        summary["int4_g32_kernel_vs_pytorch"] = round(ratio, 2)
        print(f"int4 g32: the C++ kernel decodes {ratio:.2f}x as fast as the PyTorch path"
              + ("" if summary["int4_kernel"] else " (the kernel is not built here: both rows are the PyTorch path)"))
    if cpp_speed:
        summary["llama_cpp_q4_1_tok_s"] = round(cpp_speed, 2)

    if args.trained is not None:
        trained = load_pretrained(args.trained, device="cpu", dtype=torch.float32)
        seq_len = trained.model.config.max_seq_len
        summary["trained"] = {}
        for name in args.schemes:
            model = quantized(trained.model, name)
            bpb = bits_per_byte(model, trained.tokenizer, held_out, seq_len)
            summary["trained"][name] = round(bpb, 4)
        base = summary["trained"].get("fp32")
        print(f"\n{args.trained}: bits per byte on all four held-out plays")
        for name, bpb in summary["trained"].items():
            print(f"{name:>13} {bpb:10.4f}" + (f" {100 * (bpb / base - 1):+7.2f}%" if base else ""))
    print(json.dumps(summary))
    if args.save is not None:
        summary = {
            "command": "python benchmarks/quantization_smollm2.py " + " ".join(sys.argv[1:]),
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d"),
            "torch": torch.__version__,
            **summary,
        }
        args.save.write_text(json.dumps(summary, indent=1) + "\n")


def machine() -> str:
    """The CPU's model name and core count, as Linux reports them (else the platform's description)."""
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        return f"{names[0]}, {len(names)} cores"
    except (OSError, IndexError):
        return platform.platform()


if __name__ == "__main__":
    main()
