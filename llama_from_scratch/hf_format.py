"""The Hugging Face checkpoint format: ``config.json`` plus safetensors weights.

A Hugging Face Llama directory holds

* ``config.json``: the hyper-parameters under Hugging Face's names
  (``hidden_size`` for ``dim``, ``num_hidden_layers`` for ``n_layers``, ...);
* ``model.safetensors``, or several shards listed in
  ``model.safetensors.index.json``: the weights, under names such as
  ``model.layers.0.self_attn.q_proj.weight``.

Two things differ from Meta's format, which this package uses:

1. the names (see :func:`hf_to_meta_name`), and
2. the rows of every ``q_proj`` / ``k_proj`` weight. Hugging Face applies RoPE
   in its rotate-half layout, so its conversion script permuted those rows
   (``rope.interleaved_to_half``); loading permutes them back
   (``rope.half_to_interleaved``).

Safetensors is a plain header plus raw tensor bytes: reading it runs no code,
and ``safe_open`` maps the file into memory instead of copying it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .config import LlamaConfig
from .naming import NameMap
from .rope import half_to_interleaved, interleaved_to_half

# Hugging Face name pattern -> Meta name pattern; {i} is the layer index.
_NAMES = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "layers.{i}.attention_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "layers.{i}.attention.wq.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "layers.{i}.attention.wk.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "layers.{i}.attention.wv.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "layers.{i}.attention.wo.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "layers.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "layers.{i}.feed_forward.w1.weight",
    "model.layers.{i}.mlp.down_proj.weight": "layers.{i}.feed_forward.w2.weight",
    "model.layers.{i}.mlp.up_proj.weight": "layers.{i}.feed_forward.w3.weight",
}


_HF_NAMES = NameMap(_NAMES)


def hf_to_meta_name(name: str) -> str | None:
    """``model.layers.3.mlp.gate_proj.weight -> layers.3.feed_forward.w1.weight``; None if not a Llama weight."""
    return _HF_NAMES.to_meta(name)


def meta_to_hf_name(name: str) -> str | None:
    """The inverse of :func:`hf_to_meta_name`."""
    return _HF_NAMES.from_meta(name)


def hf_to_meta_tensor(meta_name: str, tensor: torch.Tensor, config: LlamaConfig) -> torch.Tensor:
    """Undo Hugging Face's RoPE row permutation on ``wq`` / ``wk``; other tensors pass unchanged."""
    if meta_name.endswith("attention.wq.weight"):
        return half_to_interleaved(tensor, config.n_heads)
    if meta_name.endswith("attention.wk.weight"):
        return half_to_interleaved(tensor, config.n_kv_heads)
    return tensor


