"""LoRA adapters on disk, in the layout of Hugging Face's PEFT library, so that either side reads the other's.

A PEFT adapter is a folder of two files:

* ``adapter_config.json``: ``peft_type`` ``"LORA"``, the rank ``r``, ``lora_alpha``, ``lora_dropout`` and
  the ``target_modules`` under Hugging Face's names (``q_proj``, ``gate_proj``, ...);
* ``adapter_model.safetensors``: the adapters alone, named after the layer they adapt in Hugging Face's
  model, under PEFT's wrapper: ``base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight``
  ``(rank, in)`` and ``...lora_B.weight`` ``(out, rank)``.

A few megabytes instead of the base model's hundreds: the base is shared, the adapter is the fine-tune.
Two translations are needed on the way. The names, through the package's one name table
(:mod:`llama_from_scratch.checkpoints.names`), and, for ``wq`` and ``wk``, the *rows* of ``B``:
Hugging Face keeps those weights in its rotate-half RoPE layout, and the rows of ``ΔW = B @ A`` are
the rows of ``B``, so ``B`` is permuted exactly as the weight is (``A``, acting on the input side, is
not). The folder is written through :func:`~llama_from_scratch.checkpoints.atomic.atomic_write`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..checkpoints.atomic import atomic_write
from ..files import REQUIRED, json_field, read_json, regular_file
from ..checkpoints.hf import meta_to_hf_name, permute_qk
from ..checkpoints.tensors import check_finite
from ..errors import FormatError
from ..rope import half_to_interleaved, interleaved_to_half
from .lora import LORA_TARGETS, add_lora, lora_layers

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model


def hf_module_name(name: str) -> str:
    """``layers.3.attention.wq -> model.layers.3.self_attn.q_proj``: a layer's name in ``transformers``."""
    hf = meta_to_hf_name(name + ".weight")
    if hf is None:
        raise ValueError(f"no Hugging Face name for layer {name!r}")
    return hf.removesuffix(".weight")


# wq -> q_proj, ..., w1 -> gate_proj, ...: each LoRA target under Hugging Face's name
HF_TARGETS = {
    t: hf_module_name(f"layers.0.{'attention' if t in ('wq', 'wk', 'wv', 'wo') else 'feed_forward'}.{t}")
    .rsplit(".", 1)[1]
    for t in LORA_TARGETS
}


