"""LoRA (Hu et al., 2021): fine-tune a few million numbers instead of the whole model.

Fine-tuning changes each weight matrix ``W`` (``(out, in)``) by some ``ΔW``. LoRA's bet is that the
useful ``ΔW`` has low rank, so it learns it as a product of two thin matrices::

    ΔW = (alpha / rank) * B @ A        B: (out, rank)   A: (rank, in)

    y = x @ W.T  +  (alpha / rank) * (x @ A.T) @ B.T

``W`` stays frozen; only ``A`` and ``B`` train: ``rank * (in + out)`` numbers instead of ``in * out``
(for SmolLM2's ``wq``, 576 x 576, at rank 8: 9,216 instead of 331,776). ``B`` starts at zero, so at
step 0 the model is exactly the base model, and ``A`` starts random, so the gradient of ``B`` is not
zero. ``alpha / rank`` keeps the size of the update independent of the rank (halving the rank doubles
the scale), so one learning rate serves every rank.

The model itself knows nothing of LoRA: :func:`add_lora` swaps the chosen linear layers for
:class:`LoRALinear` wrappers from outside, with the package's one swap
(:func:`llama_from_scratch.swap.swap_layers`, which quantization uses too), and :func:`merge_lora` folds
``ΔW`` into ``W`` and swaps plain layers back, after which the model costs nothing extra at inference.
:func:`adapters_disabled` switches the adapters off for a while without removing them: the base model,
which is DPO's reference (:mod:`.dpo`), with no second copy of the weights. The wrapped layer may itself be quantized
(:class:`~llama_from_scratch.quantization.linear.QuantizedLinear`): that is QLoRA (Dettmers et al., 2023),
a frozen 4-bit base under trainable float adapters.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..errors import is_finite_number, is_float32, is_int
from ..quantization.linear import QuantizedLinear
from ..swap import plain_layer, swap_layers

# Meta's names of the linear layers inside every block; LoRA may wrap any of them.
LORA_TARGETS: tuple[str, ...] = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


class LoRALinear(nn.Module):
    """A frozen linear layer ``base`` plus a trainable low-rank update ``(alpha / rank) * B @ A``.

    ``base`` is an ``nn.Linear`` without bias or a :class:`QuantizedLinear`; ``lora_A`` is
    ``(rank, in_features)``, ``lora_B`` ``(out_features, rank)`` (PEFT's shapes and names).
    ``dropout`` applies to the adapter's input only, as in the paper's code. The adapters are float32
    whatever the base's type: Adam's small updates would vanish in bfloat16's 8-bit mantissa.
    """

    def __init__(self, base: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, (nn.Linear, QuantizedLinear)):
            raise TypeError(f"LoRALinear wraps an nn.Linear or a QuantizedLinear, got {type(base).__name__}")
        if getattr(base, "bias", None) is not None:
            raise ValueError("LoRALinear: this linear has a bias; LLaMA's have none, and it is not supported")
        if not is_int(rank) or rank < 1:
            raise ValueError(f"LoRA rank must be an int of at least 1, got {rank!r}")
        if rank > min(base.in_features, base.out_features):  # checked before anything of that size is allocated
            raise ValueError(
                f"LoRA rank {rank} exceeds this layer's smaller side, min({base.out_features}, {base.in_features}): "
                "B @ A has at most that rank, so a larger one only costs memory"
            )
        # The scale multiplies float32 activations: alpha / rank must be a usable float32 (1e308 / 8 is not).
        if not is_finite_number(alpha) or alpha <= 0 or not is_float32(alpha / rank):
            raise ValueError(f"LoRA alpha must be a positive number with alpha / rank a finite float32, got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must lie in [0, 1), got {dropout!r}")
        self.base = base.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        device = next(iter([*base.parameters(), *base.buffers()])).device  # a quantized base holds buffers only
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own initialisation, as PEFT does
        self.dropout_p = dropout
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True  # False: the base layer alone (adapters_disabled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``: the base layer plus the low-rank path."""
        y = self.base(x)
        if not self.enabled:
            return y
        low = self.dropout(x).to(self.lora_A.dtype) @ self.lora_A.t()  # (..., rank): the bottleneck
        return y + ((low @ self.lora_B.t()) * self.scaling).to(y.dtype)  # (..., out_features)

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = (alpha / rank) * B @ A``, shaped like the base weight ``(out_features, in_features)``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding ``W + ΔW`` (a quantized base is dequantized to float32 first)."""
        base = self.base.dequantize() if isinstance(self.base, QuantizedLinear) else self.base.weight
        return plain_layer(base + self.delta_weight().to(base.dtype))

    def settings(self) -> dict:
        """What besides the base layer built this one, ``LoRALinear(base, **settings())``: the adapter's file
        stores them, and :func:`add_lora` takes them back."""
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout_p}

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"


def target_names(model: nn.Module, targets: Sequence[str] = LORA_TARGETS) -> list[str]:
    """The names of the linear layers :func:`add_lora` wraps: ``layers.N.attention.wq`` for target ``wq``, ..."""
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if unknown or not targets:
        raise ValueError(f"LoRA targets must be some of {', '.join(LORA_TARGETS)}, got {list(targets)}")
    return [
        name
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in targets and isinstance(module, (nn.Linear, QuantizedLinear))
    ]


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every :class:`LoRALinear` of ``model`` by name (``layers.0.attention.wq``, ...)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def add_lora(
    model: nn.Module,
    rank: int = 8,
    alpha: float = 16.0,
    targets: Sequence[str] = LORA_TARGETS,
    dropout: float = 0.0,
) -> int:
    """Wrap the ``targets`` linears of every block in :class:`LoRALinear`, freeze everything else.

    In place; returns the number of trainable parameters (the adapters'). The embedding, the norms and
    the output head stay frozen. Every adapter is built before any layer is swapped
    (:func:`~llama_from_scratch.swap.swap_layers`), so a bad argument leaves the model untouched.
    """
    if lora_layers(model):
        raise ValueError("this model already has LoRA adapters: merge_lora() them first, or load into them")
    names = set(target_names(model, targets))
    if not names:
        raise ValueError(f"no linear layer named {list(targets)} in this model")
    wrapped = swap_layers(model, lambda name, m: LoRALinear(m, rank, alpha, dropout) if name in names else None)
    model.requires_grad_(False)
    for layer in wrapped.values():
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (``W <- W + ΔW``) and remove the wrappers; returns ``model``.

    The merged model computes the same function with plain layers, so it saves, loads and runs like
    any other. Its parameters stay frozen (``requires_grad=False``): call ``requires_grad_(True)`` to train it.
    """
    swap_layers(model, lambda name, m: m.merged() if isinstance(m, LoRALinear) else None, one_at_a_time=True)
    return model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` as its base model inside the ``with`` block (the adapters switched off, not removed).

    DPO's reference is the model before fine-tuning; with LoRA that is the same model with its adapters
    off (:func:`~.dpo.reference_logprobs`), so no second copy of the weights is needed. Each layer's
    ``enabled`` flag is restored on the way out, an exception included.
    """
    layers = list(lora_layers(model).values())
    previous = [layer.enabled for layer in layers]
    for layer in layers:
        layer.enabled = False
    try:
        yield model
    finally:
        for layer, enabled in zip(layers, previous):
            layer.enabled = enabled
