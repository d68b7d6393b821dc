"""Quantize a model from the outside: swap its ``nn.Linear`` modules for quantized ones.

``model.py`` knows nothing of quantization. :func:`quantize` walks the model with the package's one
swap (:func:`llama_from_scratch.swap.swap_layers`, which LoRA uses too), and each selected ``nn.Linear``
(``wq wk wv wo`` of every ``layers.N.attention``, ``w1 w2 w3`` of every ``layers.N.feed_forward``; on
request ``output`` and ``tok_embeddings``) is replaced, in place, by a :class:`~.linear.QuantizedLinear`
holding its quantized weight (gpt-fast's ``WeightOnlyInt8QuantHandler`` does the same). :func:`dequantize`
swaps back, to plain layers holding the dequantized float32 weights: the model that the quantized one
computes, in the form every other tool understands.

A scheme's name (:data:`SCHEMES`) picks a layer class and fixes some of its settings (``"int4-sym"``:
:class:`~.int4.Int4Linear` with ``symmetric=True``); the caller chooses the others (``group_size``). Which
settings a class has, it says itself (``setting_names``, ``settings()``), so nothing here tests for int4.

The embedding and the output head stay in floating point by default: they are the layers most
sensitive to quantization (llama.cpp keeps them at higher precision in its mixed formats). With
``tie_embeddings`` (SmolLM2) they are one matrix: asking for either quantizes that matrix once, and
the two modules share its codes and scales (:meth:`~llama_from_scratch.model.Llama.tie_weights`), so
the model stays tied and the head, a fifth of SmolLM2's weights, is read in 4 or 8 bits too.
"""

from __future__ import annotations

import torch
from torch import nn

from ..swap import plain_layer, swap_layers
from .int4 import Int4Embedding, Int4Linear
from .int8 import Int8Embedding, Int8Linear
from .linear import QuantizedEmbedding, QuantizedLinear

# scheme name -> (linear class, embedding class, the settings the name fixes); a class's other settings
# (its setting_names: group_size for int4) are chosen by the caller of quantize()
SCHEMES: dict[str, tuple[type[QuantizedLinear], type[QuantizedLinear], dict]] = {
    "int8": (Int8Linear, Int8Embedding, {}),
    "int4": (Int4Linear, Int4Embedding, {"symmetric": False}),
    "int4-sym": (Int4Linear, Int4Embedding, {"symmetric": True}),
}


def scheme_of(layer: QuantizedLinear) -> str:
    """The :data:`SCHEMES` name of a quantized layer: the scheme of its class whose fixed settings it has
    (``"int4-sym"`` for a symmetric :class:`Int4Linear`)."""
    for name, (linear, table, fixed) in SCHEMES.items():
        if type(layer) in (linear, table) and fixed.items() <= layer.settings().items():
            return name
    raise ValueError(f"{type(layer).__name__} with settings {layer.settings()} belongs to no scheme of {list(SCHEMES)}")


def layer_class(scheme: str, embedding: bool = False, **chosen) -> tuple[type[QuantizedLinear], dict]:
    """The class of ``scheme``'s layers (for a linear layer or an embedding table) and the settings to build
    one with: those of ``chosen`` that the class has (``group_size`` for int4, none for int8), and those the
    scheme's name fixes."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    linear, table, fixed = SCHEMES[scheme]
    cls = table if embedding else linear
    return cls, {**{k: v for k, v in chosen.items() if k in cls.setting_names}, **fixed}


def scheme_entry(layer: QuantizedLinear) -> dict:
    """How to rebuild ``layer`` empty: its scheme's name and the settings the name leaves open
    (``{"scheme": "int4", "group_size": 64}``), as a saved header stores it."""
    scheme = scheme_of(layer)
    fixed = SCHEMES[scheme][2]
    return {"scheme": scheme, **{k: v for k, v in layer.settings().items() if k not in fixed}}


def layer_from_entry(entry: dict, out_features: int, in_features: int, embedding: bool = False) -> QuantizedLinear:
    """An empty layer (on the current default device) as :func:`scheme_entry` described it; a ``ValueError``
    names a missing or unexpected setting, and the layer's own constructor refuses a bad value."""
    cls, fixed = layer_class(entry["scheme"], embedding)
    open_settings = [k for k in cls.setting_names if k not in fixed]
    missing = [k for k in open_settings if k not in entry]
    unexpected = sorted(entry.keys() - {"scheme", *open_settings})
    if missing or unexpected:
        raise ValueError(
            f"scheme {entry['scheme']!r} takes the settings {open_settings}; missing {missing}, unexpected {unexpected}"
        )
    return cls(in_features, out_features, **fixed, **{k: entry[k] for k in open_settings})


def selected(name: str, module: nn.Module, include_embeddings: bool, include_output: bool) -> bool:
    """Whether :func:`quantize` replaces the module ``name``: every linear layer of the blocks, and the
    embedding and output head when asked."""
    if name == "tok_embeddings":
        return include_embeddings
    if name == "output":
        return include_output
    return isinstance(module, nn.Linear)


def quantize(
    model: nn.Module,
    scheme: str = "int8",
    group_size: int = 64,
    include_embeddings: bool = False,
    include_output: bool = False,
) -> nn.Module:
    """Replace the linear layers of ``model`` in place by quantized ones; returns ``model``.

    ``scheme``: ``"int8"`` (per output channel), ``"int4"`` (group-wise, scale and minimum) or
    ``"int4-sym"`` (group-wise, scale only); ``group_size`` (32, 64 or 128) applies to the schemes whose
    layers have one (int4). In a model whose output head is tied to its embedding, ``include_embeddings``
    and ``include_output`` both mean "the shared matrix": it is quantized once and both modules use it.
    A weight that cannot be quantized is an error naming its layer, and leaves the model unchanged.
    """
    config = getattr(model, "config", None)
    tied = getattr(config, "tie_embeddings", False)
    if tied:
        include_embeddings = include_output = include_embeddings or include_output
    layer_class(scheme)  # an unknown scheme fails before anything is changed

    def quantized(name: str, module: nn.Module) -> QuantizedLinear | None:
        if not selected(name, module, include_embeddings, include_output):
            return None
        cls, settings = layer_class(scheme, isinstance(module, nn.Embedding), group_size=group_size)
        if tied and name == "output":  # an empty layer: tie_weights below gives it the embedding's tensors
            with torch.device("meta"):
                return cls(module.in_features, module.out_features, **settings)
        try:
            return cls.from_weight(module.weight, **settings)
        except ValueError as error:
            raise ValueError(f"cannot quantize {name!r} ({scheme}): {error}") from None

    swap_layers(model, quantized)
    if tied and include_output:
        model.tie_weights()
    return model


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLinear]:
    """Every quantized layer of ``model`` by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}


@torch.no_grad()
def dequantize(model: nn.Module) -> nn.Module:
    """Replace every quantized layer in place by a plain ``nn.Linear`` / ``nn.Embedding`` holding its
    dequantized float32 weight; returns ``model``. Its logits are the quantized model's: bit for bit for int4
    with float32 activations (both multiply the same inputs by the same float32 matrix with the same kernel);
    for int8, which scales its outputs rather than its weights, up to float32 rounding."""

    def plain(name: str, module: nn.Module) -> nn.Module | None:
        if not isinstance(module, QuantizedLinear):
            return None
        return plain_layer(module.dequantize(), embedding=isinstance(module, QuantizedEmbedding))

    swap_layers(model, plain, one_at_a_time=True)
    if getattr(getattr(model, "config", None), "tie_embeddings", False):
        model.tie_weights()  # one dequantized matrix again, not two equal copies
    return model
