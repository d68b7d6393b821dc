"""A quantized model on disk: one safetensors file, integers and scales as they are, plus a JSON header.

The fourth format of :func:`.save.save_checkpoint` (``format="quantized"``): a model quantized by
:func:`~llama_from_scratch.quantization.quantize`, saved without dequantizing. A checkpoint directory holds
``config.json`` (as :mod:`.hf` writes it), the tokenizer and :data:`QUANTIZED_WEIGHTS`.

safetensors stores named tensors of any dtype (int8, uint8, float32, ...) and a string-to-string
metadata map; nothing else is needed. The file holds:

* every tensor of the quantized model's ``state_dict`` under its own name: for a quantized layer
  ``layers.0.attention.wq.qweight`` (int8, or uint8 with two 4-bit codes per byte),
  ``layers.0.attention.wq.scales`` (float32) and, for asymmetric int4, ``...wq.mins``; the layers
  left in floating point (norms, embedding, output head) as usual ``...weight``;
* in the metadata, under ``"llama_from_scratch.quantization"``, a JSON header saying how each
  quantized layer was made, which the tensors alone cannot tell (is a uint8 matrix int4 with group
  size 32 or 64? symmetric or not?)::

      {"version": 1,
       "layers": {"layers.0.attention.wq": {"scheme": "int4", "group_size": 64}, ...}}

:func:`load_quantized` reads the header first, checks the config against the tensors the file lists
(:func:`.names.check_config_fits`, as for every format: a ``config.json`` claiming 100,000 layers is refused
before a model of that size is built), builds the model on the ``meta`` device with those
layers swapped in (empty, right shapes and dtypes), then fills it through
:func:`.tensors.assemble`, which checks every tensor's name, shape and
dtype against that model: a truncated tensor, a wrong dtype or a header whose group size does not
match the tensors is an error naming the tensor. Nothing is dequantized on the way: the loaded
buffers equal the saved ones bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..config import LlamaConfig
from ..errors import FormatError
from ..files import parse_json, regular_file
from ..model import Llama
from ..quantization.swap import layer_from_entry, quantized_layers, scheme_entry
from ..swap import swap_layers
from .atomic import atomic_write
from .names import check_config_fits
from .tensors import assemble, model_tensors

QUANTIZED_WEIGHTS = "quantized.safetensors"  # a quantized model's directory: config.json + this (format="quantized")
HEADER_KEY = "llama_from_scratch.quantization"
VERSION = 2  # 2: int4 codes paired inside each group (code j with j + group_size/2); 1 paired neighbours


def quantization_header(model: nn.Module) -> dict:
    """The JSON header for ``model``: each quantized layer's scheme and settings (:func:`~.swap.scheme_entry`)."""
    layers = {name: scheme_entry(layer) for name, layer in quantized_layers(model).items()}
    return {"version": VERSION, "layers": layers}


def save_quantized(model: Llama, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` (quantized by :func:`~..quantization.swap.quantize`) to the safetensors file ``path``.

    ``dtype`` converts the layers left in floating point (norms, an unquantized embedding); integer codes and
    their float32 scales are written as they are, atomically. In a checkpoint directory the file is
    :data:`QUANTIZED_WEIGHTS` (``save_checkpoint(model, tokenizer, path, format="quantized")`` writes config
    and tokenizer beside it).
    """
    path = Path(path)
    metadata = {"format": "pt", HEADER_KEY: json.dumps(quantization_header(model))}
    with atomic_write(path) as file:
        save_file(model_tensors(model, dtype), str(file), metadata=metadata)
    return path


def read_header(path: Path, metadata: dict[str, str] | None) -> dict[str, dict]:
    """The ``layers`` of a file's quantization header, each entry a dict with a ``scheme`` (the settings are
    checked by the layers built from them, :func:`quantized_skeleton`)."""
    if not metadata or HEADER_KEY not in metadata:
        raise FormatError(f"{path}: no {HEADER_KEY!r} entry in the safetensors metadata: not a quantized model file")
    header = parse_json(metadata[HEADER_KEY], f"{path}: the quantization header")
    if header.get("version") != VERSION or not isinstance(header.get("layers"), dict):
        raise FormatError(f"{path}: the quantization header must be {{'version': {VERSION}, 'layers': {{...}}}}")
    for name, entry in header["layers"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("scheme"), str):
            raise FormatError(f"{path}: layer {name!r} in the quantization header has no 'scheme'")
    return header["layers"]


def quantized_skeleton(config: LlamaConfig, layers: dict[str, dict], path: Path) -> Llama:
    """``Llama(config)`` on the ``meta`` device with the header's layers swapped for empty quantized ones."""
    with torch.device("meta"):
        model = Llama(config)
    modules = dict(model.named_modules())
    for name in layers:
        if not name or not isinstance(modules.get(name), (nn.Linear, nn.Embedding)):
            raise FormatError(f"{path}: the quantization header names {name!r}, not a linear layer of this model")

    def empty(name: str, module: nn.Module) -> nn.Module | None:
        if name not in layers:
            return None
        try:
            return layer_from_entry(layers[name], *module.weight.shape, embedding=isinstance(module, nn.Embedding))
        except ValueError as error:
            raise FormatError(f"{path}: layer {name!r} in the quantization header: {error}") from None

    with torch.device("meta"):
        swap_layers(model, empty)
    if config.tie_embeddings and layers.get("tok_embeddings") != layers.get("output"):
        raise FormatError(
            f"{path}: this config ties the output head to the embedding, but the quantization header gives them "
            f"different settings (tok_embeddings: {layers.get('tok_embeddings')}, output: {layers.get('output')})"
        )
    return model


def load_quantized(
    path: str | Path,
    config: LlamaConfig,
    device: torch.device | str | None = "cpu",
    dtype: torch.dtype | None = None,
    config_fields: dict[str, str] | None = None,
) -> Llama:
    """Load a model written by :func:`save_quantized`; ``dtype`` applies to its floating-point tensors
    (default: float32 on the CPU; scales are float32 in any case). ``config_fields``: the names of
    ``n_layers``, ``vocab_size`` and ``dim`` in the config's file, for the message of a config that does not
    fit the tensors."""
    path = regular_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            layers = read_header(path, f.metadata())
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
            fields = config_fields or {"n_layers": "n_layers", "vocab_size": "vocab_size", "dim": "dim"}
            check_config_fits(config, shapes, path.parent / "config.json", fields)
            model = quantized_skeleton(config, layers, path)
            tensors = ((str(path), name, f.get_tensor(name)) for name in f.keys())
            description = f"loading {path.name}"
            return assemble(config, tensors, device, dtype, model=model, description=description, source=str(path))
    except SafetensorError as error:
        raise FormatError(f"{path}: not a readable safetensors file ({error})") from None
