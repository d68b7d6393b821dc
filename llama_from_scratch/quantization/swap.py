"""Quantize a model from the outside: swap its ``nn.Linear`` modules for quantized ones.

``model.py`` knows nothing of quantization. :func:`quantize` walks the model, and each selected
``nn.Linear`` (``wq wk wv wo`` of every ``layers.N.attention``, ``w1 w2 w3`` of every
``layers.N.feed_forward``; on request ``output`` and ``tok_embeddings``) is replaced, in place, by a
:class:`~.linear.QuantizedLinear` holding its quantized weight (gpt-fast's ``WeightOnlyInt8QuantHandler``
does the same). :func:`dequantize` swaps back, to plain layers holding the dequantized float32 weights:
the model that the quantized one computes, in the form every other tool understands.

The embedding and the output head stay in floating point by default: they are the layers most
sensitive to quantization (llama.cpp keeps them at higher precision in its mixed formats). With
``tie_embeddings`` (SmolLM2) they are one matrix: asking for either quantizes that matrix once, and
the two modules share its codes and scales (:meth:`~llama_from_scratch.model.Llama.tie_weights`), so
the model stays tied and the head, a fifth of SmolLM2's weights, is read in 4 or 8 bits too.
"""

from __future__ import annotations

import torch
from torch import nn

from .int4 import Int4Embedding, Int4Linear
from .int8 import Int8Embedding, Int8Linear
from .linear import QuantizedEmbedding, QuantizedLinear

# scheme name -> (linear class, embedding class, fixed settings); group_size is added for int4
SCHEMES: dict[str, tuple[type[QuantizedLinear], type[QuantizedLinear], dict]] = {
    "int8": (Int8Linear, Int8Embedding, {}),
    "int4": (Int4Linear, Int4Embedding, {"symmetric": False}),
    "int4-sym": (Int4Linear, Int4Embedding, {"symmetric": True}),
}


def scheme_of(layer: QuantizedLinear) -> str:
    """The :data:`SCHEMES` name of a quantized layer (``"int4-sym"`` for a symmetric :class:`Int4Linear`)."""
    if isinstance(layer, Int4Linear) and layer.symmetric:
        return "int4-sym"
    return layer.scheme


def layer_class(scheme: str, embedding: bool = False) -> tuple[type[QuantizedLinear], dict]:
    """The class and fixed settings of ``scheme``, for a linear layer or an embedding table."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    linear, table, settings = SCHEMES[scheme]
    return (table if embedding else linear), dict(settings)


def selected_names(model: nn.Module, include_embeddings: bool, include_output: bool) -> list[str]:
    """The names of the modules :func:`quantize` replaces, in the model's order."""
    names = []
    for name, module in model.named_modules():
        if name == "tok_embeddings":
            if include_embeddings:
                names.append(name)
        elif name == "output":
            if include_output:
                names.append(name)
        elif isinstance(module, nn.Linear):
            names.append(name)
    return names


def quantize(
    model: nn.Module,
    scheme: str = "int8",
    group_size: int = 64,
    include_embeddings: bool = False,
    include_output: bool = False,
) -> nn.Module:
    """Replace the linear layers of ``model`` in place by quantized ones; returns ``model``.

    ``scheme``: ``"int8"`` (per output channel), ``"int4"`` (group-wise, scale and minimum) or
    ``"int4-sym"`` (group-wise, scale only); ``group_size`` (32, 64 or 128) applies to the int4 schemes.
    In a model whose output head is tied to its embedding, ``include_embeddings`` and ``include_output``
    both mean "the shared matrix": it is quantized once and both modules use it.
    """
    config = getattr(model, "config", None)
    tied = getattr(config, "tie_embeddings", False)
    if tied:
        include_embeddings = include_output = include_embeddings or include_output
    layer_class(scheme)  # an unknown scheme fails before anything is changed
    replacements = {}
    for name in selected_names(model, include_embeddings, include_output):  # all built before any swap
        module = model.get_submodule(name)
        cls, settings = layer_class(scheme, embedding=isinstance(module, nn.Embedding))
        if cls is Int4Linear or cls is Int4Embedding:
            settings["group_size"] = group_size
        if tied and name == "output":  # an empty layer: tie_weights below gives it the embedding's tensors
            with torch.device("meta"):
                replacements[name] = cls(module.in_features, module.out_features, **settings)
            continue
        try:
            replacements[name] = cls.from_weight(module.weight, **settings)
        except ValueError as error:
            raise ValueError(f"cannot quantize {name!r} ({scheme}): {error}") from None
    for name, layer in replacements.items():
        model.set_submodule(name, layer)
    if tied and include_output:
        model.tie_weights()
    return model


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLinear]:
    """Every quantized layer of ``model`` by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}


@torch.no_grad()
def dequantize(model: nn.Module) -> nn.Module:
    """Replace every quantized layer in place by a plain ``nn.Linear`` / ``nn.Embedding`` holding its
    dequantized float32 weight; returns ``model``. With float32 activations its logits are those of the
    quantized model, bit for bit: both multiply the same inputs by the same float32 matrix with the same kernel."""
    for name, layer in quantized_layers(model).items():
        weight = nn.Parameter(layer.dequantize(), requires_grad=False)
        if isinstance(layer, QuantizedEmbedding):
            plain = nn.Embedding(layer.out_features, layer.in_features, device="meta")
        else:
            plain = nn.Linear(layer.in_features, layer.out_features, bias=False, device="meta")
        plain.weight = weight
        model.set_submodule(name, plain)
    if getattr(getattr(model, "config", None), "tie_embeddings", False):
        model.tie_weights()  # one dequantized matrix again, not two equal copies
    return model
