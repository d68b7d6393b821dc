"""Load pretrained weights into a :class:`~llama_from_scratch.model.Llama`.

``load_checkpoint(path)`` looks at what ``path`` holds and picks the reader:

* a Hugging Face directory (``config.json`` + safetensors): :mod:`.hf_format`;
* a Meta directory (``params.json`` + ``consolidated.NN.pth``): :mod:`.meta_format`;
* a llama.cpp ``.gguf`` file (quantized or not): :mod:`.gguf_format`.

Every reader yields ``(file, name, tensor)`` in this package's names and
layout; :func:`assemble` then checks that exactly the expected tensors, with
the expected shapes, arrived, before anything is handed back. A checkpoint
that is incomplete, has extra tensors, or has the wrong shapes raises a
``ValueError`` naming the file and the tensor; nothing half-loaded is returned.

The model is built on PyTorch's ``meta`` device (shapes only, no memory) and
the loaded tensors are assigned into it, so loading a model costs its
weights once, not twice.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import LlamaConfig
from .device import default_device, default_dtype
from .gguf_format import config_from_gguf, open_gguf, read_gguf_tensors
from .hf_format import read_hf_config, read_hf_tensors
from .meta_format import read_meta_checkpoint
from .model import Llama


def expected_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor a checkpoint of this config must provide."""
    with torch.device("meta"):
        model = Llama(config)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}  # a tied matrix appears once
    return shapes


def assemble(
    config: LlamaConfig,
    tensors: Iterable[tuple[str, str, torch.Tensor]],
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    total: int | None = None,
    description: str = "loading",
) -> Llama:
    """Build a :class:`Llama` from ``(file, name, tensor)`` triples, checking names and shapes.

    Tensors are converted to ``dtype`` and moved to ``device`` one at a time,
    so at most one extra copy of a single tensor exists at once.
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    expected = expected_shapes(config)
    state: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    quiet = bool(os.environ.get("TQDM_DISABLE"))  # honoured here too: tqdm's notebook bar ignores it
    for file, name, tensor in tqdm(tensors, total=total, desc=description, unit="tensor", disable=quiet):
        if config.tie_embeddings and name == "output.weight":
            continue  # some tied checkpoints store the shared matrix twice
        if name not in expected:
            raise ValueError(f"{file}: unexpected tensor {name!r} for this config")
        if name in state:
            raise ValueError(f"{file}: tensor {name!r} appears twice (also in {source[name]})")
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(
                f"{file}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {expected[name]} for this config"
            )
        state[name] = tensor.to(device=device, dtype=dtype)
        source[name] = file
    missing = [name for name in expected if name not in state]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"checkpoint is missing {len(missing)} tensor(s): {shown}")

    with torch.device("meta"):
        model = Llama(config)
    if config.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    model.load_state_dict(state, assign=True, strict=True)
    if config.tie_embeddings:
        model.tie_weights()  # assign=True replaced both parameters; make them one again
    return model.eval()


LATEST = "latest"  # in a training run's folder: the name of its newest complete checkpoint


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a training run's folder, or None if it has none yet."""
    pointer = Path(run_dir) / LATEST
    if not pointer.exists():
        return None
    checkpoint = Path(run_dir) / pointer.read_text().strip()
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
    ``.gguf`` file, or the output folder of :func:`~llama_from_scratch.train.train`
    (its newest checkpoint is loaded). ``device`` defaults to the best available (CUDA, MPS, CPU)
    and ``dtype`` to float32 on the CPU, bfloat16 on CUDA. ``reader``: a GGUF file already
    opened with ``gguf_format.open_gguf``, so that it is parsed only once.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir() and (path / LATEST).exists():
        path = latest_checkpoint(path)  # a training run's folder: its newest checkpoint
    if path.is_dir() and (path / "config.json").exists():
        config = read_hf_config(path)
        return assemble(config, read_hf_tensors(path, config), device, dtype, description=f"loading {path.name}")
    if path.is_dir() and (path / "params.json").exists():
        config, tensors = read_meta_checkpoint(path)
        return assemble(config, tensors, device, dtype, description=f"loading {path.name}")
    if path.is_file() and path.suffix == ".gguf":
        reader = reader or open_gguf(path)
        config = config_from_gguf(reader, str(path))
        tensors = read_gguf_tensors(path, reader)
        return assemble(config, tensors, device, dtype, total=len(reader.tensors), description=f"loading {path.name}")
    raise ValueError(
        f"{path}: not a checkpoint this package can read; expected a Hugging Face model directory "
        "(config.json + model.safetensors), a Meta directory (params.json + consolidated.00.pth) or a .gguf file"
    )
