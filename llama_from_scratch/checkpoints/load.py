"""Load pretrained weights into a :class:`~llama_from_scratch.model.Llama`.

``load_checkpoint(path)`` looks at what ``path`` holds and picks the reader:

* a Hugging Face directory (``config.json`` + safetensors): :mod:`.hf`;
* a Meta directory (``params.json`` + ``consolidated.NN.pth``): :mod:`.meta`;
* a llama.cpp ``.gguf`` file (quantized or not): :mod:`.gguf`.

``load_pretrained(path)`` loads the tokenizer and the chat template that were
saved with the weights, too.

Every reader yields ``(file, name, tensor)`` in this package's names and
layout; :func:`assemble` then checks that exactly the expected tensors, with
the expected shapes and dtypes, arrived, before anything is handed back. A
checkpoint that is incomplete, has extra tensors, or has the wrong shapes
raises a ``FormatError`` (a ``ValueError``) naming the file and the tensor;
nothing half-loaded is returned. Before any model is built, the config is
checked against the tensors the files hold (:func:`.names.check_config_fits`):
a ``config.json`` that claims 100,000 layers would otherwise cost minutes and
gigabytes before the first tensor is compared.

The model is built on PyTorch's ``meta`` device (shapes only, no memory) and
the loaded tensors are assigned into it, so loading a model costs its
weights once, not twice.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import LlamaConfig
from ..device import default_device, default_dtype
from ..errors import FormatError
from ..model import Llama
from ..tokenization.load import Tokenizer, load_tokenizer
from .files import plain_file_name, regular_file
from .gguf import (
    config_from_gguf,
    gguf_tensor_shapes,
    open_gguf,
    read_gguf_chat_template,
    read_gguf_tensors,
    read_gguf_tokenizer,
)
from .hf import hf_tensor_shapes, read_chat_template, read_hf_config, read_hf_tensors
from .meta import read_meta_checkpoint
from .names import check_config_fits


def expected_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The name, shape and dtype of every tensor a checkpoint must provide for ``model`` (its ``state_dict``).

    Buffers count too, so a model whose linears were swapped for quantized ones expects their integer
    weights and scales. A tied output matrix is the embedding, expected once.
    """
    expected = model.state_dict()
    if getattr(model, "config", None) is not None and model.config.tie_embeddings:
        expected = {name: t for name, t in expected.items() if not name.startswith("output.")}
    return expected


def expected_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor a checkpoint of this config must provide."""
    with torch.device("meta"):
        model = Llama(config)
    return {name: tuple(t.shape) for name, t in expected_tensors(model).items()}


def assemble(
    config: LlamaConfig,
    tensors: Iterable[tuple[str, str, torch.Tensor]],
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    total: int | None = None,
    description: str = "loading",
    model: torch.nn.Module | None = None,
    source: str = "checkpoint",
) -> Llama:
    """Fill a model from ``(file, name, tensor)`` triples, checking names, shapes and dtypes.

    The model is ``Llama(config)`` built on the ``meta`` device (shapes only, no memory), or ``model`` if
    given (already on the meta device, e.g. with quantized linears swapped in). Parameters are converted
    to ``dtype``; buffers (a quantized layer's codes and float32 scales) keep the model's dtype. A tensor
    the model holds in floating point must arrive in floating point (an int8, bool or complex weight, or
    float32 bytes relabelled int32, would load as nonsense), and integer ones (packed quantized weights)
    in exactly the expected type. Each tensor is moved to ``device`` as it
    arrives, so at most one extra copy of a single tensor exists at once. ``source`` names the checkpoint
    in the message about missing tensors.
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    if model is None:
        with torch.device("meta"):
            model = Llama(config)
    expected = expected_tensors(model)
    parameters = {name for name, _ in model.named_parameters()}
    state: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    quiet = bool(os.environ.get("TQDM_DISABLE"))  # honoured here too: tqdm's notebook bar ignores it
    for file, name, tensor in tqdm(tensors, total=total, desc=description, unit="tensor", disable=quiet):
        if config.tie_embeddings and name == "output.weight":
            continue  # some tied checkpoints store the shared matrix twice
        if name not in expected:
            raise FormatError(f"{file}: unexpected tensor {name!r} for this config")
        if name in state:
            raise FormatError(f"{file}: tensor {name!r} appears twice (also in {source[name]})")
        want = expected[name]
        if tuple(tensor.shape) != tuple(want.shape):
            raise FormatError(
                f"{file}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(want.shape)} for this config"
            )
        if want.is_floating_point() != tensor.is_floating_point() or (
            not want.is_floating_point() and tensor.dtype != want.dtype
        ):
            raise FormatError(f"{file}: tensor {name!r} is {tensor.dtype}, expected {want.dtype}")
        # Parameters take ``dtype``; buffers (a quantized layer's codes and float32 scales) keep their own.
        state[name] = tensor.to(device=device, dtype=dtype if name in parameters else want.dtype)
        source[name] = file
    missing = [name for name in expected if name not in state]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FormatError(f"{source}: the checkpoint is missing {len(missing)} tensor(s): {shown}")

    if config.tie_embeddings:  # the head's tensors are the embedding's, under the head's names
        for name in model.output.state_dict():
            state[f"output.{name}"] = state[f"tok_embeddings.{name}"]
    model.load_state_dict(state, assign=True, strict=True)
    if config.tie_embeddings:
        model.tie_weights()  # assign=True replaced both parameters; make them one again
    return model.eval()


QUANTIZED_WEIGHTS = "quantized.safetensors"  # a quantized model's directory: config.json + this (format="quantized")
LATEST = "latest"  # in a training run's folder: the name of its newest complete checkpoint
# The names each format gives the config fields that check_config_fits compares with the tensors.
HF_FIELDS = {"n_layers": "num_hidden_layers", "vocab_size": "vocab_size", "dim": "hidden_size"}
GGUF_FIELDS = {"n_layers": "llama.block_count", "vocab_size": "llama.vocab_size", "dim": "llama.embedding_length"}


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a training run's folder, or None if it has none yet."""
    pointer = Path(run_dir) / LATEST
    if not pointer.exists():
        return None
    name = regular_file(pointer).read_text(encoding="utf-8", errors="replace").strip()
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
        from ..quantization.safetensors_format import load_quantized  # it builds on this module

        return load_quantized(path / QUANTIZED_WEIGHTS, read_hf_config(path), device, dtype)
    if path.is_dir() and (path / "config.json").exists():
        config = read_hf_config(path)
        check_config_fits(config, hf_tensor_shapes(path), path / "config.json", HF_FIELDS)
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
