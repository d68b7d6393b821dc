"""Hostile files for every format the package reads: each loads, or fails with one clear error naming the file.

Checkpoints and tokenizers come from the internet, so their readers must survive files that are truncated,
bit-flipped or crafted. For every format (a Hugging Face folder: ``config.json``, ``model.safetensors`` and
its index; a Meta folder: ``params.json`` and ``consolidated.NN.pth``; a GGUF file; a SentencePiece
``.model``; ``tokenizer.json`` with ``tokenizer_config.json``) this module writes a small valid example,
then many damaged copies of it: truncations at many offsets, seeded random bit flips, crafted headers (huge
counts and lengths, overlapping offsets), JSON of the wrong types, nested 100,000 deep or not UTF-8, and
FIFOs in place of files. Loading each copy must either succeed or raise a ``ValueError``,
``NotImplementedError`` or ``OSError`` whose message names the file.

Each batch of cases runs in a child process with a memory limit (``RLIMIT_AS``) and a time limit, so that a
hang or a runaway allocation fails a test instead of taking the machine down. The child is this file run as
a script: it loads every case of a manifest and prints one JSON line per case.

The second half holds one focused regression test for each hostile file that once hung, loaded nonsense
silently, or raised a traceback.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import shutil
import struct
import subprocess
import sys
import time
import traceback
from functools import cache
from pathlib import Path

import pytest
import torch

MEMORY_LIMIT = 2 << 30  # bytes of address space for a child; torch and a tiny model need well under 1 GiB
BATCH_TIMEOUT = 60  # seconds for one child process and all its cases
ALLOWED = (ValueError, NotImplementedError, OSError)
HAS_GGUF = __import__("importlib.util").util.find_spec("gguf") is not None
needs_gguf = pytest.mark.skipif(not HAS_GGUF, reason="GGUF files need the gguf package (pip install gguf)")
pytestmark = pytest.mark.slow  # minutes of damaged files in child processes: make test runs it, make test-fast not


# -- the child process --------------------------------------------------------------------------------------


def run_case(load: str, path: str) -> None:
    """Load one case as a user would; a loaded tokenizer or model must then work."""
    from llama_from_scratch import load_pretrained, load_tokenizer

    if load in SURFACES:  # chapters 09-11's surfaces: the second half of this module
        SURFACES[load](Path(path))
        return
    if load == "tokenizer":
        tokenizer = load_tokenizer(path)
        use = lambda: tokenizer.decode(tokenizer.encode("Hello, world! 123 ü\n"))  # noqa: E731
    else:
        pretrained = load_pretrained(path, device="cpu")
        use = lambda: pretrained.model(torch.tensor([[0, 1, 2]]))  # noqa: E731
    try:
        use()
    except ValueError:
        pass  # a strange vocabulary may be unable to spell the text: an error, but not a crash


def worker(manifest: str) -> None:
    """Run every case of ``manifest`` here, printing a JSON line when each starts and when it ends."""
    for case in json.loads(Path(manifest).read_text()):
        print(json.dumps({"id": case["id"], "started": True}), flush=True)
        start, outcome = time.monotonic(), {"error": None}
        try:
            run_case(case["load"], case["path"])
        except BaseException as error:  # noqa: BLE001 - every kind is recorded; the parent judges
            outcome = {
                "error": type(error).__name__,
                "allowed": isinstance(error, ALLOWED),
                "message": str(error)[:3000],
                "traceback": "" if isinstance(error, ALLOWED) else traceback.format_exc()[-3000:],
            }
        print(json.dumps({"id": case["id"], "seconds": time.monotonic() - start, **outcome}), flush=True)


def _limit_memory() -> None:  # runs in the child, before it starts Python
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_batch(cases: list[dict], directory: Path) -> dict[str, dict]:
    """Run ``cases`` in one child process under the memory and time limits; the outcome of each by id.

    A case that started and never ended (the child hung, or died of memory) gets an outcome that says so.
    """
    manifest = directory / f"manifest-{cases[0]['id'].split('/')[0]}.json"
    manifest.write_text(json.dumps(cases))
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, __file__, str(manifest)]
    try:
        child = subprocess.run(
            command, capture_output=True, text=True, timeout=BATCH_TIMEOUT, preexec_fn=_limit_memory, env=env
        )
        stdout, problem = child.stdout, f"the child exited with status {child.returncode}: {child.stderr[-2000:]}"
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout or b""
        stdout, problem = out.decode() if isinstance(out, bytes) else out, f"not done within {BATCH_TIMEOUT} s"
    outcomes: dict[str, dict] = {}
    for line in stdout.splitlines():
        record = json.loads(line)
        if record.pop("started", False):
            outcomes[record["id"]] = {"error": "Unfinished", "allowed": False, "message": problem, "traceback": ""}
        else:
            outcomes[record["id"]] = record
    return outcomes


# -- small valid examples of every format -------------------------------------------------------------------

TEXT = "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n" * 20
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


@cache
def sentencepiece():
    from llama_from_scratch.tokenization.trainer import train_bpe

    return train_bpe(TEXT, 300, character_coverage=1.0)


@cache
def byte_level():
    """A small byte-level BPE: the 256 byte characters, a few merges, three special tokens."""
    from llama_from_scratch.tokenization.byte_bpe import PRE_TOKENIZERS, ByteLevelBPE, bytes_to_unicode

    vocab = {char: i for i, char in enumerate(bytes_to_unicode().values())}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("o", "r")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    special = {text: len(vocab) + i for i, text in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])}
    ids = {"bos_id": special["<|im_start|>"], "eos_id": special["<|im_end|>"]}
    return ByteLevelBPE(vocab, merges, PRE_TOKENIZERS["smollm"], special, **ids)


def tiny_model(tokenizer, tie: bool = False):
    from helpers import random_llama
    from llama_from_scratch import LlamaConfig

    config = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tokenizer.vocab_size, hidden_dim=48)
    return random_llama(config.replace(max_seq_len=64, tie_embeddings=tie))


def write_examples(root: Path) -> dict[str, Path]:
    """One valid example of each format under ``root``; each must load."""
    from llama_from_scratch import save_checkpoint
    from safetensors.torch import load_file, save_file

    sp, bpe = sentencepiece(), byte_level()
    examples = {
        "hf": save_checkpoint(tiny_model(sp), sp, root / "hf", chat_template=CHAT_TEMPLATE),
        "hf_bpe": save_checkpoint(tiny_model(bpe, tie=True), bpe, root / "hf_bpe", chat_template=CHAT_TEMPLATE),
        "meta": save_checkpoint(tiny_model(sp), sp, root / "meta", format="meta", n_shards=2),
        "spm": sp.save(root / "tokenizer.model"),
    }
    # A sharded Hugging Face folder: two safetensors files and the index that maps tensors to them.
    sharded = shutil.copytree(examples["hf"], root / "hf_sharded")
    weights = load_file(sharded / "model.safetensors")
    (sharded / "model.safetensors").unlink()
    names = sorted(weights)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({name: weights[name] for name in part}, sharded / file)
        weight_map.update(dict.fromkeys(part, file))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    examples["hf_sharded"] = sharded
    if HAS_GGUF:
        examples["gguf"] = save_checkpoint(tiny_model(sp), sp, root / "model.gguf", "gguf", CHAT_TEMPLATE)
        examples["gguf_bpe"] = save_checkpoint(tiny_model(bpe), bpe, root / "bpe.gguf", "gguf", CHAT_TEMPLATE)
    return examples


# -- ways to damage a file ----------------------------------------------------------------------------------

HUGE = [2**62, 2**64 - 1, 2**32, 2**31 + 7]  # counts and lengths no file can hold
HOSTILE_VALUES = [None, True, -1, 0, 2**40, 1.5, float("nan"), "64", "false", "", [], {}, [1], {"a": 1}]
DEEP = "[" * 100_000 + "]" * 100_000
HOSTILE_JSON = [
    b"",
    b"[]",
    b"null",
    b'"text"',
    b"1",
    b"\xff\xfe{\x00}\x00",  # not UTF-8
    b"\xef\xbb\xbf{}",  # a byte-order mark
    b"{" + b"1" * 5000 + b"}",
    b'{"a": ' + b"9" * 5000 + b"}",  # an integer too long for Python to convert
    DEEP.encode(),
    ('{"a": ' * 100_000 + "1" + "}" * 100_000).encode(),
    b'{"a": NaN, "b": Infinity}',
]


def truncations(data: bytes, rng: random.Random, n_random: int = 6) -> list[bytes]:
    """Cuts in the header (where the structure is), evenly through the file, at random, and one byte short."""
    offsets = {0, 1, 3, 4, 7, 8, 9, 16, 23, 24, 31, 33, 64, 100, len(data) - 1}
    offsets |= {len(data) * k // 8 for k in range(1, 8)} | {rng.randrange(len(data)) for _ in range(n_random)}
    return [data[:n] for n in sorted(offsets) if n < len(data)]


def bit_flips(data: bytes, rng: random.Random, n: int, structure: int) -> list[bytes]:
    """``n`` copies with one random bit flipped, most of them within the first ``structure`` bytes."""
    out = []
    for i in range(n):
        position = rng.randrange(min(structure, len(data)) if i % 4 else len(data))
        flipped = bytearray(data)
        flipped[position] ^= 1 << rng.randrange(8)
        out.append(bytes(flipped))
    return out


def patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    """``data`` with ``struct.pack(fmt, value)`` written over it at ``offset``."""
    packed = struct.pack(fmt, value)
    return data[:offset] + packed + data[offset + len(packed) :]


def json_mutations(value: dict, rng: random.Random, n_random: int) -> list[bytes]:
    """Every top-level field deleted, and replaced by hostile values (all, or ``n_random`` chosen at random)."""
    out = [json.dumps({k: v for k, v in value.items() if k != key}).encode() for key in value]
    pairs = [(key, bad) for key in value for bad in HOSTILE_VALUES]
    for key, bad in pairs if n_random is None else rng.sample(pairs, min(n_random, len(pairs))):
        out.append(json.dumps({**value, key: bad}).encode())
    return out


def safetensors_mutations(data: bytes, rng: random.Random) -> list[bytes]:
    """Crafted safetensors headers: huge or wrong header lengths, dtypes, shapes and offsets."""
    (length,) = struct.unpack_from("<Q", data)
    header, body = json.loads(data[8 : 8 + length]), data[8 + length :]

    def rebuilt(new_header) -> bytes:
        text = json.dumps(new_header).encode() if not isinstance(new_header, bytes) else new_header
        return struct.pack("<Q", len(text)) + text + body

    out = [patched(data, 0, "<Q", n) for n in [*HUGE, 0, length - 1, length + 1]]
    out += [rebuilt(bad) for bad in HOSTILE_JSON]
    names = [name for name in header if name != "__metadata__"]
    for change in [
        {"dtype": "I32"}, {"dtype": "I8"}, {"dtype": "BOOL"}, {"dtype": "C64"}, {"dtype": "F16"}, {"dtype": "BF16"},
        {"dtype": "U8"}, {"dtype": "F8_E4M3"}, {"dtype": "X9"}, {"dtype": 5},
        {"shape": []}, {"shape": [0]}, {"shape": [2**40]}, {"shape": [-1]}, {"shape": "x"}, {"shape": [2**62, 2**62]},
        {"data_offsets": [0, 2**62]}, {"data_offsets": [8, 4]}, {"data_offsets": [0, 0]}, {"data_offsets": "x"},
        {"data_offsets": [-4, 4]},
    ]:  # fmt: skip
        name = rng.choice(names)
        out.append(rebuilt({**header, name: {**header[name], **change}}))
    return out


def gguf_positions(path: Path) -> dict[str, int]:
    """Where a valid GGUF file keeps each field's value (``"field:KEY"``: its type; ``"value:KEY"``: the value or,
    for an array, its item type) and each tensor's dimension count (``"dims:NAME"``) and offset (``"offset:NAME"``)."""
    import gguf

    reader, positions = gguf.GGUFReader(str(path)), {}
    for field in reader.fields.values():
        if not field.name.startswith("GGUF."):
            positions[f"key:{field.name}"] = field.offset
            positions[f"field:{field.name}"] = field.offset + 8 + len(field.name.encode())
            positions[f"value:{field.name}"] = positions[f"field:{field.name}"] + 4
    for tensor in reader.tensors:
        n_dims = tensor.field.offset + 8 + len(tensor.name.encode())
        positions[f"dims:{tensor.name}"] = n_dims
        positions[f"type:{tensor.name}"] = n_dims + 4 + 8 * len(tensor.shape)
        positions[f"offset:{tensor.name}"] = n_dims + 4 + 8 * len(tensor.shape) + 4
    return positions


