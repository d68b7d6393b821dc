"""Load a checkpoint: its weights into a :class:`~llama_from_scratch.model.Llama`, its tokenizer, its chat template.

``load_checkpoint(path)`` looks at what ``path`` holds and picks the reader:

* a Hugging Face directory (``config.json`` + safetensors): :mod:`.hf`;
* a quantized model's directory (``config.json`` + ``quantized.safetensors``): :mod:`.quantized`;
* a Meta directory (``params.json`` + ``consolidated.NN.pth``): :mod:`.meta`;
* a llama.cpp ``.gguf`` file (quantized or not): :mod:`.gguf`.

``load_tokenizer(path)`` reads a tokenizer from any file that holds one, and ``load_pretrained(path)``
loads the tokenizer and the chat template that were saved with the weights, too.

Every reader yields ``(file, name, tensor)`` in this package's names and layout, and
:func:`.tensors.assemble` checks that exactly the expected tensors arrived before anything is handed
back. Before any model is built, the config is checked against the tensors the files hold
(:func:`.names.check_config_fits`): a ``config.json`` that claims 100,000 layers would otherwise cost
minutes and gigabytes before the first tensor is compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import FormatError
from ..files import plain_file_name, read_bytes, regular_file
from ..model import Llama
from ..tokenization.byte_bpe import ByteLevelBPE
from ..tokenization.sentencepiece_bpe import SentencePieceTokenizer
from ..tokenization.sentencepiece_model import read_model
from ..tokenization.tiktoken_file import looks_like_tiktoken, read_tiktoken_file
from ..tokenization.tokenizer import Tokenizer
from .gguf import (
    config_from_gguf,
    gguf_tensor_shapes,
    open_gguf,
    read_gguf_chat_template,
    read_gguf_tensors,
    read_gguf_tokenizer,
)
from .hf import hf_tensor_shapes, read_chat_template, read_hf_config, read_hf_tensors, read_tokenizer_json
from .meta import read_meta_checkpoint
from .names import REWARD_HEAD, check_config_fits
from .quantized import QUANTIZED_WEIGHTS, load_quantized
from .tensors import assemble


LATEST = "latest"  # in a training run's folder: the name of its newest complete checkpoint
# The names each format gives the config fields that check_config_fits compares with the tensors.
HF_FIELDS = {"n_layers": "num_hidden_layers", "vocab_size": "vocab_size", "dim": "hidden_size"}
GGUF_FIELDS = {"n_layers": "llama.block_count", "vocab_size": "llama.vocab_size", "dim": "llama.embedding_length"}


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a training run's folder, or None if it has none yet."""
    pointer = Path(run_dir) / LATEST
    if not pointer.exists():
        return None
    name = read_bytes(pointer, 4096).decode("utf-8", errors="replace").strip()  # one short name
    checkpoint = Path(run_dir) / plain_file_name(name, str(pointer), run_dir)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"{pointer} names {checkpoint.name}, which does not exist")
    return checkpoint


