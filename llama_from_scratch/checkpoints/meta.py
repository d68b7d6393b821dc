"""Meta's original checkpoint format: ``params.json`` plus ``consolidated.NN.pth`` shards.

Meta trained and released LLaMA with *model parallelism*: every large matrix
was cut into N slices, one per GPU, and each ``consolidated.NN.pth`` file holds
one GPU's slices (N = 1 for 7B, 2 for 13B, 4 for 33B, 8 for 65B and 70B).
Loading on one machine glues the slices back together, and *which* dimension
to glue along depends on how the layer was split:

* **column-parallel** layers (``wq``, ``wk``, ``wv``, ``w1``, ``w3``,
  ``output``) split their *output* features: concatenate along dim 0;
* **row-parallel** layers (``wo``, ``w2``) split their *input* features:
  concatenate along dim 1;
* the **parallel embedding** (``tok_embeddings``) splits the embedding
  dimension: concatenate along dim 1;
* norms are small and copied to every GPU: take any one.

``params.json`` holds the hyper-parameters under this package's own names.
This module reads such a directory (:func:`read_meta_checkpoint`) and writes
one (:func:`write_meta`), cut into as many shards as asked for.
The ``.pth`` files are Python pickles; they are read with
``torch.load(weights_only=True)``, which refuses anything but tensors and
plain containers, so a malicious file cannot run code.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path

import torch

from ..config import LlamaConfig, ffn_hidden_dim
from ..errors import FormatError
from .hf import read_json

COLUMN_PARALLEL = (
    "attention.wq.weight",
    "attention.wk.weight",
    "attention.wv.weight",
    "feed_forward.w1.weight",
    "feed_forward.w3.weight",
    "output.weight",
)
ROW_PARALLEL = ("attention.wo.weight", "feed_forward.w2.weight", "tok_embeddings.weight")


def shard_dim(name: str) -> int | None:
    """The dimension along which Meta split tensor ``name`` across GPUs (None: replicated)."""
    if name.endswith(COLUMN_PARALLEL):
        return 0
    if name.endswith(ROW_PARALLEL):
        return 1
    return None


def meta_shards(directory: Path) -> list[Path]:
    """``consolidated.00.pth``, ``consolidated.01.pth``, ... in order."""
    shards = sorted(directory.glob("consolidated.*.pth"))
    if not shards:
        raise FileNotFoundError(f"{directory}: params.json but no consolidated.*.pth files")
    expected = [directory / f"consolidated.{i:02d}.pth" for i in range(len(shards))]
    if shards != expected:
        raise FormatError(
            f"{directory}: shards must be consolidated.00.pth ... consolidated.{len(shards) - 1:02d}.pth, "
            f"found {', '.join(p.name for p in shards)}"
        )
    return shards


def load_shard(path: Path) -> dict[str, torch.Tensor]:
    """One shard's tensors, memory-mapped, without executing any code from the pickle."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            # A file in PyTorch's legacy (pre-1.6) format cannot be memory-mapped: read it whole.
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise FormatError(f"{path}: refused to load: the file is not plain tensors ({error})") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise FormatError(f"{path}: not a readable PyTorch checkpoint ({error})") from None


def read_meta_config(directory: Path, vocab_size: int | None = None) -> LlamaConfig:
    """Read ``params.json``. LLaMA 1 stores ``vocab_size: -1``; pass the real size (from the embedding)."""
    path = directory / "params.json"
    params = read_json(path)
    known = set(LlamaConfig.__dataclass_fields__)
    unknown = sorted(set(params) - known)
    if unknown:
        raise FormatError(f"{path}: unknown field(s) {', '.join(unknown)}")
    if params.get("vocab_size", -1) <= 0:
        params["vocab_size"] = vocab_size
    params.setdefault("max_seq_len", 4096)  # not recorded by Meta: Llama 2's context
    try:
        return LlamaConfig(**params)
    except (TypeError, ValueError) as error:
        raise FormatError(f"{path}: {error}") from None


def read_meta_checkpoint(directory: Path) -> tuple[LlamaConfig, Iterator[tuple[str, str, torch.Tensor]]]:
    """The config and the merged tensors of a Meta checkpoint directory."""
    shards = meta_shards(directory)
    states = [load_shard(path) for path in shards]
    embedding = states[0].get("tok_embeddings.weight")
    config = read_meta_config(directory, vocab_size=embedding.shape[0] if embedding is not None else None)

    def tensors() -> Iterator[tuple[str, str, torch.Tensor]]:
        names = list(states[0])
        for path, state in zip(shards[1:], states[1:]):
            if list(state) != names:
                diff = sorted(set(names) ^ set(state))[:3]
                raise FormatError(f"{path}: holds different tensors from {shards[0].name} (e.g. {diff})")
        for name in names:
            if name == "rope.freqs":
                continue  # RoPE frequencies: recomputed from the config
            dim = shard_dim(name)
            slices = [state[name] for state in states]
            merged = slices[0] if dim is None or len(slices) == 1 else torch.cat(slices, dim=dim)
            yield shards[0].name if len(shards) == 1 else f"{shards[0].name}..{shards[-1].name}", name, merged

    return config, tensors()


def meta_params(config: LlamaConfig) -> dict:
    """The ``params.json`` of a model. The FFN size is written out only when Meta's rule does not give it."""
    c = config
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


def write_meta(config: LlamaConfig, weights: dict[str, torch.Tensor], directory: Path, n_shards: int = 1) -> None:
    """Write ``params.json`` and ``n_shards`` files ``consolidated.NN.pth``, each holding one GPU's slices."""
    for field in ("n_heads", "n_kv_heads", "dim", "hidden_dim", "vocab_size"):
        if getattr(config, field) % n_shards != 0:
            raise ValueError(
                f"cannot split into {n_shards} shards: {field}={getattr(config, field)} is not divisible by it"
            )
    (directory / "params.json").write_text(json.dumps(meta_params(config), indent=2) + "\n")
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(n_shards)]
    for name, tensor in weights.items():
        dim = shard_dim(name)
        pieces = tensor.chunk(n_shards, dim=dim) if dim is not None else [tensor] * n_shards
        for shard, piece in zip(shards, pieces):
            shard[name] = piece.clone()  # a view would save the whole tensor
    for i, shard in enumerate(shards):
        torch.save(shard, directory / f"consolidated.{i:02d}.pth")