def gguf_mutations(path: Path, rng: random.Random, n_fields: int, n_tensors: int) -> list[bytes]:
    """Crafted GGUF headers: huge counts and lengths, unknown types, tensors out of place or overlapping."""
    import gguf

    data, at = path.read_bytes(), gguf_positions(path)
    reader = gguf.GGUFReader(str(path))
    out = [patched(data, 4, "<I", version) for version in (1, 4, 0x03000000, 0)]
    out += [patched(data, offset, "<Q", n) for offset in (8, 16) for n in [*HUGE, 0]]  # tensor and kv counts
    fields = [f for f in reader.fields.values() if not f.name.startswith("GGUF.")]
    for field in rng.sample(fields, min(n_fields, len(fields))):
        value = at[f"value:{field.name}"]
        out.append(patched(data, at[f"key:{field.name}"], "<Q", rng.choice(HUGE)))  # the key's length
        out.append(patched(data, at[f"field:{field.name}"], "<I", rng.choice([13, 2**31, 9])))  # the value type
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            count = int(field.parts[4][0])
            out.append(patched(data, value + 4, "<Q", rng.choice([*HUGE, count + 1, count - 1])))
            out.append(patched(data, value, "<I", rng.choice([8, 9, 12, 99])))  # the item type
        elif field.types[0] == gguf.GGUFValueType.STRING:
            out.append(patched(data, value, "<Q", rng.choice(HUGE)))
    offsets = [int(t.field.parts[-1][0]) for t in reader.tensors]
    for tensor in rng.sample(reader.tensors, min(n_tensors, len(reader.tensors))):
        name, offset = tensor.name, int(tensor.field.parts[-1][0])
        out.append(patched(data, at[f"dims:{name}"], "<I", rng.choice([5, 2**31, 0])))
        out.append(patched(data, at[f"dims:{name}"] + 4, "<Q", rng.choice([*HUGE, 0, 1])))  # the first dimension
        out.append(patched(data, at[f"type:{name}"], "<I", rng.choice([999, 2, 30, 26])))  # unknown, Q4_0, BF16, I32
        for new in (offset + 1, offset + 32, 2**63, 2**64 - 32, rng.choice(offsets)):
            out.append(patched(data, at[f"offset:{name}"], "<Q", new))
    return out


def sentencepiece_mutations(data: bytes) -> list[bytes]:
    """Crafted protobuf: huge lengths, wrong wire types, unknown piece types, a field number 0."""
    huge_length = b"\x0a" + b"\xff" * 9 + b"\x01"
    return [
        huge_length + data,
        b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x40" + data,  # length 2**62
        b"\x08\x05" + data,  # the pieces field as a varint
        b"\x0a\x02\x08\x01" + data,  # a piece whose text is a varint
        b"\x0a\x04\x0a\x00\x18\x63" + data,  # piece type 99
        b"\x0a\x04\x0a\x00\x18\x04" + data,  # an empty user-defined piece
        b"\x0a\x07\x0a\x01x\x18\x06\x10\x00" + data,  # a byte piece whose text is "x"
        b"\x0a\x04\x0a\x00\x15\x00" + data,  # a score of one byte
        b"\x0f" + data,  # wire type 7
        b"\x00\x00" + data,  # field 0
        b"\x12\x02\x18\x05" + data,  # trainer_spec.model_type 5
        b"\x12\x02\x1a\x00" + data,  # trainer_spec.model_type as bytes
        b"\x1a\x02\x08\x01" + data,  # normalizer_spec.name as a varint
        b"\x1a\x03\x12\x01x" + data,  # a precompiled character map
        b"\x0a" * 64,
        b"\x80" * 64,
    ]


# -- the fuzz cases, by format ------------------------------------------------------------------------------


