"""Save a model in the three formats that ``load_checkpoint`` reads.

* ``"hf"``: a Hugging Face directory (``config.json`` + ``model.safetensors``)
  that ``transformers.AutoModelForCausalLM.from_pretrained`` loads; q/k rows
  are permuted into Hugging Face's rotate-half layout on the way out.
* ``"meta"``: ``params.json`` + ``consolidated.NN.pth``, optionally cut into
  ``n_shards`` model-parallel shards exactly as Meta's released files are.
* ``"gguf"``: one llama.cpp file, float32 or float16 (norms stay float32, as
  llama.cpp writes them).

The tokenizer and chat template travel with the weights (:mod:`.tokenizer_export`).

Every format is written into a temporary sibling first and moved into place
when complete, so an interrupted save never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from .config import ffn_hidden_dim
from .gguf_format import meta_to_gguf_name
from .hf_format import config_to_hf, meta_to_hf_state_dict
from .meta_format import shard_dim
from .model import Llama
from .tokenizer_export import add_gguf_tokenizer, write_hf_tokenizer

FORMATS = ("hf", "meta", "gguf")


def _weights(model: Llama, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The model's tensors on the CPU in ``dtype``; a tied matrix appears once, as the embedding."""
    return {name: p.detach().to("cpu", dtype).contiguous() for name, p in model.named_parameters()}


def write_hf(model: Llama, directory: Path, dtype: torch.dtype = torch.float32) -> None:
    """Write ``config.json`` and ``model.safetensors`` of ``model`` into an existing ``directory``."""
    hf_config = {**config_to_hf(model.config), "torch_dtype": str(dtype).removeprefix("torch.")}
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    save_file(
        meta_to_hf_state_dict(_weights(model, dtype), model.config),
        directory / "model.safetensors",
        metadata={"format": "pt"},
    )


def meta_params(model: Llama) -> dict:
    """The ``params.json`` of a model. The FFN size is written out only when Meta's rule does not give it."""
    c = model.config
    params = {
        "dim": c.dim,
        "n_layers": c.n_layers,
        "n_heads": c.n_heads,
        "n_kv_heads": c.n_kv_heads,
        "vocab_size": c.vocab_size,
        "multiple_of": c.multiple_of,
        "ffn_dim_multiplier": c.ffn_dim_multiplier,
        "norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "max_seq_len": c.max_seq_len,
    }
    if ffn_hidden_dim(c.dim, c.multiple_of, c.ffn_dim_multiplier) != c.hidden_dim:
        params["hidden_dim"] = c.hidden_dim
    if c.head_dim != c.dim // c.n_heads:
        params["head_dim"] = c.head_dim
    if c.tie_embeddings:
        params["tie_embeddings"] = True
    return params


def _write_meta(model: Llama, directory: Path, dtype: torch.dtype, n_shards: int) -> None:
    c = model.config
    for field in ("n_heads", "n_kv_heads", "dim", "hidden_dim", "vocab_size"):
        if getattr(c, field) % n_shards != 0:
            raise ValueError(f"cannot split into {n_shards} shards: {field}={getattr(c, field)} is not divisible by it")
    (directory / "params.json").write_text(json.dumps(meta_params(model), indent=2) + "\n")
    weights = _weights(model, dtype)
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(n_shards)]
    for name, tensor in weights.items():
        dim = shard_dim(name)
        pieces = tensor.chunk(n_shards, dim=dim) if dim is not None else [tensor] * n_shards
        for shard, piece in zip(shards, pieces):
            shard[name] = piece.clone()  # a view would save the whole tensor
    for i, shard in enumerate(shards):
        torch.save(shard, directory / f"consolidated.{i:02d}.pth")


def _write_gguf(model: Llama, file: Path, dtype: torch.dtype, tokenizer=None, chat_template: str | None = None) -> None:
    from gguf import GGUFWriter

    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"GGUF export writes float32 or float16, got {dtype}")
    c = model.config
    writer = GGUFWriter(str(file), "llama")
    writer.add_name("llama-from-scratch model")
    writer.add_block_count(c.n_layers)
    writer.add_context_length(c.max_seq_len)
    writer.add_embedding_length(c.dim)
    writer.add_feed_forward_length(c.hidden_dim)
    writer.add_head_count(c.n_heads)
    writer.add_head_count_kv(c.n_kv_heads)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_vocab_size(c.vocab_size)
    writer.add_file_type(0 if dtype == torch.float32 else 1)
    if tokenizer is not None:
        add_gguf_tokenizer(writer, tokenizer, chat_template)
    # A tied model has no output.weight here: llama.cpp then reuses token_embd, as SmolLM2's file does.
    for name, tensor in _weights(model, torch.float32).items():
        array = tensor.numpy()
        if array.ndim == 2 and dtype == torch.float16:
            array = array.astype(np.float16)
        writer.add_tensor(meta_to_gguf_name(name), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def save_checkpoint(
    model: Llama,
    tokenizer,
    path: str | Path,
    format: str = "hf",
    chat_template: str | None = None,
    dtype: torch.dtype = torch.float32,
    n_shards: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` and its ``tokenizer`` to ``path``: a directory for "hf" and "meta", a ``.gguf`` file for "gguf".

    ``tokenizer`` (a :class:`SentencePieceTokenizer` or :class:`ByteLevelBPE`, or None for weights alone) and
    ``chat_template`` are written as the format expects (see :mod:`.tokenizer_export`), so that
    ``load_pretrained(path)`` gives back the model, the tokenizer and the template.
    """
    path = Path(path)
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if n_shards != 1 and format != "meta":
        raise ValueError("n_shards applies to the Meta format only")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        if format == "gguf":
            _write_gguf(model, staging / path.name, dtype, tokenizer, chat_template)
            (staging / path.name).replace(path)
        else:
            if format == "hf":
                write_hf(model, staging, dtype)
            else:
                _write_meta(model, staging, dtype, n_shards)
            if tokenizer is not None:
                write_hf_tokenizer(tokenizer, staging, chat_template)
            if path.exists():
                shutil.rmtree(path)
            staging.replace(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
