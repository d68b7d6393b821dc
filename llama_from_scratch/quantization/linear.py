"""What every quantized linear layer has in common: integer buffers in, float matmul out.

A :class:`QuantizedLinear` replaces an ``nn.Linear(in_features, out_features, bias=False)``. It keeps
the weight as small integers and their scales in *buffers* (saved in the ``state_dict``, moved by
``.to()``, but not parameters: nothing here is trained), and each scheme (:mod:`.int8`, :mod:`.int4`)
says how to turn them back into floats in :meth:`~QuantizedLinear.dequantize`.

The forward pass is weight-only quantization in its plainest form::

    y = x @ dequantize().T          (batch, ..., in_features) -> (batch, ..., out_features)

The matmul itself still runs in floating point; what shrinks is the memory that holds the weights
(and, with a fused kernel that dequantizes tiles in registers, the memory *traffic* that limits
decoding speed). :meth:`~QuantizedLinear.matmul` is that seam: a faster kernel replaces it alone.

Eagerly the weight is dequantized a **tile** of output rows at a time (:attr:`~QuantizedLinear.tile_weights`
weights, 2 MiB in float32), each tile used at once by the BLAS matmul while it is still in the CPU's cache,
never the whole float weight: SmolLM2's 49152 x 576 output head would be 113 MB of float32 written to memory
and read back at every step (10 to 25x slower than its tiles at 1 to 16 rows, measured), and the float
weight never exists whole, so int8's memory saving holds during the forward pass too.

A quantized embedding (:class:`QuantizedEmbedding`) is the same matrix read by rows: row ``t`` of a
``(vocab_size, dim)`` table, the same as output channel ``t`` of a linear layer, so one scheme serves both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QuantizedLinear(nn.Module):
    """Base class: a bias-free linear layer whose ``(out_features, in_features)`` weight is stored quantized.

    Subclasses register their buffers in ``__init__`` (empty, right shapes and dtypes, so that a model
    can be built on the ``meta`` device and loaded) and implement :meth:`dequantize` and :meth:`quantize_`.
    """

    scheme: str = ""  # the name quantize() and the saved header use, set by each subclass
    tile_weights: int = 2**19  # weights dequantized at once by the eager matmul: 2 MiB of float32, cache-sized
    setting_names: tuple[str, ...] = ()  # the keyword arguments of __init__ after the shape, set by each subclass

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features

    def num_weights(self) -> int:
        """How many numbers of the float weight this layer stands for, ``out_features * in_features``: what
        :meth:`~llama_from_scratch.model.Llama.num_parameters` counts (the codes are buffers, not parameters)."""
        return self.out_features * self.in_features

    def dequantize(self, rows: torch.Tensor | slice | None = None) -> torch.Tensor:
        """The float32 weight ``(out_features, in_features)``, or only ``rows`` of it ``(len(rows), in_features)``."""
        raise NotImplementedError

    def quantize_(self, weight: torch.Tensor) -> None:
        """Fill the buffers from a float weight ``(out_features, in_features)``."""
        raise NotImplementedError

    def settings(self) -> dict:
        """What besides the shape is needed to rebuild this layer empty, ``cls(in_features, out_features,
        **settings())``: the values of :attr:`setting_names` (Int4Linear's group size and symmetry). The swap
        builds layers from them and the saved header stores them, so neither needs to know the scheme."""
        return {name: getattr(self, name) for name in self.setting_names}

    @classmethod
    def from_linear(cls, linear: nn.Linear, **settings) -> QuantizedLinear:
        """Quantize ``linear``'s weight into a new layer on the same device."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{cls.__name__}.from_linear takes an nn.Linear, got {type(linear).__name__}")
        if linear.bias is not None:
            raise ValueError(f"{cls.__name__}: this linear has a bias; LLaMA's have none, and it is not supported")
        return cls.from_weight(linear.weight, **settings)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, **settings) -> QuantizedLinear:
        """A layer holding ``weight`` ``(out_features, in_features)`` quantized."""
        if weight.ndim != 2:
            raise ValueError(f"{cls.__name__}: a weight must be a matrix, got shape {tuple(weight.shape)}")
        if not torch.isfinite(weight).all():
            raise ValueError(f"{cls.__name__}: the weight holds NaN or infinite values; cannot quantize")
        out_features, in_features = weight.shape
        with torch.device(weight.device):
            layer = cls(in_features, out_features, **settings)
        layer.quantize_(weight.detach().float())
        return layer

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized float32 weight, computed on each access: for code that reads ``.weight``
        (``Llama.loss`` reads ``output.weight``). It costs a full dequantization, so the hot path avoids it."""
        return self.dequantize()

    def matmul_one_row(self, x: torch.Tensor) -> torch.Tensor:
        """``(in_features,) -> (out_features,)``, written as one multiply-and-sum over the stored integers,
        for ``torch.compile`` to turn into a single loop that never builds the float weight."""
        raise NotImplementedError

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T``: ``(..., in_features) -> (..., out_features)``. The seam where the fast path plugs in.

        Eagerly the weight is dequantized tile by tile, ``tile_weights // in_features`` output rows at a time,
        and each tile handed to the BLAS matmul while it is in cache: at any number of rows (one decoding
        step of many sequences, a prompt's prefill) every weight is dequantized once per call. Under
        ``torch.compile`` a single row (one decoding step) goes through :meth:`matmul_one_row` instead:
        Inductor fuses unpacking, scaling and the dot products into one vectorised loop that reads each
        weight byte once, so the memory traffic that limits decoding shrinks with the bits; more rows there
        dequantize the whole weight at once (a loop of tiles would be unrolled into the compiled graph).
        """
        if torch.compiler.is_compiling():
            if x.numel() == self.in_features:
                return self.matmul_one_row(x.reshape(self.in_features)).view(*x.shape[:-1], self.out_features)
            return F.linear(x, self.dequantize().to(x.dtype))
        step = max(1, self.tile_weights // self.in_features)
        tiles = [self.matmul_tile(x, slice(start, start + step)) for start in range(0, self.out_features, step)]
        return torch.cat(tiles, dim=-1) if len(tiles) > 1 else tiles[0]

    def matmul_tile(self, x: torch.Tensor, rows: slice) -> torch.Tensor:
        """``x @ W[rows].T``: ``(..., in_features) -> (..., len(rows))``, through the dequantized tile ``W[rows]``."""
        return F.linear(x, self.dequantize(rows=rows).to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``."""
        return self.matmul(x)

    def extra_repr(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.settings().items())
        return f"in_features={self.in_features}, out_features={self.out_features}{extra}"


class QuantizedEmbedding(nn.Module):
    """Mixin for a quantized ``(vocab_size, dim)`` embedding table: a lookup reads only the rows it needs.

    Combined with a scheme, e.g. ``class Int8Embedding(QuantizedEmbedding, Int8Linear)``: the buffers
    are the scheme's (``in_features`` = dim, ``out_features`` = vocab_size), the forward pass a lookup.
    """

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, **settings):
        """Quantize ``embedding``'s table into a new layer on the same device."""
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"{cls.__name__}.from_embedding takes an nn.Embedding, got {type(embedding).__name__}")
        return cls.from_weight(embedding.weight, **settings)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(...)`` token ids -> ``(..., dim)`` float32 rows, dequantizing only those rows."""
        return self.dequantize(rows=tokens.reshape(-1)).view(*tokens.shape, -1)