class Cases:
    """Collects cases: each a folder or file to load, with the names its error message may use."""

    def __init__(self, root: Path, batch: str):
        self.root, self.batch, self.cases = root / batch, batch, []
        self.root.mkdir(parents=True)

    def add(self, load: str, path: Path, note: str, names: list[str]) -> None:
        case_id = f"{self.batch}/{len(self.cases)}"
        self.cases.append({"id": case_id, "load": load, "path": str(path), "note": note, "names": names})

    def file_variant(self, example: Path, note: str, data: bytes, load: str = "tokenizer") -> None:
        path = self.root / f"{len(self.cases)}{example.suffix}"
        path.write_bytes(data)
        self.add(load, path, note, [str(path), path.name])

    def folder_variant(
        self, example: Path, note: str, changes: dict[str, bytes | None], load: str = "checkpoint"
    ) -> None:
        """A copy of the folder ``example`` (hard links) with files replaced (bytes), removed (None), or made
        FIFOs (``b"FIFO"``) or folders (``b"DIR"``)."""
        folder = self.root / str(len(self.cases))
        folder.mkdir()
        for file in example.iterdir():
            if file.name not in changes:
                os.link(file, folder / file.name)
        for name, data in changes.items():
            if data == b"FIFO":
                os.mkfifo(folder / name)
            elif data == b"DIR":
                (folder / name).mkdir()
            elif data is not None:
                (folder / name).write_bytes(data)
        self.add(load, folder, note, [str(folder), *sorted(p.name for p in example.iterdir()), *changes])


def hf_cases(examples: dict[str, Path], root: Path, rng: random.Random) -> list[dict]:
    cases = Cases(root, "hf")
    hf, sharded = examples["hf"], examples["hf_sharded"]
    config = json.loads((hf / "config.json").read_text())
    variants = json_mutations(config, rng, n_random=70) + HOSTILE_JSON
    for data in variants + truncations((hf / "config.json").read_bytes(), rng):
        cases.folder_variant(hf, "config.json", {"config.json": data})
    weights = (hf / "model.safetensors").read_bytes()
    (length,) = struct.unpack_from("<Q", weights)
    variants = truncations(weights, rng) + bit_flips(weights, rng, 16, 8 + length) + safetensors_mutations(weights, rng)
    for data in variants:
        cases.folder_variant(hf, "model.safetensors", {"model.safetensors": data})
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shard = next(iter(index["weight_map"].values()))
    bad_maps = [[], None, "x", {"a": 1}, {"model.norm.weight": "../hf/model.safetensors"}, {"x": "/etc/hostname"}]
    bad_maps += [{**index["weight_map"], "model.norm.weight": name} for name in ("..", ".", "", "a\x00b", "sub", 7)]
    variants = [json.dumps({"weight_map": m}).encode() for m in bad_maps] + HOSTILE_JSON
    for data in variants + json_mutations(index, rng, n_random=None):
        cases.folder_variant(sharded, "index", {"model.safetensors.index.json": data, "sub": b"DIR"})
    for name in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"):
        cases.folder_variant(hf, f"FIFO {name}", {name: b"FIFO"})
    cases.folder_variant(sharded, "FIFO shard", {shard: b"FIFO"})
    cases.folder_variant(sharded, "FIFO index", {"model.safetensors.index.json": b"FIFO"})
    return cases.cases


def meta_cases(examples: dict[str, Path], root: Path, rng: random.Random) -> list[dict]:
    cases = Cases(root, "meta")
    meta = examples["meta"]
    params = json.loads((meta / "params.json").read_text())
    for data in json_mutations(params, rng, n_random=50) + HOSTILE_JSON:
        cases.folder_variant(meta, "params.json", {"params.json": data})
    shard = (meta / "consolidated.01.pth").read_bytes()
    for data in truncations(shard, rng, 4) + bit_flips(shard, rng, 12, len(shard)):
        cases.folder_variant(meta, "consolidated.01.pth", {"consolidated.01.pth": data})
    cases.folder_variant(meta, "FIFO params.json", {"params.json": b"FIFO"})
    cases.folder_variant(meta, "FIFO shard", {"consolidated.00.pth": b"FIFO"})
    return cases.cases


def gguf_cases(examples: dict[str, Path], root: Path, rng: random.Random) -> list[dict]:
    cases = Cases(root, "gguf")
    for example in (examples["gguf"], examples["gguf_bpe"]):
        data = example.read_bytes()
        import gguf

        header = gguf.GGUFReader(str(example)).data_offset
        variants = truncations(data, rng) + bit_flips(data, rng, 24, header)
        variants += gguf_mutations(example, rng, n_fields=10, n_tensors=4)
        for data in variants:
            cases.file_variant(example, example.name, data, load="checkpoint")
    fifo = cases.root / "fifo.gguf"
    os.mkfifo(fifo)
    cases.add("tokenizer", fifo, "FIFO", [str(fifo)])
    cases.add("checkpoint", fifo, "FIFO", [str(fifo)])
    return cases.cases


def tokenizer_cases(examples: dict[str, Path], root: Path, rng: random.Random) -> list[dict]:
    cases = Cases(root, "tokenizers")
    spm = examples["spm"].read_bytes()
    variants = truncations(spm, rng) + bit_flips(spm, rng, 40, len(spm)) + sentencepiece_mutations(spm)
    for data in variants:
        cases.file_variant(examples["spm"], "tokenizer.model", data)
    folder = examples["hf_bpe"]
    spec = json.loads((folder / "tokenizer.json").read_text())
    model, added = spec["model"], spec["added_tokens"]
    nested = [
        {**spec, "model": {**model, "vocab": bad}} for bad in HOSTILE_VALUES
    ] + [
        {**spec, "model": {**model, "merges": bad}} for bad in HOSTILE_VALUES
    ] + [
        {**spec, "model": {**model, "vocab": {**model["vocab"], "Ġthe": bad}}} for bad in (-1, "x", 1.5, None, True)
    ] + [
        {**spec, "model": {**model, "merges": [bad, *model["merges"]]}} for bad in ("nospace", 5, ["a"], [1, 2], None)
    ] + [
        {**spec, "added_tokens": [{**added[0], **change}, *added[1:]]}
        for change in ({"content": ""}, {"content": 5}, {"id": -1}, {"id": "3"}, {"id": None}, {"content": None})
    ] + [
        {**spec, "added_tokens": bad} for bad in ("x", [1], [{}], {"a": 1})
    ] + [
        {**spec, "pre_tokenizer": bad}
        for bad in (
            "x", [], {"type": 5}, {"type": "Sequence"}, {"type": "Sequence", "pretokenizers": "x"},
            {"type": "Sequence", "pretokenizers": [5]},
            *(
                {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": p, "behavior": "Isolated"}, byte]}
                for p in ({"Regex": "(unclosed"}, "x", {"String": " "}, {"Regex": 5}, {})
                for byte in [{"type": "ByteLevel"}]
            ),
            {"type": "ByteLevel", "add_prefix_space": "no", "use_regex": "yes"},
            {"type": "Digits", "individual_digits": "yes"},
        )
    ]  # fmt: skip
    variants = [json.dumps(v).encode() for v in nested] + json_mutations(spec, rng, n_random=30) + HOSTILE_JSON
    variants += truncations((folder / "tokenizer.json").read_bytes(), rng, 2)
    for data in variants:
        cases.folder_variant(folder, "tokenizer.json", {"tokenizer.json": data})
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    for data in json_mutations(tokenizer_config, rng, n_random=None) + HOSTILE_JSON:
        cases.folder_variant(folder, "tokenizer_config.json", {"tokenizer_config.json": data})
    for name in ("tokenizer.json", "tokenizer_config.json"):
        cases.folder_variant(folder, f"FIFO {name}", {name: b"FIFO"})
    for case in cases.cases:
        if case["load"] == "checkpoint":  # the tokenizer alone: faster than the whole checkpoint
            case["load"] = "tokenizer"
    fifo = cases.root / "fifo.model"
    os.mkfifo(fifo)
    cases.add("tokenizer", fifo, "FIFO", [str(fifo)])
    return cases.cases


BATCHES = {
    "hf": hf_cases,
    "meta": meta_cases,
    "gguf": pytest.param(gguf_cases, marks=needs_gguf),
    "tokenizers": tokenizer_cases,
}


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> dict[str, Path]:
    return write_examples(tmp_path_factory.mktemp("examples"))


def assert_each_loads_or_fails_well(cases: list[dict], outcomes: dict, one_line: bool = False) -> None:
    """Every case either loads or fails with an allowed error whose message names the damaged file or field
    (``case["names"]``); with ``one_line``, a message of one line (what the command line prints)."""
    failures = []
    for case in cases:
        outcome = outcomes.get(case["id"], {"error": "NotRun", "allowed": False, "message": "", "traceback": ""})
        if outcome["error"] is None:
            continue
        named = any(name in outcome["message"] for name in case["names"])
        if not (outcome["allowed"] and named) or (one_line and "\n" in outcome["message"]):
            failures.append(
                f"{case['id']} ({case['note']}, {case['path']}): {outcome['error']}: {outcome['message'][:500]}\n"
                + outcome["traceback"]
            )
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures[:15])


