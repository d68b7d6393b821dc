"""Save a model in the three formats that ``load_checkpoint`` reads.

* ``"hf"``: a Hugging Face directory (``config.json`` + ``model.safetensors``)
  that ``transformers.AutoModelForCausalLM.from_pretrained`` loads; q/k rows
  are permuted into Hugging Face's rotate-half layout on the way out
  (:mod:`.hf`).
* ``"meta"``: ``params.json`` + ``consolidated.NN.pth``, optionally cut into
  ``n_shards`` model-parallel shards exactly as Meta's released files are
  (:mod:`.meta`).
* ``"gguf"``: one llama.cpp file, float32, float16 or quantized in one of llama.cpp's block formats
  (``quant="q8_0"``, ``"q4_0"``, ...; :mod:`.gguf`).
* ``"quantized"``: a model quantized by :func:`~llama_from_scratch.quantization.quantize`, as it is:
  a directory with ``config.json``, the tokenizer and ``quantized.safetensors`` (integer codes and scales,
  :mod:`.quantized`).

The tokenizer and chat template travel with the weights. Every format is
written through :func:`.atomic.atomic_write`, so an interrupted save never
leaves a half-written checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..model import Llama
from .atomic import atomic_write
from .gguf import write_gguf
from .hf import write_hf, write_hf_config, write_hf_tokenizer
from .meta import write_meta
from .quantized import QUANTIZED_WEIGHTS, save_quantized
from .tensors import model_tensors

FORMATS = ("hf", "meta", "gguf", "quantized")


def save_checkpoint(
    model: Llama,
    tokenizer,
    path: str | Path,
    format: str = "hf",
    chat_template: str | None = None,
    dtype: torch.dtype = torch.float32,
    n_shards: int = 1,
    overwrite: bool = False,
    quant: str | None = None,
) -> Path:
    """Write ``model`` and its ``tokenizer`` to ``path``: a ``.gguf`` file for "gguf", else a directory.

    ``tokenizer`` (a :class:`SentencePieceTokenizer` or :class:`ByteLevelBPE`, or None for weights alone) and
    ``chat_template`` are written as the format expects, so that ``load_pretrained(path)`` gives back the
    model, the tokenizer and the template. ``quant`` (GGUF only) names a llama.cpp block format.
    """
    path = Path(path)
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if n_shards != 1 and format != "meta":
        raise ValueError("n_shards applies to the Meta format only")
    if quant is not None and format != "gguf":
        raise ValueError(f"quant={quant!r} applies to the GGUF format only (use format='gguf')")
    quantized = any(name.endswith(".qweight") for name in model.state_dict())
    if quantized != (format == "quantized"):
        raise ValueError(
            "this model holds quantized layers: save it with format='quantized', or dequantize() it first"
            if quantized
            else "format='quantized' saves a model quantized with quantization.quantize(); this one is not"
        )
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    config = model.config
    if format == "gguf":
        with atomic_write(path) as file:
            write_gguf(config, model_tensors(model, torch.float32), file, dtype, tokenizer, chat_template, quant)
        return path
    with atomic_write(path, directory=True) as directory:
        if format == "hf":
            write_hf(config, model_tensors(model, dtype), directory, dtype)
        elif format == "meta":
            write_meta(config, model_tensors(model, dtype), directory, n_shards)
        else:
            write_hf_config(config, directory, dtype)
            save_quantized(model, directory / QUANTIZED_WEIGHTS, dtype)
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer, directory, chat_template)
    return path