def meta_to_hf_state_dict(state_dict: dict[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """This package's weights under Hugging Face's names and q/k layout (for ``LlamaForCausalLM``)."""
    hf = {}
    for name, tensor in state_dict.items():
        if config.tie_embeddings and name == "output.weight":
            continue  # tied: Hugging Face stores the shared matrix once, as the embedding
        if name.endswith("attention.wq.weight"):
            tensor = interleaved_to_half(tensor, config.n_heads)
        elif name.endswith("attention.wk.weight"):
            tensor = interleaved_to_half(tensor, config.n_kv_heads)
        hf_name = meta_to_hf_name(name)
        if hf_name is None:
            raise ValueError(f"no Hugging Face name for tensor {name!r}")
        hf[hf_name] = tensor
    return hf


def config_from_hf(hf: dict, source: str = "config.json") -> LlamaConfig:
    """Translate a Hugging Face Llama ``config.json`` (already parsed) into a :class:`LlamaConfig`.

    Raises ``ValueError`` naming ``source`` and the field for anything this
    package does not implement (another architecture, biases, RoPE scaling).
    """
    model_type = hf.get("model_type")
    if model_type != "llama":
        raise ValueError(f"{source}: model_type is {model_type!r}; this package loads 'llama' models")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act is {hf['hidden_act']!r}; LLaMA's SwiGLU needs 'silu'")
    for field in ("attention_bias", "mlp_bias"):
        if hf.get(field):
            raise ValueError(f"{source}: {field} is true; LLaMA has no biases")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"{source}: RoPE scaling {rope_type!r} is not supported; only the default RoPE is")
    missing = [
        f
        for f in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
        if f not in hf
    ]
    if missing:
        raise ValueError(f"{source}: missing field(s) {', '.join(missing)}")
    try:
        return LlamaConfig(
            dim=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"],
            n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            vocab_size=hf["vocab_size"],
            hidden_dim=hf["intermediate_size"],
            head_dim=hf.get("head_dim"),
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            max_seq_len=hf.get("max_position_embeddings", 2048),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def config_to_hf(config: LlamaConfig) -> dict:
    """The ``config.json`` dictionary of a Hugging Face ``LlamaForCausalLM`` with this shape."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.hidden_dim,
        "vocab_size": config.vocab_size,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_seq_len,
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
    }


def read_hf_config(directory: Path) -> LlamaConfig:
    """Read and translate ``directory/config.json``."""
    path = directory / "config.json"
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    return config_from_hf(hf, str(path))


def safetensors_files(directory: Path) -> list[Path]:
    """The weight files of a Hugging Face directory: one file, or the shards its index lists."""
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as error:
            raise ValueError(f"{index}: not a safetensors index with a 'weight_map' ({error})") from None
        files = [directory / name for name in dict.fromkeys(weight_map.values())]
    elif single.exists():
        files = [single]
    else:
        raise FileNotFoundError(
            f"{directory}: no model.safetensors or model.safetensors.index.json next to config.json"
        )
    for file in files:
        if not file.exists():
            raise FileNotFoundError(f"{file}: listed in {index.name} but missing")
    return files


def read_hf_tensors(directory: Path, config: LlamaConfig) -> Iterator[tuple[str, str, torch.Tensor]]:
    """Yield ``(file name, Meta name, tensor)`` for every weight, already in this package's layout.

    Old checkpoints also saved RoPE's ``rotary_emb.inv_freq``: it is
    recomputed from the config, so it is skipped. Any other unknown tensor
    raises an error rather than being ignored.
    """
    for file in safetensors_files(directory):
        try:
            with safe_open(str(file), framework="pt") as f:
                for hf_name in f.keys():
                    if hf_name.endswith("rotary_emb.inv_freq"):
                        continue
                    meta_name = hf_to_meta_name(hf_name)
                    if meta_name is None:
                        raise ValueError(f"{file}: tensor {hf_name!r} is not a weight of a Llama model")
                    try:
                        tensor = hf_to_meta_tensor(meta_name, f.get_tensor(hf_name), config)
                    except ValueError as error:
                        raise ValueError(f"{file}: tensor {hf_name!r}: {error}") from None
                    yield file.name, meta_name, tensor
        except SafetensorError as error:
            raise ValueError(f"{file}: not a readable safetensors file ({error})") from None


def transformers_config(config: LlamaConfig):
    """The same shape as a ``transformers.LlamaConfig`` (needs ``transformers``)."""
    import transformers

    fields = {k: v for k, v in config_to_hf(config).items() if k not in ("architectures", "model_type")}
    return transformers.LlamaConfig(**fields)


def to_transformers(model):
    """A ``transformers.LlamaForCausalLM`` holding exactly ``model``'s weights (float32, eval mode).

    For comparing with the reference implementation; needs ``transformers``.
    """
    import transformers

    hf = transformers.LlamaForCausalLM(transformers_config(model.config)).eval()
    state = meta_to_hf_state_dict(dict(model.named_parameters()), model.config)
    if model.config.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    hf.load_state_dict({k: v.detach().float().cpu() for k, v in state.items()}, strict=True)
    return hf