@pytest.mark.parametrize("make_cases", BATCHES.values(), ids=BATCHES.keys())
def test_damaged_files_load_or_fail_with_an_error_naming_the_file(examples, tmp_path, make_cases):
    cases = make_cases(examples, tmp_path, random.Random(20240611))
    assert_each_loads_or_fails_well(cases, run_batch(cases, tmp_path))


# -- focused regressions: each hostile file that once hung, loaded nonsense silently, or gave a traceback -------

REGRESSIONS: dict[str, tuple] = {}


def regression(load: str, pattern: str, gguf: bool = False):
    """Register ``build(examples, folder) -> path``: loading the path must raise a FormatError matching ``pattern``."""

    def register(build):
        REGRESSIONS[build.__name__] = (build, load, pattern, gguf)
        return build

    return register


def copy_of(examples: dict[str, Path], name: str, folder: Path) -> Path:
    return Path(shutil.copytree(examples[name], folder / name))


def edited_json(path: Path, changes: dict | None = None, text: bytes | None = None) -> None:
    path.write_bytes(text if text is not None else json.dumps({**json.loads(path.read_text()), **changes}).encode())


def edited_weights(folder: Path, change) -> Path:
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    change(weights)
    save_file(weights, folder / "model.safetensors")
    return folder


def gguf_bytes(fields: list[tuple[str, int, bytes]]) -> bytes:
    """A GGUF v3 file with no tensors and the given (key, value type, packed value) metadata."""
    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(fields))
    for key, kind, value in fields:
        out += struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", kind) + value
    return out


