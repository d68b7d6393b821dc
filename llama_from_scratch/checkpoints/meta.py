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

``params.json`` holds the hyper-parameters under this package's own names
(Llama 3.1's RoPE scaling as the flag ``use_scaled_rope``).
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
from ..files import json_field, read_json, regular_file
from ..rope_scaling import meta_llama3_scaling
from .names import META_ROPE_FREQS, check_config_fits

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
    regular_file(path)
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            # A file in PyTorch's legacy (pre-1.6) format cannot be memory-mapped: read it whole.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise FormatError(f"{path}: refused to load: the file is not plain tensors ({error})") from None
    except MemoryError:
        raise
    except Exception as error:  # a damaged file makes torch.load raise many types (zip, pickle, storage errors)
        raise FormatError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict):
        raise FormatError(f"{path}: expected a dict of tensors by name, got {type(state).__name__}")
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise FormatError(
                f"{path}: expected a dict of tensors by name, got {type(tensor).__name__} under {name!r:.60}"
            )
    return state


# params.json's fields are LlamaConfig's: (kind, may be null) from the dataclass's annotations ("int | None"),
# except RoPE scaling, which Meta writes as a flag (below).
PARAMS_FIELDS = {
    name: (field.type.split(" | ")[0], "None" in field.type)
    for name, field in LlamaConfig.__dataclass_fields__.items()
    if name != "rope_scaling"
}
# Llama 3.1's params.json says "use_scaled_rope": true, and Meta's code applies llama3 scaling with fixed
# bounds and factor 8; Meta's llama-models code reads another factor (3.2's 32) from "rope_scaling_factor".
SCALING_FIELDS = {"use_scaled_rope": "bool", "rope_scaling_factor": "float"}
DEFAULT_SCALING_FACTOR = 8.0


def read_meta_config(directory: Path, vocab_size: int | None = None) -> LlamaConfig:
    """Read ``params.json``. LLaMA 1 stores ``vocab_size: -1``; pass the real size (from the embedding)."""
    path = directory / "params.json"
    params = read_json(path)
    unknown = sorted(set(params) - set(PARAMS_FIELDS) - set(SCALING_FIELDS))
    if unknown:
        raise FormatError(f"{path}: unknown field(s) {', '.join(unknown)}")
    for name, (kind, nullable) in PARAMS_FIELDS.items():
        json_field(params, name, kind, path, nullable=nullable)
    scaled = json_field(params, "use_scaled_rope", "bool", path, False, nullable=True)
    factor = json_field(params, "rope_scaling_factor", "float", path, None, nullable=True)
    if factor is not None and not scaled:
        raise FormatError(f"{path}: rope_scaling_factor is {factor}, but use_scaled_rope is not true")
    params = {k: v for k, v in params.items() if k not in SCALING_FIELDS}
    if scaled:
        try:
            params["rope_scaling"] = meta_llama3_scaling(float(factor or DEFAULT_SCALING_FACTOR))
        except ValueError as error:
            raise FormatError(f"{path}: rope_scaling_factor: {error}") from None
    if params.get("vocab_size", -1) <= 0:
        params["vocab_size"] = vocab_size
    # not recorded by Meta: Llama 2's context, or Llama 3.1's
    params.setdefault("max_seq_len", 131072 if scaled else 4096)
    try:
        return LlamaConfig(**params)
    except (TypeError, ValueError) as error:
        raise FormatError(f"{path}: {error}") from None


def merged_shapes(shards: list[Path], states: list[dict[str, torch.Tensor]]) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor once its slices are joined, after checking that the shards fit together.

    Every shard must hold the same tensors, and the slices of one tensor the same shape except along the
    dimension it was split on (:func:`shard_dim`); replicated tensors (norms) the same shape.
    """
    first = states[0]
    shapes = {name: tuple(tensor.shape) for name, tensor in first.items()}
    for path, state in zip(shards[1:], states[1:]):
        if list(state) != list(first):
            diff = sorted(set(first) ^ set(state))[:3]
            raise FormatError(f"{path}: holds different tensors from {shards[0].name} (e.g. {diff})")
        for name, tensor in state.items():
            dim, shape, want = shard_dim(name), tuple(tensor.shape), tuple(first[name].shape)
            fits = len(shape) == len(want) and all(a == b for k, (a, b) in enumerate(zip(shape, want)) if k != dim)
            if not fits or (dim is not None and len(shape) <= dim):
                along = f" except along dimension {dim}" if dim is not None else ""
                raise FormatError(
                    f"{path}: tensor {name!r} has shape {shape}, which does not match {shards[0].name}'s {want}{along}"
                )
            if dim is not None:
                shapes[name] = (*shapes[name][:dim], shapes[name][dim] + shape[dim], *shapes[name][dim + 1 :])
    return shapes


def merge_shards(name: str, shards: list[torch.Tensor]) -> torch.Tensor:
    """Tensor ``name`` whole again from its slices, one per model-parallel shard (in the shards' order).

    A sliced tensor is joined along the dimension it was split on (:func:`shard_dim`); a replicated one
    (a norm's gain) is the same in every shard, and the first shard's is it.
    """
    dim = shard_dim(name)
    return shards[0] if dim is None or len(shards) == 1 else torch.cat(shards, dim=dim)


def read_meta_checkpoint(directory: Path) -> tuple[LlamaConfig, Iterator[tuple[str, str, torch.Tensor]]]:
    """The config and the merged tensors of a Meta checkpoint directory."""
    shards = meta_shards(directory)
    states = [load_shard(path) for path in shards]
    shapes = merged_shapes(shards, states)
    embedding = shapes.get("tok_embeddings.weight")
    config = read_meta_config(directory, vocab_size=embedding[0] if embedding else None)
    check_config_fits(config, shapes, directory / "params.json", {f: f for f in ("n_layers", "vocab_size", "dim")})

    def tensors() -> Iterator[tuple[str, str, torch.Tensor]]:
        for name in states[0]:
            if name == META_ROPE_FREQS:
                continue  # RoPE frequencies: recomputed from the config
            merged = merge_shards(name, [state[name] for state in states])
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
    if c.rope_scaling is not None:
        if c.rope_scaling != meta_llama3_scaling(c.rope_scaling.factor):
            raise ValueError(
                "params.json records only Llama 3.1's RoPE scaling (use_scaled_rope: llama3 with low_freq_factor 1, "
                f"high_freq_factor 4, original context 8192), got {c.rope_scaling}"
            )
        params["use_scaled_rope"] = True
        if c.rope_scaling.factor != DEFAULT_SCALING_FACTOR:
            params["rope_scaling_factor"] = c.rope_scaling.factor
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
