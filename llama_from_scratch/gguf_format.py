"""The GGUF checkpoint format of llama.cpp: one file with metadata, tokenizer and (quantized) tensors.

A GGUF file starts with key-value metadata (``llama.block_count``,
``llama.embedding_length``, ``tokenizer.ggml.tokens``, ...), then a table of
tensors (name, shape, type, offset), then the tensor data. Shapes are listed
fastest-varying dimension first, so a ``(out, in)`` weight appears as
``[in, out]``.

Tensors may be quantized in blocks. In Q4_1, for example, every block of 32
weights stores a float16 scale ``d``, a float16 minimum ``m`` and 32 four-bit
integers ``q``, and each weight is ``d * q + m``: 20 bytes for 32 weights, 5
bits per weight instead of 32. Q8_0 stores a scale and 32 eight-bit integers
(``w = d * q``). The ``gguf`` package's ``dequantize`` turns any of these back
into float32; this module maps names and metadata to this package's.

llama.cpp applies RoPE to neighbouring pairs, exactly like Meta's code and this
package, so GGUF's ``attn_q`` / ``attn_k`` load as they are, with no row
permutation (Hugging Face's rotate-half layout is the odd one out).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .config import LlamaConfig
from .naming import NameMap

# GGUF name pattern -> Meta name pattern; {i} is the layer index.
_NAMES = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
    "blk.{i}.attn_norm.weight": "layers.{i}.attention_norm.weight",
    "blk.{i}.attn_q.weight": "layers.{i}.attention.wq.weight",
    "blk.{i}.attn_k.weight": "layers.{i}.attention.wk.weight",
    "blk.{i}.attn_v.weight": "layers.{i}.attention.wv.weight",
    "blk.{i}.attn_output.weight": "layers.{i}.attention.wo.weight",
    "blk.{i}.ffn_norm.weight": "layers.{i}.ffn_norm.weight",
    "blk.{i}.ffn_gate.weight": "layers.{i}.feed_forward.w1.weight",
    "blk.{i}.ffn_down.weight": "layers.{i}.feed_forward.w2.weight",
    "blk.{i}.ffn_up.weight": "layers.{i}.feed_forward.w3.weight",
}
_GGUF_NAMES = NameMap(_NAMES)


def gguf_to_meta_name(name: str) -> str | None:
    """``blk.3.ffn_gate.weight -> layers.3.feed_forward.w1.weight``; None if not a Llama weight."""
    return _GGUF_NAMES.to_meta(name)


def meta_to_gguf_name(name: str) -> str | None:
    """The inverse of :func:`gguf_to_meta_name`."""
    return _GGUF_NAMES.from_meta(name)


def open_gguf(path: Path):
    """Parse a GGUF file's header and tensor table (the data stays memory-mapped)."""
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except Exception as error:  # the reader raises many types on a damaged file
        raise ValueError(f"{path}: not a readable GGUF file ({type(error).__name__}: {error})") from None


def _float32_decimal(value: float) -> float:
    """The shortest decimal that a float32 metadata value stands for: 9.99999974e-06 -> 1e-05."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


def config_from_gguf(reader, source: str) -> LlamaConfig:
    """Translate a GGUF file's ``llama.*`` metadata into a :class:`LlamaConfig`."""
    fields = reader.fields

    def get(key: str, default: object = None) -> object:
        return fields[key].contents() if key in fields else default

    arch = get("general.architecture")
    if arch != "llama":
        raise ValueError(f"{source}: general.architecture is {arch!r}; this package loads 'llama' models")
    if get("llama.rope.scaling.type", "none") not in ("none", None):
        raise ValueError(f"{source}: RoPE scaling {get('llama.rope.scaling.type')!r} is not supported")
    required = [
        "llama.embedding_length",
        "llama.block_count",
        "llama.attention.head_count",
        "llama.feed_forward_length",
    ]
    missing = [key for key in required if key not in fields]
    if missing:
        raise ValueError(f"{source}: missing metadata {', '.join(missing)}")
    n_heads = get("llama.attention.head_count")
    dim = get("llama.embedding_length")
    vocab_size = get("llama.vocab_size") or len(fields["tokenizer.ggml.tokens"].data)
    names = {tensor.name for tensor in reader.tensors}
    try:
        return LlamaConfig(
            dim=dim,
            n_layers=get("llama.block_count"),
            n_heads=n_heads,
            n_kv_heads=get("llama.attention.head_count_kv", n_heads),
            vocab_size=vocab_size,
            hidden_dim=get("llama.feed_forward_length"),
            head_dim=get("llama.attention.key_length", get("llama.rope.dimension_count", dim // n_heads)),
            norm_eps=_float32_decimal(get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=_float32_decimal(get("llama.rope.freq_base", 10000.0)),
            max_seq_len=get("llama.context_length", 2048),
            tie_embeddings="output.weight" not in names,  # no output matrix: the embedding is reused
        )
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def dequantized(tensor) -> torch.Tensor:
    """One GGUF tensor as a float32 torch tensor of shape ``(out, in)`` (or ``(n,)``)."""
    from gguf import quants

    array = quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists the fastest dimension first
    # A copy: float32 tensors come back as read-only views of the memory-mapped file.
    return torch.from_numpy(np.array(array, dtype=np.float32).reshape(shape))


def read_gguf_tensors(path: Path, reader) -> Iterator[tuple[str, str, torch.Tensor]]:
    """Yield ``(file name, Meta name, float32 tensor)`` for every tensor in the file."""
    for tensor in reader.tensors:
        name = gguf_to_meta_name(tensor.name)
        if name is None:
            if tensor.name == "rope_freqs.weight":
                continue  # RoPE frequencies: recomputed from the metadata
            raise ValueError(f"{path}: tensor {tensor.name!r} is not a weight of a Llama model")
        try:
            yield path.name, name, dequantized(tensor)
        except (NotImplementedError, ValueError) as error:
            raise ValueError(f"{path}: tensor {tensor.name!r} ({tensor.tensor_type.name}): {error}") from None
