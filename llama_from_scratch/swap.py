"""Changing a model from the outside: swap some of its layers for others, in place.

``model.py`` is written once, with plain ``nn.Linear`` and ``nn.Embedding`` layers, and knows nothing
of what later chapters do to it. Quantization (chapter 09) puts a layer holding 8- or 4-bit codes where
each ``nn.Linear`` was; LoRA (chapter 10) wraps chosen linears in a layer that adds a trainable low-rank
update; both can be undone, back to plain layers. Each is one call of :func:`swap_layers`: walk the
model's modules by name, and wherever ``replace(name, module)`` returns a new layer, put it in that
module's place (gpt-fast's ``replace_linear_weight_only_int8_per_channel`` and PEFT's
``_create_and_replace`` do the same). The model's forward pass is untouched: ``self.wq(x)`` calls
whatever layer now sits under ``wq``, as long as it maps ``(..., in_features) -> (..., out_features)``.

Two rules make a swap safe to call on a model one cares about:

* every new layer is built before any is put in place, so an error while building one (a bad setting,
  a weight that cannot be quantized) leaves the model exactly as it was. A conversion that cannot fail
  halfway and replaces big weights by new big weights (merging LoRA, dequantizing) asks for
  ``one_at_a_time`` instead: each layer is swapped as soon as it is built, so the one it replaces can be
  freed before the next is built, and memory never holds the old model and the new one side by side;
* a module inside one being replaced is not visited: it goes with its parent (a LoRA wrapper's
  ``base`` belongs to the wrapper).

What each new layer is, and with which settings, is the business of its own class (its constructor,
``from_weight``, ``settings()``): this module only finds the places and swaps. Going back to plain
layers is :func:`plain_layer`: a new ``nn.Linear`` / ``nn.Embedding`` around an existing weight.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def swap_layers(
    model: nn.Module, replace: Callable[[str, nn.Module], nn.Module | None], one_at_a_time: bool = False
) -> dict[str, nn.Module]:
    """Put ``replace(name, module)`` in place of each module of ``model`` for which it is not ``None``.

    ``name`` is the module's dotted name (``layers.3.attention.wq``); ``replace`` returns the new layer,
    or ``None`` to leave the module as it is. All new layers are built first, then swapped in, so a
    ``replace`` that raises changes nothing; with ``one_at_a_time`` each is swapped in at once (the
    memory of the layer it replaces is free for the next). The modules inside a replaced one are not
    offered. Returns the new layers by name, in the model's order.
    """
    names = [name for name, _ in model.named_modules() if name]  # names only: no reference keeps an old layer alive
    replacements: dict[str, nn.Module] = {}
    for name in names:
        if any(name.startswith(parent + ".") for parent in replacements):
            continue  # a part of a module already replaced
        new = replace(name, model.get_submodule(name))
        if new is not None:
            replacements[name] = new
            if one_at_a_time:
                model.set_submodule(name, new)
    if not one_at_a_time:
        for name, new in replacements.items():
            model.set_submodule(name, new)
    return replacements


def plain_layer(weight: torch.Tensor, embedding: bool = False) -> nn.Linear | nn.Embedding:
    """A frozen ``nn.Linear`` without bias (or, with ``embedding``, an ``nn.Embedding``) holding ``weight``
    ``(out_features, in_features)`` (a table: ``(vocab_size, dim)``) itself, not a copy: built on the
    ``meta`` device, so that no memory is allocated for a weight that is then replaced."""
    rows, columns = weight.shape
    if embedding:
        layer = nn.Embedding(rows, columns, device="meta")
    else:
        layer = nn.Linear(columns, rows, bias=False, device="meta")
    layer.weight = nn.Parameter(weight, requires_grad=False)
    return layer