def gguf_tokenizer(path: Path, model: str, tokens=None, scores=None, types=None, merges=None) -> Path:
    """A GGUF file holding only a tokenizer, written by the gguf package."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    for values, add in ((tokens, writer.add_token_list), (scores, writer.add_token_scores)):
        if values is not None:
            add(values)
    for values, add in ((types, writer.add_token_types), (merges, writer.add_token_merges)):
        if values is not None:
            add(values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path


def patched_gguf(examples, folder: Path, position: str, fmt: str, value, example="gguf", skip=0, plus=0) -> Path:
    """A copy of an example GGUF file with ``struct.pack(fmt, value + plus)`` written ``skip`` bytes after one of
    its :func:`gguf_positions`. ``value``: a number, or another position, whose uint64 is copied."""
    data, at = examples[example].read_bytes(), gguf_positions(examples[example])
    if isinstance(value, str):
        value = struct.unpack_from("<Q", data, at[value])[0]
    path = folder / "model.gguf"
    path.write_bytes(patched(data, at[position] + skip, fmt, value + plus))
    return path


# Hangs and runaway memory.


@regression("tokenizer", r"114\.gguf: metadata tokenizer\.ggml\.scores claims 4611686018427387904 items", gguf=True)
def gguf_array_of_2_62_floats(examples, folder):
    """114 bytes whose scores array claims 2**62 float32 items: the gguf reader looped, allocating, for ever."""
    path = folder / "114.gguf"
    string = struct.pack("<Q", 5) + b"llama"
    scores = struct.pack("<IQ", 6, 2**62)  # float32 items, 2**62 of them
    path.write_bytes(gguf_bytes([("general.architecture", 8, string), ("tokenizer.ggml.scores", 9, scores)]))
    assert path.stat().st_size == 114
    return path


@regression("checkpoint", r"114\.gguf: metadata tokenizer\.ggml\.scores claims 4611686018427387904 items", gguf=True)
def gguf_array_of_2_62_floats_as_a_checkpoint(examples, folder):
    return gguf_array_of_2_62_floats(examples, folder)


@regression("tokenizer", r"strings\.gguf: metadata tokenizer\.ggml\.tokens claims 4611686018427387904 items", gguf=True)
def gguf_array_of_2_62_strings(examples, folder):
    path = folder / "strings.gguf"
    path.write_bytes(gguf_bytes([("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 2**62))]))
    return path


@regression("checkpoint", r"config\.json: num_hidden_layers is 100000, but the weights hold 2 layer\(s\)")
def config_with_100000_layers(examples, folder):
    hf = copy_of(examples, "hf", folder)
    edited_json(hf / "config.json", {"num_hidden_layers": 100_000})
    return hf


@regression("checkpoint", r"params\.json: n_layers is 100000, but the weights hold 2 layer\(s\)")
def params_with_100000_layers(examples, folder):
    meta = copy_of(examples, "meta", folder)
    edited_json(meta / "params.json", {"n_layers": 100_000})
    return meta


# GGUF files with one number changed: (case, where and what to write, the error it must give).
GGUF_PATCHES = [
    (
        "gguf_string_of_2_62_bytes",  # the first merge rule's length
        dict(position="value:tokenizer.ggml.merges", fmt="<Q", value=2**62, example="gguf_bpe", skip=12),
        r"model.gguf: metadata tokenizer.ggml.merges\[0\] needs 4611686018427387904 bytes",
    ),
    (
        "gguf_block_count_100000",
        dict(position="value:llama.block_count", fmt="<I", value=100_000),
        r"model.gguf: llama.block_count is 100000, but the weights hold 2 layer\(s\)",
    ),
    (
        "gguf_block_count_2_32_minus_1",
        dict(position="value:llama.block_count", fmt="<I", value=2**32 - 1),
        r"model.gguf: LlamaConfig.n_layers must be positive and at most 2147483647, got 4294967295",
    ),
    (
        "gguf_head_count_zero",
        dict(position="value:llama.attention.head_count", fmt="<I", value=0),
        r"model.gguf: LlamaConfig.n_heads must be positive and at most \d+, got 0",
    ),
    (
        "gguf_tensors_that_overlap",
        dict(position="offset:blk.0.attn_k.weight", fmt="<Q", value="offset:blk.0.attn_q.weight"),
        r"model.gguf: tensor 'blk.0.attn_[qk].weight' overlaps tensor 'blk.0.attn_[qk].weight'",
    ),
    (
        "gguf_offset_that_wraps_around",
        dict(position="offset:blk.0.attn_k.weight", fmt="<Q", value=2**64 - 32),
        r"model.gguf: tensor 'blk.0.attn_k.weight' needs bytes \d+ to \d+, but the file ends at \d+",
    ),
    (
        "gguf_offset_out_of_alignment",
        dict(position="offset:blk.0.attn_k.weight", fmt="<Q", value="offset:blk.0.attn_k.weight", plus=4),
        r"model.gguf: tensor 'blk.0.attn_k.weight' starts at offset \d+, not a multiple of general.alignment \(32\)",
    ),
    (
        "gguf_weight_stored_as_int32",  # F32 relabelled I32: the same four bytes a value
        dict(position="type:blk.0.attn_k.weight", fmt="<I", value=26),
        r"model.gguf: tensor 'blk.0.attn_k.weight' \(I32\) holds integers",
    ),
]
for _name, _patch, _pattern in GGUF_PATCHES:
    _build = lambda examples, folder, _patch=_patch: patched_gguf(examples, folder, **_patch)  # noqa: E731
    _build.__name__ = _name
    regression("checkpoint", _pattern, gguf=True)(_build)


def fifo_in(examples, folder, example: str, name: str) -> Path:
    copy = copy_of(examples, example, folder)
    (copy / name).unlink()
    os.mkfifo(copy / name)
    return copy


for _example, _name in [
    ("hf", "config.json"),
    ("hf", "model.safetensors"),
    ("hf", "tokenizer.model"),
    ("hf", "tokenizer_config.json"),
    ("hf_bpe", "tokenizer.json"),
    ("hf_sharded", "model.safetensors.index.json"),
    ("meta", "params.json"),
    ("meta", "consolidated.01.pth"),
]:
    _build = lambda examples, folder, _e=_example, _n=_name: fifo_in(examples, folder, _e, _n)  # noqa: E731
    _build.__name__ = f"fifo_as_{_example}_{_name.replace('.', '_')}"
    regression("checkpoint", re.escape(_name) + r": expected a regular file, got a FIFO \(named pipe\)")(_build)


@regression("tokenizer", r"fifo\.gguf: expected a regular file, got a FIFO", gguf=True)
def fifo_as_gguf(examples, folder):
    os.mkfifo(folder / "fifo.gguf")
    return folder / "fifo.gguf"


@regression("checkpoint", r"latest: expected a regular file, got a FIFO")
def fifo_as_latest_pointer(examples, folder):
    copy_of(examples, "hf", folder)
    os.mkfifo(folder / "latest")
    return folder


# Silent wrong results.


@regression("checkpoint", r"config\.json: tie_word_embeddings must be true or false, got 'false' \(str\)")
def tie_word_embeddings_as_a_string(examples, folder):
    hf = copy_of(examples, "hf", folder)
    edited_json(hf / "config.json", {"tie_word_embeddings": "false"})
    return hf


@regression("checkpoint", r"params\.json: tie_embeddings must be true or false, got 'false' \(str\)")
def tie_embeddings_as_a_string_in_params(examples, folder):
    meta = copy_of(examples, "meta", folder)
    edited_json(meta / "params.json", {"tie_embeddings": "false"})
    return meta


@regression("checkpoint", r"model\.safetensors: tensor 'norm\.weight' is torch\.int32, expected torch\.float32")
def float32_relabelled_int32(examples, folder):
    hf = copy_of(examples, "hf", folder)
    data = (hf / "model.safetensors").read_bytes()
    (length,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8 : 8 + length])
    header["model.norm.weight"]["dtype"] = "I32"  # the same four bytes a value: the sizes still add up
    text = json.dumps(header).encode()
    (hf / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length :])
    return hf


for _dtype in ("int8", "bool", "complex64", "int64"):

    def _build(examples, folder, _dtype=_dtype):
        def change(weights):
            weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"].to(getattr(torch, _dtype))

        return edited_weights(copy_of(examples, "hf", folder), change)

    _build.__name__ = f"weights_stored_as_{_dtype}"
    _pattern = rf"model.safetensors: tensor 'tok_embeddings.weight' is torch.{_dtype}, expected torch.float32"
    regression("checkpoint", _pattern)(_build)


@regression(
    "tokenizer",
    r"short.gguf: metadata tokenizer.ggml.token_type has 2 entries, tokenizer.ggml.tokens 3",
    gguf=True,
)
def gguf_token_types_shorter_than_tokens(examples, folder):
    return gguf_tokenizer(folder / "short.gguf", "llama", ["<unk>", "a", "b"], [0.0, 0.0, 0.0], [2, 1])


@regression(
    "tokenizer",
    r"short.gguf: metadata tokenizer.ggml.scores has 1 entries, tokenizer.ggml.tokens 3",
    gguf=True,
)
def gguf_scores_shorter_than_tokens(examples, folder):
    return gguf_tokenizer(folder / "short.gguf", "llama", ["<unk>", "a", "b"], [0.0], [2, 1, 1])


@regression("tokenizer", r"tokenizer\.json: added_tokens\[0\] is '' with id \d+; expected a non-empty text")
def tokenizer_json_with_an_empty_added_token(examples, folder):
    path = folder / "tokenizer.json"
    spec = json.loads((examples["hf_bpe"] / "tokenizer.json").read_text())
    spec["added_tokens"][0]["content"] = ""
    path.write_text(json.dumps(spec))
    return path


@regression(
    "checkpoint",
    r"model.safetensors.index.json: weight_map\['model.norm.weight'\] is '../outside.safetensors';"
    r" expected the name of an entry inside",
)
def index_naming_a_file_outside_the_folder(examples, folder):
    sharded = copy_of(examples, "hf_sharded", folder)
    shutil.copy(next(sharded.glob("model-00001*")), folder / "outside.safetensors")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "../outside.safetensors"
    edited_json(sharded / "model.safetensors.index.json", index)
    return sharded


@regression("checkpoint", r"latest is '\.\./hf'; expected the name of an entry inside")
def latest_pointer_outside_the_run(examples, folder):
    run = folder / "run"
    run.mkdir()
    copy_of(examples, "hf", folder)
    (run / "latest").write_text("../hf\n")
    return run


# Tracebacks instead of one clear error.

for _example, _file in [("hf", "config.json"), ("meta", "params.json"), ("hf_sharded", "model.safetensors.index.json")]:
    for _text, _type in [(b"[]", "list"), (b"null", "NoneType")]:

        def _build(examples, folder, _example=_example, _file=_file, _text=_text):
            copy = copy_of(examples, _example, folder)
            edited_json(copy / _file, text=_text)
            return copy

        _build.__name__ = f"{_file.replace('.', '_')}_holding_{_type}"
        regression("checkpoint", re.escape(_file) + f": expected a JSON object, got {_type}")(_build)


def with_config(changes: dict, example: str = "hf", file: str = "config.json"):
    def build(examples, folder):
        copy = copy_of(examples, example, folder)
        edited_json(copy / file, changes)
        return copy

    return build


for _name, _changes, _pattern in [
    ("rope_scaling_a_string", {"rope_scaling": "linear"}, r"config.json: rope_scaling must be an object, got 'linear'"),
    ("rms_norm_eps_null", {"rms_norm_eps": None}, r"config\.json: rms_norm_eps must be a finite number, got None"),
    ("vocab_size_a_string", {"vocab_size": "300"}, r"config\.json: vocab_size must be an integer, got '300' \(str\)"),
    ("hidden_size_a_float", {"hidden_size": 32.0}, r"config\.json: hidden_size must be an integer, got 32\.0"),
    ("rope_theta_infinite", {"rope_theta": 1e999}, r"config\.json: rope_theta must be a finite number, got inf"),
]:
    _build = with_config(_changes)
    _build.__name__ = f"config_with_{_name}"
    regression("checkpoint", _pattern)(_build)


@regression("checkpoint", r"params\.json: dim must be an integer, got '32' \(str\)")
def params_with_dim_a_string(examples, folder):
    return with_config({"dim": "32"}, "meta", "params.json")(examples, folder)


@regression("checkpoint", r"params\.json: vocab_size must be an integer, got 'x' \(str\)")
def params_with_vocab_size_a_string(examples, folder):
    return with_config({"vocab_size": "x"}, "meta", "params.json")(examples, folder)


@regression("checkpoint", r"model\.safetensors\.index\.json: weight_map must be an object, got \['a'\] \(list\)")
def index_whose_weight_map_is_a_list(examples, folder):
    return with_config({"weight_map": ["a"]}, "hf_sharded", "model.safetensors.index.json")(examples, folder)


@regression(
    "checkpoint",
    r"model.safetensors.index.json: weight_map\['model.norm.weight'\] must be a string, got 7",
)
def index_naming_a_number(examples, folder):
    sharded = copy_of(examples, "hf_sharded", folder)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = 7
    edited_json(sharded / "model.safetensors.index.json", index)
    return sharded


@regression("checkpoint", r"sub: expected a regular file, got a directory")
def index_naming_a_directory(examples, folder):
    sharded = copy_of(examples, "hf_sharded", folder)
    (sharded / "sub").mkdir()
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "sub"
    edited_json(sharded / "model.safetensors.index.json", index)
    return sharded


for _content, _type in [([torch.ones(2)], "list"), (torch.ones(2), "Tensor"), (7, "int")]:

    def _build(examples, folder, _content=_content):
        meta = copy_of(examples, "meta", folder)
        torch.save(_content, meta / "consolidated.00.pth")
        return meta

    _build.__name__ = f"pth_holding_{_type}"
    regression("checkpoint", rf"consolidated\.00\.pth: expected a dict of tensors by name, got {_type}")(_build)


@regression(
    "checkpoint",
    r"model.safetensors: tensor 'layers.0.attention.wq.weight' has shape \(\), expected \(32, 32\)",
)
def zero_dimensional_weight(examples, folder):
    def change(weights):
        weights["model.layers.0.self_attn.q_proj.weight"] = torch.tensor(1.0)

    return edited_weights(copy_of(examples, "hf", folder), change)


@regression("tokenizer", r"notokens\.gguf: missing metadata tokenizer\.ggml\.tokens", gguf=True)
def gguf_without_tokens(examples, folder):
    return gguf_tokenizer(folder / "notokens.gguf", "llama")


@regression("tokenizer", r"nomerges\.gguf: missing metadata tokenizer\.ggml\.merges", gguf=True)
def gguf_without_merges(examples, folder):
    return gguf_tokenizer(folder / "nomerges.gguf", "gpt2", ["a", "b"], types=[1, 1])


for _key in ("vocab", "merges"):

    def _build(examples, folder, _key=_key):
        path = folder / "tokenizer.json"
        spec = json.loads((examples["hf_bpe"] / "tokenizer.json").read_text())
        del spec["model"][_key]
        path.write_text(json.dumps(spec))
        return path

    _build.__name__ = f"tokenizer_json_without_{_key}"
    regression("tokenizer", rf"tokenizer\.json: model: missing {_key}")(_build)


@regression("checkpoint", r"config\.json: JSON nested deeper than Python can parse")
def config_nested_100000_deep(examples, folder):
    hf = copy_of(examples, "hf", folder)
    edited_json(hf / "config.json", text=('{"a": ' * 100_000 + "1" + "}" * 100_000).encode())
    return hf


@regression("tokenizer", r"tokenizer\.json: JSON nested deeper than Python can parse")
def tokenizer_json_nested_100000_deep(examples, folder):
    path = folder / "tokenizer.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    return path


@regression(
    "checkpoint",
    r"consolidated.01.pth: tensor 'layers.0.attention.wq.weight' has shape \(16, 31\), which does not match",
)
def meta_shards_of_different_shapes(examples, folder):
    meta = copy_of(examples, "meta", folder)
    shard = torch.load(meta / "consolidated.01.pth", weights_only=True)
    shard["layers.0.attention.wq.weight"] = shard["layers.0.attention.wq.weight"][:, :31].clone()
    torch.save(shard, meta / "consolidated.01.pth")
    return meta


@regression("checkpoint", r"config\.json: not UTF-8 text")
def config_not_utf8(examples, folder):
    hf = copy_of(examples, "hf", folder)
    edited_json(hf / "config.json", text='{"model_type": "llama", "x": "é"}'.encode("latin-1"))
    return hf


@regression(
    "tokenizer",
    r"empty.model is not a valid SentencePiece .model file: piece 0 is an empty user-defined piece",
)
def sentencepiece_with_an_empty_user_defined_piece(examples, folder):
    path = folder / "empty.model"
    path.write_bytes(b"\x0a\x04\x0a\x00\x18\x04" + examples["spm"].read_bytes())
    return path


@regression(
    "tokenizer",
    r"tokenizer.json: pre_tokenizer.pretokenizers\[0\].pattern.Regex is not a valid regular expression",
)
def tokenizer_json_with_an_invalid_regex(examples, folder):
    path = folder / "tokenizer.json"
    spec = json.loads((examples["hf_bpe"] / "tokenizer.json").read_text())
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed"
    path.write_text(json.dumps(spec))
    return path


def valid_cases(examples: dict[str, Path]) -> list[dict]:
    cases = [{"id": f"valid/{name}", "load": "checkpoint", "path": str(path)} for name, path in examples.items()]
    return [{**case, "load": "tokenizer"} if case["id"] == "valid/spm" else case for case in cases]


@pytest.fixture(scope="module")
def regression_outcomes(examples, tmp_path_factory) -> dict[str, dict]:
    """The outcome of every valid example and every regression case, all run in one child process."""
    root = tmp_path_factory.mktemp("regressions")
    cases = valid_cases(examples)
    for name, (build, load, _, gguf) in REGRESSIONS.items():
        if gguf and not HAS_GGUF:
            continue
        folder = root / name
        folder.mkdir()
        cases.append({"id": f"regression/{name}", "load": load, "path": str(build(examples, folder))})
    return run_batch(cases, root)


def test_the_valid_examples_load(examples, regression_outcomes):
    outcomes = {case["id"]: regression_outcomes.get(case["id"], {"error": "NotRun"}) for case in valid_cases(examples)}
    assert {name: outcome["error"] for name, outcome in outcomes.items()} == dict.fromkeys(outcomes), outcomes


@pytest.mark.parametrize("name", [pytest.param(n, marks=[needs_gguf] if r[3] else []) for n, r in REGRESSIONS.items()])
def test_a_hostile_file_is_one_clear_error(regression_outcomes, name):
    pattern = REGRESSIONS[name][2]
    outcome = regression_outcomes.get(f"regression/{name}", {"error": "NotRun: the child stopped before this case"})
    assert outcome["error"] == "FormatError", outcome
    assert re.search(pattern, outcome["message"]), outcome["message"]

# -- chapters 09-11's surfaces: quantized folders and GGUF files, adapters, fine-tuning data and runs, chat ----
# -- templates, RoPE scaling, tiktoken files; each case loaded and used as the command line would ---------------


def use_chat(path: Path) -> None:
    """One turn of ``chat`` with the checkpoint ``path``: its chat template rendered, two tokens generated."""
    from llama_from_scratch import load_pretrained
    from llama_from_scratch.generate import GenerationConfig
    from llama_from_scratch.tokenization.chat import chat

    turns = iter(["Hello", None])
    chat(load_pretrained(path, device="cpu"), lambda: next(turns), lambda text: None, GenerationConfig(2))


def use_adapter(path: Path) -> None:
    """The adapter folder ``path`` loaded onto its base (named in ``base-path``), then one forward pass."""
    from llama_from_scratch import load_pretrained
    from llama_from_scratch.finetuning.adapter import load_adapter

    model = load_pretrained((path / "base-path").read_text(), device="cpu").model
    load_adapter(model, path)
    model(torch.tensor([[0, 1, 2]]))


def use_data(objective: str):
    def use(path: Path) -> None:
        from llama_from_scratch.finetuning.data import read_jsonl

        read_jsonl(path, objective)

    return use


def finetune_arguments(out: Path, steps: int, *more: str) -> list[str]:
    base, data = (out / "base-path").read_text(), (out / "data-path").read_text()
    return ["finetune", "--base", base, "--data", data, "--out", str(out), "--steps", str(steps), "--batch-size", "2",
            "--eval-every", "100", "--rank", "2", *more]  # fmt: skip


def use_run(path: Path) -> None:
    """``finetune --resume`` of the run folder ``path`` (base and data named in it), as the command line does."""
    import contextlib
    import io

    from llama_from_scratch.cli import parser

    args = parser().parse_args(finetune_arguments(path, 3, "--resume"))
    with contextlib.redirect_stdout(io.StringIO()):  # the child's stdout carries the outcomes
        args.func(args)


def use_finite(path: Path) -> None:
    """A checkpoint with NaN or infinity planted in it: refused, or (a failure) loaded into NaN logits."""
    from llama_from_scratch import load_pretrained

    logits = load_pretrained(path, device="cpu").model(torch.tensor([[0, 1, 2]]))
    if not bool(torch.isfinite(logits).all()):
        raise RuntimeError(f"{path} loaded silently, and its logits are NaN or infinite")


SURFACES = {
    "finite": use_finite,
    "chat": use_chat,
    "adapter": use_adapter,
    "sft-data": use_data("sft"),
    "dpo-data": use_data("dpo"),
    "run": use_run,
}


def blocky_model(tokenizer, tie: bool = False):
    """A tiny model whose every matrix has rows of a multiple of 32 values: GGUF's blocks and int4's groups."""
    from helpers import random_llama
    from llama_from_scratch import LlamaConfig

    config = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tokenizer.vocab_size, hidden_dim=64)
    return random_llama(config.replace(max_seq_len=64, tie_embeddings=tie))


CONVERSATIONS = [
    {"messages": [{"role": "user", "content": f"Who speaks line {i}?"}, {"role": "assistant", "content": "Hamlet"}]}
    for i in range(12)
]


def write_surface_examples(root: Path, examples: dict[str, Path]) -> dict[str, Path]:
    """One valid example of each surface of chapters 09-11 under ``root``; each must load."""
    from llama_from_scratch import save_checkpoint
    from llama_from_scratch.cli import parser
    from llama_from_scratch.finetuning.adapter import save_adapter
    from llama_from_scratch.finetuning.lora import add_lora, lora_layers
    from llama_from_scratch.quantization import quantize
    from llama_from_scratch.tokenization.tiktoken_file import write_tiktoken_file

    sp, bpe = sentencepiece(), byte_level()
    quantized = quantize(blocky_model(bpe, tie=True), "int4", 32, include_embeddings=True, include_output=True)
    out = {"quantized": save_checkpoint(quantized, bpe, root / "quantized", "quantized", CHAT_TEMPLATE)}
    if HAS_GGUF:
        for quant in ("q4_0", "q5_1"):
            out[quant] = save_checkpoint(blocky_model(sp), sp, root / f"{quant}.gguf", "gguf", CHAT_TEMPLATE, quant=quant)
    model = tiny_model(bpe, tie=True)
    add_lora(model, rank=2)
    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.lora_B)
    out["adapter"] = save_adapter(model, root / "adapter")
    (out["adapter"] / "base-path").write_text(str(examples["hf_bpe"]))
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({**c, "chosen": "Hamlet", "rejected": "Lear"}) + "\n" for c in CONVERSATIONS))
    out["data"] = data
    run = root / "run"
    run.mkdir()
    (run / "base-path").write_text(str(examples["hf_bpe"]))
    (run / "data-path").write_text(str(data))
    args = parser().parse_args(finetune_arguments(run, 1))
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        args.func(args)
    out["run"] = run
    ranks = {bytes([b]): b for b in range(256)}
    for token in (b"th", b"the", b" the", b"in", b"er"):
        ranks[token] = len(ranks)
    out["tiktoken"] = root / "tokenizer.model"
    write_tiktoken_file(ranks, out["tiktoken"])
    return out


HOSTILE_TEMPLATES = [
    "{% for %}",  # a syntax error
    "{{ raise_exception('roles must alternate') }}",  # transformers' way of refusing a conversation
    "{{ ''.__class__.__mro__ }}",
    "{{ messages.__class__.__mro__[1].__subclasses__() }}",
    "{{ 'x' * 10**11 }}",
    "{{ [1] * 10**11 }}",
    "{{ 2 ** 10 ** 10 }}",
    "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}{% endfor %}"
    "{% endfor %}{% endfor %}",
    "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{{ undefined_name.attribute }}",
    "{{ 1 / 0 }}",
    "{{ messages[5]['content'] }}",
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "{% include 'other.jinja' %}",
    "{{ cycler.__init__.__globals__ }}",
    "{% extends '/etc/passwd' %}",
    "{{ bos_token * 10**9 }}",
    "",
    "{{",
    "{% if %}{% endif %}",
]


def template_mutations(template: str, rng: random.Random, n: int) -> list[str]:
    """``n`` seeded copies of ``template`` with a piece cut out or a Jinja delimiter inserted."""
    out = []
    for _ in range(n):
        i, j = sorted(rng.randrange(len(template) + 1) for _ in range(2))
        if rng.random() < 0.5:
            out.append(template[:i] + template[j:])
        else:
            out.append(template[:i] + rng.choice(["{{", "}}", "{%", "%}", "{#", "'", "(", "[", "|", "~", "**"]) + template[i:])
    return out


def with_metadata(data: bytes, key: str, value: str) -> bytes:
    """A safetensors file with one metadata entry replaced (the tensors' bytes unchanged)."""
    (length,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"] = {**header.get("__metadata__", {}), key: value}
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data[8 + length :]


def with_tensor(data: bytes, name: str, change) -> bytes:
    """A safetensors file with ``change(tensor)`` applied to one tensor, in place, before it is written back."""
    from safetensors.torch import load, save

    (length,) = struct.unpack_from("<Q", data)
    metadata = json.loads(data[8 : 8 + length]).get("__metadata__")
    tensors = load(data)
    change(tensors[name])
    return save(tensors, metadata=metadata)


def quantized_cases(surfaces: dict[str, Path], root: Path, rng: random.Random) -> list[dict]:
    from llama_from_scratch.checkpoints.quantized import HEADER_KEY

    cases = Cases(root, "quantized")
    folder = surfaces["quantized"]
    config = json.loads((folder / "config.json").read_text())
    for data in json_mutations(config, rng, n_random=20) + HOSTILE_JSON[:6]:
        cases.folder_variant(folder, "config.json", {"config.json": data})
    for changes in ({"num_hidden_layers": 100_000}, {"vocab_size": 2**40}, {"hidden_size": 64}):
        cases.folder_variant(folder, "config.json", {"config.json": json.dumps({**config, **changes}).encode()})
    weights = (folder / "quantized.safetensors").read_bytes()
    (length,) = struct.unpack_from("<Q", weights)
    variants = truncations(weights, rng, 3) + bit_flips(weights, rng, 8, 8 + length) + safetensors_mutations(weights, rng)
    header = json.loads(json.loads(weights[8 : 8 + length])["__metadata__"][HEADER_KEY])
    layer = next(iter(header["layers"]))
    texts = [bad.decode("utf-8", "replace") for bad in HOSTILE_JSON]
    texts += [b.decode() for b in json_mutations(header, rng, n_random=8)]
    texts += [json.dumps({**header, "layers": {**header["layers"], layer: bad}}) for bad in HOSTILE_VALUES[:8]]
    texts += [json.dumps({**header, "layers": {**header["layers"], layer: {**header["layers"][layer], **change}}})
              for change in ({"group_size": 2**40}, {"group_size": 0}, {"scheme": "int2"}, {"extra": 1})]  # fmt: skip
    variants += [with_metadata(weights, HEADER_KEY, text) for text in texts]
    for data in variants:
        cases.folder_variant(folder, "quantized.safetensors", {"quantized.safetensors": data})
    scales = [name for name in json.loads(weights[8 : 8 + length]) if name.endswith(".scales")]
    for value in (float("nan"), float("inf")):
        for name in (rng.choice(scales), "norm.weight"):
            data = with_tensor(weights, name, lambda t, v=value: t.view(-1).__setitem__(0, v))
            cases.folder_variant(folder, "quantized.safetensors", {"quantized.safetensors": data}, load="finite")
    for kind in (b"FIFO", b"DIR"):
        cases.folder_variant(folder, "quantized.safetensors", {"quantized.safetensors": kind})
    return cases.cases


def quantized_gguf_cases(surfaces: dict[str, Path], root: Path, rng: random.Random) -> list[dict]:
    import gguf

    cases = Cases(root, "quantized_gguf")
    for quant in ("q4_0", "q5_1"):
        example = surfaces[quant]
        data, reader = example.read_bytes(), gguf.GGUFReader(str(example))
        variants = truncations(data, rng, 3) + bit_flips(data, rng, 12, reader.data_offset)
        variants += gguf_mutations(example, rng, n_fields=4, n_tensors=2)
        for variant in variants:
            cases.file_variant(example, example.name, variant, load="checkpoint")
        blocks = [t for t in reader.tensors if t.tensor_type.name.upper() == quant.upper()]
        for tensor in rng.sample(blocks, 3):  # a block's float16 scale made NaN or infinite
            for bits in (0x7E00, 0x7C00):
                cases.file_variant(example, example.name, patched(data, int(tensor.data_offset), "<H", bits), "finite")
    return cases.cases


def adapter_cases(surfaces: dict[str, Path], root: Path, rng: random.Random) -> list[dict]:
    cases = Cases(root, "adapter")
    folder = surfaces["adapter"]
    config = json.loads((folder / "adapter_config.json").read_text())
    variants = json_mutations(config, rng, n_random=25) + HOSTILE_JSON[:6]
    variants += [json.dumps({**config, **c}).encode() for c in ({"r": 10**6}, {"r": 2**40}, {"lora_alpha": 1e308})]
    for data in variants:
        cases.folder_variant(folder, "adapter_config.json", {"adapter_config.json": data}, load="adapter")
    weights = (folder / "adapter_model.safetensors").read_bytes()
    (length,) = struct.unpack_from("<Q", weights)
    variants = truncations(weights, rng, 3) + bit_flips(weights, rng, 8, 8 + length) + safetensors_mutations(weights, rng)
    names = [name for name in json.loads(weights[8 : 8 + length]) if name != "__metadata__"]
    for value in (float("nan"), float("inf")):
        variants.append(with_tensor(weights, rng.choice(names), lambda t, v=value: t.view(-1).__setitem__(0, v)))
    for data in variants:
        cases.folder_variant(folder, "adapter_model.safetensors", {"adapter_model.safetensors": data}, load="adapter")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        cases.folder_variant(folder, f"FIFO {name}", {name: b"FIFO"}, load="adapter")
    return cases.cases


def data_cases(surfaces: dict[str, Path], root: Path, rng: random.Random) -> list[dict]:
    cases = Cases(root, "data")
    example = surfaces["data"]
    record = json.loads(example.read_text().splitlines()[0])
    good = example.read_bytes()
    lines = [json.dumps({**record, "messages": bad}).encode() for bad in HOSTILE_VALUES]
    lines += [json.dumps({**record, "messages": [bad]}).encode() for bad in HOSTILE_VALUES[:8]]
    lines += [json.dumps({**record, "messages": ["hello"]}).encode(), json.dumps({**record, "chosen": 5}).encode()]
    lines += json_mutations(record, rng, n_random=10) + HOSTILE_JSON
    variants = [good + line + b"\n" for line in lines] + truncations(good, rng, 3) + bit_flips(good, rng, 10, len(good))
    variants.append(good.replace(b"Hamlet", "H\u00e4mlet".encode("latin-1"), 1))  # not UTF-8
    for i, data in enumerate(variants):
        cases.file_variant(example, "data.jsonl", data, load=("sft-data", "dpo-data")[i % 2])
    fifo = cases.root / "fifo.jsonl"
    os.mkfifo(fifo)
    cases.add("sft-data", fifo, "FIFO", [str(fifo)])
    return cases.cases


def run_state_cases(surfaces: dict[str, Path], root: Path, rng: random.Random) -> list[dict]:
    import pickle

    cases = Cases(root, "run")
    run = surfaces["run"]
    step = next(run.glob("step-*")).name
    state = (run / step / "trainer_state.pt").read_bytes()
    saved = torch.load(run / step / "trainer_state.pt", weights_only=True)
    config = json.loads((run / step / "train_config.json").read_text())

    def torch_bytes(value) -> bytes:
        import io

        buffer = io.BytesIO()
        torch.save(value, buffer)
        return buffer.getvalue()

    states = [b"", pickle.dumps({"step": 1}), b"FIFO", "/dev/zero"] + truncations(state, rng, 2)
    states += bit_flips(state, rng, 4, len(state))
    states += [torch_bytes(v) for v in ([1, 2], {"history": []}, {**saved, "step": "4"}, {**saved, "step": -1},
                                        {**saved, "optimizer": {"state": 5}}, {**saved, "history": "x"})]  # fmt: skip
    configs = [b"FIFO", b"[]", DEEP.encode()] + json_mutations(config, rng, n_random=4)
    changes = [{"trainer_state.pt": s} for s in states] + [{"train_config.json": c} for c in configs]
    for number, change in enumerate(changes):
        folder = cases.root / str(number)
        shutil.copytree(run, folder, symlinks=True)
        for name, data in change.items():
            path = folder / step / name
            path.unlink()
            if data == b"FIFO":
                os.mkfifo(path)
            elif isinstance(data, str):
                os.symlink(data, path)
            else:
                path.write_bytes(data)
        cases.add("run", folder, f"{step}/{name}", [str(folder), name])
    return cases.cases


def template_cases(surfaces: dict[str, Path], root: Path, rng: random.Random) -> list[dict]:
    from llama_from_scratch.chat import CHATML_TEMPLATE

    cases = Cases(root, "templates")
    folder = surfaces["hf_bpe"]
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    templates = HOSTILE_TEMPLATES + template_mutations(CHATML_TEMPLATE, rng, 25)
    named = [[{"name": "default", "template": bad}] for bad in ("{% for %}", 5, None)] + [[{"template": "x"}], "x" * 3]
    for template in templates + named:
        data = json.dumps({**tokenizer_config, "chat_template": template}).encode()
        cases.folder_variant(folder, "tokenizer_config.json", {"tokenizer_config.json": data}, load="chat")
    for case in cases.cases:
        case["names"].append("chat template")  # a checkpoint left without one says so
    return cases.cases


def rope_cases(surfaces: dict[str, Path], root: Path, rng: random.Random) -> list[dict]:
    cases = Cases(root, "rope")
    folder = surfaces["hf"]
    config = json.loads((folder / "config.json").read_text())
    config.pop("rope_parameters")  # transformers 5's spelling of plain RoPE: the cases spell their scaling the 4.x way
    scalings = [
        {"rope_type": "linear", "factor": 4.0},
        {"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 16},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 32, "beta_slow": 1},
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 16},
    ]  # fmt: skip
    variants = []
    for scaling in scalings:
        variants.append({**config, "rope_scaling": scaling})
        variants += [{**config, "rope_scaling": json.loads(m)} for m in json_mutations(scaling, rng, n_random=12)]
        variants += [{**config, "rope_scaling": {**scaling, "factor": f}} for f in (1e308, 1e39, 2**1100)]
        variants += [{**config, "rope_scaling": scaling, "rope_theta": theta} for theta in (1.0, 1e-300, 1e308)]
    variants += [{**config, "rope_scaling": {"type": "dynamic", "factor": 1e308}}]
    for value in variants:
        cases.folder_variant(folder, "config.json", {"config.json": json.dumps(value).encode()})
    return cases.cases


def tiktoken_cases(surfaces: dict[str, Path], root: Path, rng: random.Random) -> list[dict]:
    import base64

    cases = Cases(root, "tiktoken")
    example = surfaces["tiktoken"]
    data = example.read_bytes()
    variants = truncations(data, rng, 4) + bit_flips(data, rng, 16, len(data))
    extra = [
        base64.b64encode(b"a" * 1_000_000) + b" 261",  # the quadratic conversion of one long token
        b"YWI= " + b"9" * 5000,  # a rank too long to convert
        b"YWI= 99999999999999999999",
        b"dGg= 300",  # a token listed twice
        b"not-base64! 261",
        b"YWI=  261",
        b"YWI= -1",
        b"\xff\xfe 261",
    ]
    variants += [data + line + b"\n" for line in extra]
    variants.append(b"".join(line + b"\n" for line in data.splitlines() if not line.startswith(b"QQ==")))  # no "A"
    for variant in variants:
        cases.file_variant(example, "tokenizer.model", variant, load="tokenizer")
    fifo = cases.root / "tokenizer.model"
    os.mkfifo(fifo)
    cases.add("tokenizer", fifo, "FIFO", [str(fifo)])
    return cases.cases


# each batch's valid example and how it is used
VALID_SURFACE = {
    "quantized": ("quantized", "checkpoint"),
    "quantized_gguf": ("q5_1", "checkpoint"),
    "adapter": ("adapter", "adapter"),
    "data": ("data", "dpo-data"),
    "run": ("run", "run"),
    "templates": ("hf_bpe", "chat"),
    "rope": ("hf", "checkpoint"),
    "tiktoken": ("tiktoken", "tokenizer"),
}
SURFACE_BATCHES = {
    "quantized": quantized_cases,
    "quantized_gguf": pytest.param(quantized_gguf_cases, marks=needs_gguf),
    "adapter": adapter_cases,
    "data": data_cases,
    "run": pytest.param(run_state_cases, marks=pytest.mark.slow),
    "templates": pytest.param(template_cases, marks=pytest.mark.slow),
    "rope": rope_cases,
    "tiktoken": tiktoken_cases,
}


@pytest.fixture(scope="module")
def surfaces(examples, tmp_path_factory) -> dict[str, Path]:
    return {**examples, **write_surface_examples(tmp_path_factory.mktemp("surfaces"), examples)}


@pytest.mark.parametrize("make_cases", SURFACE_BATCHES.values(), ids=SURFACE_BATCHES.keys())
def test_damaged_surfaces_of_chapters_09_to_11_fail_with_an_error_naming_the_file(surfaces, tmp_path, make_cases):
    cases = make_cases(surfaces, tmp_path, random.Random(20261207))
    example, load = VALID_SURFACE[cases[0]["id"].split("/")[0]]  # the undamaged example loads first, and must
    cases = [{"id": "valid/0", "load": load, "path": str(surfaces[example]), "note": "valid", "names": []}, *cases]
    assert_each_loads_or_fails_well(cases, run_batch(cases, tmp_path), one_line=True)


if __name__ == "__main__":
    worker(sys.argv[1])
