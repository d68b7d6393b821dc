"""Save a model in the three formats that ``load_checkpoint`` reads.

* ``"hf"``: a Hugging Face directory (``config.json`` + ``model.safetensors``)
  that ``transformers.AutoModelForCausalLM.from_pretrained`` loads; q/k rows
  are permuted into Hugging Face's rotate-half layout on the way out
  (:mod:`.hf`).
* ``"meta"``: ``params.json`` + ``consolidated.NN.pth``, optionally cut into
  ``n_shards`` model-parallel shards exactly as Meta's released files are
  (:mod:`.meta`).
* ``"gguf"``: one llama.cpp file, float32 or float16 (:mod:`.gguf`).

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
from .hf import write_hf, write_hf_tokenizer
from .meta import write_meta

FORMATS = ("hf", "meta", "gguf")


def model_tensors(model: Llama, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.state_dict()`` on the CPU, the floating-point ones in ``dtype``.

    Buffers count as well as parameters, and integer tensors (quantized weights) keep their type. A tied
    output matrix is the embedding: it is listed once, as ``tok_embeddings.weight``.
    """
    tensors = {
        name: (t.to(dtype) if dtype is not None and t.is_floating_point() else t).to("cpu").contiguous()
        for name, t in model.state_dict().items()
    }
    if model.config.tie_embeddings:
        del tensors["output.weight"]
    return tensors


def save_checkpoint(
    model: Llama,
    tokenizer,
    path: str | Path,
    format: str = "hf",
    chat_template: str | None = None,
    dtype: torch.dtype = torch.float32,
    n_shards: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` and its ``tokenizer`` to ``path``: a directory for "hf" and "meta", a ``.gguf`` file for "gguf".

    ``tokenizer`` (a :class:`SentencePieceTokenizer` or :class:`ByteLevelBPE`, or None for weights alone) and
    ``chat_template`` are written as the format expects, so that ``load_pretrained(path)`` gives back the
    model, the tokenizer and the template.
    """
    path = Path(path)
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if n_shards != 1 and format != "meta":
        raise ValueError("n_shards applies to the Meta format only")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    config = model.config
    if format == "gguf":
        with atomic_write(path) as file:
            write_gguf(config, model_tensors(model, torch.float32), file, dtype, tokenizer, chat_template)
        return path
    with atomic_write(path, directory=True) as directory:
        if format == "hf":
            write_hf(config, model_tensors(model, dtype), directory, dtype)
        else:
            write_meta(config, model_tensors(model, dtype), directory, n_shards)
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer, directory, chat_template)
    return path
