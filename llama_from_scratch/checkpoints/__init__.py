"""Real checkpoints: reading and writing the four formats a model of this package is stored in.

One module per format, each holding its reading *and* its writing, tokenizer, chat template and RoPE
scaling's spelling included: :mod:`.hf` (Hugging Face: ``config.json`` + safetensors), :mod:`.meta` (Meta:
``params.json`` + ``consolidated.NN.pth`` shards), :mod:`.gguf` (llama.cpp: one file, quantized or not) and
:mod:`.quantized` (a model quantized by :mod:`llama_from_scratch.quantization`, integer codes as they are).
:mod:`.names` is the one table of tensor names in the first three spellings. :mod:`.tensors` is the seam
they share: a model's tensors going out (``model_tensors``) and coming back in, checked (``assemble``).
:mod:`.load` builds a model from any of them (``load_checkpoint``, ``load_tokenizer``, ``load_pretrained``),
:mod:`.save` writes any of them (``save_checkpoint``), both through :mod:`.atomic` so that nothing is ever
half-written. Every reader follows the rules of :mod:`llama_from_scratch.files` for files that may be
damaged or hostile. :mod:`.offline` locates the course's offline checkpoint (``smollm2_path``).

Below this package: the model core, :mod:`~llama_from_scratch.quantization` (the quantized layers and
GGUF's block codecs) and :mod:`~llama_from_scratch.tokenization`.
"""

from .load import Pretrained, latest_checkpoint, load_checkpoint, load_pretrained, load_tokenizer
from .offline import smollm2_path
from .quantized import load_quantized, save_quantized
from .save import FORMATS, save_checkpoint
from .tensors import assemble, expected_shapes, model_tensors

__all__ = [
    "FORMATS",
    "Pretrained",
    "assemble",
    "expected_shapes",
    "latest_checkpoint",
    "load_checkpoint",
    "load_pretrained",
    "load_quantized",
    "load_tokenizer",
    "model_tensors",
    "save_checkpoint",
    "save_quantized",
    "smollm2_path",
]
