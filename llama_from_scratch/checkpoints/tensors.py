"""A model's tensors going out to a checkpoint and coming back in, checked: the seam every format shares.

Every writer of :mod:`..checkpoints` gets its tensors from :func:`model_tensors` (the ``state_dict`` on the
CPU, a tied head listed once); every reader yields ``(file, name, tensor)`` triples in this package's names
and layout, and :func:`assemble` turns them into a model after checking that exactly the expected tensors,
with the expected shapes and dtypes, arrived (:func:`expected_tensors`), and that no floating-point tensor
(a weight, a norm's gain, a quantized layer's scales) holds NaN or infinity: one such number makes every
logit NaN, and sampling fails far from the cause. A checkpoint that is incomplete, has extra tensors, the
wrong shapes or non-finite values raises a ``FormatError`` naming the file and the tensor; nothing
half-loaded is returned.

The model is built on PyTorch's ``meta`` device (shapes only, no memory) and the loaded tensors are
assigned into it, so loading a model costs its weights once, not twice.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from ..config import LlamaConfig
from ..device import default_device, default_dtype
from ..errors import FormatError
from ..model import Llama


def model_tensors(model: Llama, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.state_dict()`` on the CPU, the floating-point parameters in ``dtype``.

    Buffers count as well as parameters and keep their type (a quantized layer's integer codes and float32
    scales), as :func:`assemble` expects. A tied output matrix is the embedding: it is listed once,
    as ``tok_embeddings.weight`` (or the embedding's quantized codes).
    """
    tied = model.config.tie_embeddings
    parameters = {name for name, _ in model.named_parameters()}
    return {
        name: (t.to(dtype) if dtype is not None and name in parameters else t).to("cpu").contiguous()
        for name, t in model.state_dict().items()
        if not (tied and name.startswith("output."))
    }


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


def check_finite(tensor: torch.Tensor, where: str) -> None:
    """A :class:`FormatError` naming ``where`` if the floating-point ``tensor`` holds NaN or infinity
    (one pass over its values: a fraction of a second for SmolLM2's 135 million)."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise FormatError(f"{where} holds {bad:,} NaN or infinite value(s)")


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
    origin: dict[str, str] = {}  # the file each tensor came from
    quiet = bool(os.environ.get("TQDM_DISABLE"))  # honoured here too: tqdm's notebook bar ignores it
    for file, name, tensor in tqdm(tensors, total=total, desc=description, unit="tensor", disable=quiet):
        if config.tie_embeddings and name == "output.weight":
            continue  # some tied checkpoints store the shared matrix twice
        if name not in expected:
            raise FormatError(f"{file}: unexpected tensor {name!r} for this config")
        if name in state:
            raise FormatError(f"{file}: tensor {name!r} appears twice (also in {origin[name]})")
        want = expected[name]
        if tuple(tensor.shape) != tuple(want.shape):
            raise FormatError(
                f"{file}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(want.shape)} for this config"
            )
        if want.is_floating_point() != tensor.is_floating_point() or (
            not want.is_floating_point() and tensor.dtype != want.dtype
        ):
            raise FormatError(f"{file}: tensor {name!r} is {tensor.dtype}, expected {want.dtype}")
        check_finite(tensor, f"{file}: tensor {name!r}")
        # Parameters take ``dtype``; buffers (a quantized layer's codes and float32 scales) keep their own.
        state[name] = tensor.to(device=device, dtype=dtype if name in parameters else want.dtype)
        origin[name] = file
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
