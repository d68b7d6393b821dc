"""Quantization: storing weights in fewer bits, two ways.

Our own weight-only schemes for ``nn.Linear``, swapped into a model from the outside (as gpt-fast does):

* :mod:`.linear`: :class:`QuantizedLinear`, what every scheme shares (buffers, dequantize-then-matmul);
* :mod:`.int8`: int8, one absmax scale per output channel;
* :mod:`.packing`: two 4-bit codes per byte, bit by bit;
* :mod:`.int4`: int4 in groups of 32/64/128 weights, asymmetric (scale + min) or symmetric;
* :mod:`.int4_kernel`: the C++ kernel :class:`Int4Linear` decodes with (int8 activations, integer SIMD dot
  products, as llama.cpp), built on first use; the pure-PyTorch path where it cannot be built;
* :mod:`.swap`: :func:`quantize` a model in place, :func:`dequantize` it back to plain layers (both through
  :func:`llama_from_scratch.swap.swap_layers`), each layer built from its own settings.

llama.cpp's GGUF block formats, written out to be read:

* :mod:`.ggml_blocks`: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (quantize and dequantize, byte-exact with ``gguf``);
* :mod:`.ggml_k_quants`: Q4_K and Q6_K super-blocks (dequantize).

This package imports only the model core. Saving and loading a quantized model, integers kept as they
are, is a checkpoint format: :mod:`llama_from_scratch.checkpoints.quantized` (``save_quantized``,
``load_quantized``, ``save_checkpoint(..., format="quantized")``); the GGUF writer uses the block codecs.
"""

from .ggml_blocks import (
    dequantize_q4_0,
    dequantize_q4_1,
    dequantize_q5_0,
    dequantize_q5_1,
    dequantize_q8_0,
    quantize_q4_0,
    quantize_q4_1,
    quantize_q5_0,
    quantize_q5_1,
    quantize_q8_0,
)
from .ggml_k_quants import dequantize_q4_k, dequantize_q6_k
from .int4 import Int4Embedding, Int4Linear, dequantize_int4, quantize_int4
from .int8 import Int8Embedding, Int8Linear, dequantize_int8, quantize_int8
from .linear import QuantizedEmbedding, QuantizedLinear
from .packing import pack_int4, unpack_int4
from .swap import SCHEMES, dequantize, quantize, quantized_layers

__all__ = [
    "SCHEMES",
    "Int4Embedding",
    "Int4Linear",
    "Int8Embedding",
    "Int8Linear",
    "QuantizedEmbedding",
    "QuantizedLinear",
    "dequantize",
    "dequantize_int4",
    "dequantize_int8",
    "dequantize_q4_0",
    "dequantize_q4_1",
    "dequantize_q4_k",
    "dequantize_q5_0",
    "dequantize_q5_1",
    "dequantize_q6_k",
    "dequantize_q8_0",
    "pack_int4",
    "quantize",
    "quantize_int4",
    "quantize_int8",
    "quantize_q4_0",
    "quantize_q4_1",
    "quantize_q5_0",
    "quantize_q5_1",
    "quantize_q8_0",
    "quantized_layers",
    "unpack_int4",
]