def adapter_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapters of ``model`` under PEFT's names and Hugging Face's q/k row layout, float32 on the CPU."""
    tensors = {}
    for name, layer in lora_layers(model).items():
        peft_name = PEFT_PREFIX + hf_module_name(name)
        b = permute_qk(name + ".weight", layer.lora_B.detach(), model.config, interleaved_to_half)
        tensors[f"{peft_name}.lora_A.weight"] = layer.lora_A.detach().float().cpu().contiguous()
        tensors[f"{peft_name}.lora_B.weight"] = b.float().cpu().contiguous()
    return tensors


def save_adapter(model: torch.nn.Module, directory: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write ``model``'s LoRA adapters to ``directory`` in PEFT's layout; returns the directory.

    Every adapter must share one rank and alpha (:func:`~.lora.add_lora` makes them so). An existing folder
    is replaced as a whole, never left half-written.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("this model has no LoRA adapters to save (add_lora first)")
    settings = {tuple(layer.settings().items()) for layer in layers.values()}
    if len(settings) != 1:
        raise ValueError(f"the adapters differ in their settings: {sorted(settings)}; PEFT's layout needs one")
    shared = dict(settings.pop())
    targets = sorted({name.rsplit(".", 1)[-1] for name in layers}, key=LORA_TARGETS.index)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": shared["rank"],
        "lora_alpha": shared["alpha"],
        "lora_dropout": shared["dropout"],
        "target_modules": [HF_TARGETS[t] for t in targets],
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
    }
    with atomic_write(directory, directory=True) as staging:
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        save_file(adapter_tensors(model), staging / WEIGHTS_FILE, metadata={"format": "pt"})
    return Path(directory)


def read_adapter_config(directory: Path) -> dict:
    """The settings of a PEFT LoRA adapter, checked: ``{"rank", "alpha", "dropout", "targets"}`` (Meta's names),
    the arguments of :func:`~.lora.add_lora`."""
    path = Path(directory) / CONFIG_FILE
    config = read_json(path)
    peft_type = json_field(config, "peft_type", "str", path, REQUIRED)
    if peft_type != "LORA":
        raise NotImplementedError(f"{path}: peft_type is {peft_type!r}; only LORA adapters are supported")
    for key, plain in (("use_dora", False), ("use_rslora", False), ("fan_in_fan_out", False), ("bias", "none")):
        value = config.get(key, plain)
        if value != plain:
            raise NotImplementedError(f"{path}: {key} is {value!r}; only {plain!r} is supported")
    for key in ("rank_pattern", "alpha_pattern", "layers_to_transform", "modules_to_save"):
        if config.get(key):
            raise NotImplementedError(f"{path}: {key} is set; per-layer settings are not supported")
    rank = json_field(config, "r", "int", path, REQUIRED)
    alpha = json_field(config, "lora_alpha", "float", path, REQUIRED)
    dropout = json_field(config, "lora_dropout", "float", path, 0.0, nullable=True)
    modules = json_field(config, "target_modules", "list", path, REQUIRED, items="str")
    if rank < 1 or alpha <= 0:
        raise FormatError(f"{path}: needs r >= 1 and lora_alpha > 0, got r={rank}, lora_alpha={alpha}")
    from_hf = {hf: meta for meta, hf in HF_TARGETS.items()}
    unknown = [m for m in modules if m not in from_hf]
    if unknown or not modules:
        raise NotImplementedError(
            f"{path}: target_modules {modules} must be some of {', '.join(from_hf)} (LLaMA's linear layers)"
        )
    return {"rank": rank, "alpha": alpha, "dropout": dropout, "targets": tuple(from_hf[m] for m in modules)}


def check_ranks(shapes: dict[str, tuple[int, ...]], rank: int, path: Path) -> None:
    """Every ``lora_A`` ``(rank, in)`` and ``lora_B`` ``(out, rank)`` in ``shapes`` (read from the file's header)
    has the rank ``adapter_config.json`` declares: a config claiming ``r: 1000000`` is refused before adapters
    of that size are allocated."""
    for key, shape in shapes.items():
        side = 0 if key.endswith("lora_A.weight") else 1 if key.endswith("lora_B.weight") else None
        if side is not None and (len(shape) != 2 or shape[side] != rank):
            raise FormatError(f"{path}: tensor {key!r} has shape {shape}, but {CONFIG_FILE} declares r={rank}")


def load_adapter(model: torch.nn.Module, directory: str | Path) -> torch.nn.Module:
    """Load a PEFT LoRA adapter from ``directory`` into ``model``; returns ``model``.

    A model without adapters gets them first (:func:`~.lora.add_lora` with the saved rank, alpha and
    targets). Every tensor is checked before any is copied: a missing, unexpected or wrongly shaped
    tensor (an adapter made for another base model) is a :class:`FormatError` naming the file and the tensor.
    """
    directory = Path(directory)
    settings = read_adapter_config(directory)
    path = regular_file(directory / WEIGHTS_FILE)
    found = {}
    try:
        with safe_open(path, "pt") as file:
            # The file's shapes are checked against the config's rank before adapters of that rank are built.
            check_ranks({key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}, settings["rank"], path)
            if not lora_layers(model):
                try:
                    add_lora(model, **settings)
                except ValueError as error:
                    raise FormatError(f"{directory / CONFIG_FILE}: {error}") from None
            expected = {}
            for name, layer in lora_layers(model).items():
                peft_name = PEFT_PREFIX + hf_module_name(name)
                expected[f"{peft_name}.lora_A.weight"] = (name, layer.lora_A)
                expected[f"{peft_name}.lora_B.weight"] = (name, layer.lora_B)
            for key in file.keys():
                if key not in expected:
                    raise FormatError(f"{path}: unexpected tensor {key!r}: this model has no such adapter")
                want = expected[key][1]
                shape = tuple(file.get_slice(key).get_shape())
                if shape != tuple(want.shape):
                    raise FormatError(
                        f"{path}: tensor {key!r} has shape {shape}, expected {tuple(want.shape)} "
                        "for this base model and rank (an adapter made for another model?)"
                    )
                tensor = file.get_tensor(key)
                if not tensor.is_floating_point():
                    raise FormatError(f"{path}: tensor {key!r} is {tensor.dtype}, expected floating point")
                check_finite(tensor, f"{path}: tensor {key!r}")
                found[key] = tensor
    except (SafetensorError, OSError, TypeError) as error:  # TypeError: a dtype PyTorch has no type for
        raise FormatError(f"{path}: not a readable safetensors file ({error})") from None
    missing = [key for key in expected if key not in found]
    if missing:
        raise FormatError(f"{path}: missing {len(missing)} adapter tensor(s), the first {missing[0]!r}")
    with torch.no_grad():
        for key, (name, parameter) in expected.items():
            tensor = found[key]
            if key.endswith("lora_B.weight"):
                tensor = permute_qk(name + ".weight", tensor, model.config, half_to_interleaved)
            parameter.copy_(tensor)
    return model