def load_checkpoint(
    path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None, reader=None
) -> Llama:
    """Load a pretrained model from ``path``.

    ``path`` may be a Hugging Face model directory (``config.json`` with
    ``model.safetensors`` or a sharded ``model.safetensors.index.json``), a
    Meta directory (``params.json`` with ``consolidated.00.pth``, ...), a
    ``.gguf`` file, or the output folder of :func:`~llama_from_scratch.training.train.train`
    (its newest checkpoint is loaded). ``device`` defaults to the best available (CUDA, MPS, CPU)
    and ``dtype`` to float32 on the CPU, bfloat16 on CUDA. ``reader``: a GGUF file already
    opened with :func:`.gguf.open_gguf`, so that it is parsed only once.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if not path.is_dir():
        regular_file(path)  # a FIFO or a device is no checkpoint, and reading one could block forever
    if path.is_dir() and (path / LATEST).exists():
        path = latest_checkpoint(path)  # a training run's folder: its newest checkpoint
    # The config is checked against the tensors present before a model is built (the Meta reader does it itself).
    description = f"loading {path.name}"
    if path.is_dir() and (path / "config.json").exists() and (path / QUANTIZED_WEIGHTS).exists():
        return load_quantized(path / QUANTIZED_WEIGHTS, read_hf_config(path), device, dtype, HF_FIELDS)
    if path.is_dir() and (path / "config.json").exists():
        config = read_hf_config(path)
        shapes = hf_tensor_shapes(path)
        if REWARD_HEAD in shapes:
            raise FormatError(
                f"{path}: a reward model (it holds the scalar head {REWARD_HEAD!r}), not a language model: "
                "load it with llama_from_scratch.alignment.load_reward_model"
            )
        check_config_fits(config, shapes, path / "config.json", HF_FIELDS)
        return assemble(config, read_hf_tensors(path, config), device, dtype, None, description, source=str(path))
    if path.is_dir() and (path / "params.json").exists():
        config, tensors = read_meta_checkpoint(path)
        return assemble(config, tensors, device, dtype, None, description, source=str(path))
    if path.is_file() and path.suffix == ".gguf":
        reader = reader or open_gguf(path)
        config = config_from_gguf(reader, str(path))
        check_config_fits(config, gguf_tensor_shapes(reader), path, GGUF_FIELDS)
        tensors = read_gguf_tensors(path, reader)
        return assemble(config, tensors, device, dtype, len(reader.tensors), description, source=str(path))
    raise FormatError(
        f"{path}: not a checkpoint this package can read; expected a Hugging Face model directory "
        "(config.json + model.safetensors), a Meta directory (params.json + consolidated.00.pth) or a .gguf file"
    )


def load_tokenizer(path: str | Path) -> SentencePieceTokenizer | ByteLevelBPE:
    """Load a tokenizer from a SentencePiece ``.model``, a ``tokenizer.json`` (or its directory) or a ``.gguf``.

    Four formats hold the tokenizers of the Llama family: a SentencePiece ``.model`` file (Llama 1 and 2's
    ``tokenizer.model``, read by :mod:`~llama_from_scratch.tokenization.sentencepiece_model`), a tiktoken
    file (Llama 3's ``tokenizer.model``, :mod:`~llama_from_scratch.tokenization.tiktoken_file`), a Hugging
    Face ``tokenizer.json`` (:mod:`.hf`, which writes it too) and a GGUF file's ``tokenizer.ggml.*``
    metadata (:mod:`.gguf`). The format is recognised by the file's first bytes: a GGUF file starts with
    ``GGUF``, a JSON file with ``{`` (a ``.json`` file is read as JSON whatever it starts with), a tiktoken
    file with a line ``base64-token rank``; anything else is tried as a SentencePiece model.
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / "tokenizer.json", path / "tokenizer.model"]
        found = next((c for c in candidates if c.exists()), None)  # checked to be a regular file below
        if found is None:
            raise FileNotFoundError(f"no tokenizer.json or tokenizer.model in the directory {path}")
        path = found
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    regular_file(path)  # a FIFO would block the read below forever
    with path.open("rb") as f:
        head = f.read(512)  # enough for a tiktoken line (a token of up to 380 bytes) and its rank
    if head[:4] == b"GGUF":
        return read_gguf_tokenizer(path)  # each checkpoint format reads its own tokenizer
    if head.lstrip()[:1] == b"{" or path.suffix == ".json":
        return read_tokenizer_json(path)
    if looks_like_tiktoken(head):  # Llama 3's tokenizer.model: text lines "base64-token rank"
        return read_tiktoken_file(path)
    try:
        model = read_model(path)
    except FormatError:
        if path.suffix == ".model":
            raise  # a SentencePiece model, damaged: its error says where
        raise FormatError(
            f"{path} is not a tokenizer file: neither GGUF, nor tokenizer.json, nor a SentencePiece .model"
        ) from None
    try:
        return SentencePieceTokenizer(model)
    except ValueError as error:
        raise FormatError(f"{path}: {error}") from None
    except NotImplementedError as error:
        raise NotImplementedError(f"{path}: {error}") from None


@dataclass
class Pretrained:
    """A model with the tokenizer and chat template it was trained with."""

    model: Llama
    tokenizer: Tokenizer
    chat_template: str | None = None


def load_pretrained(path: str | Path, device=None, dtype=None) -> Pretrained:
    """Load weights, tokenizer and chat template from one checkpoint (any format ``load_checkpoint`` reads).

    The tokenizer is looked for next to the weights: in a GGUF file's
    metadata, or as ``tokenizer.json`` / ``tokenizer.model`` in a checkpoint
    directory (a training run's folder included).
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        reader = open_gguf(path)  # parsed once for the weights, the tokenizer and the template
        model = load_checkpoint(path, device, dtype, reader=reader)
        return Pretrained(model, read_gguf_tokenizer(path, reader), read_gguf_chat_template(path, reader))
    model = load_checkpoint(path, device, dtype)
    directory = path.parent if path.is_file() else (latest_checkpoint(path) or path)
    return Pretrained(model, load_tokenizer(directory), read_chat_template(directory))
