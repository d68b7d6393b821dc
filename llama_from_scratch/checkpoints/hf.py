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

The tokenizer sits beside the weights: ``tokenizer.model`` (SentencePiece) or
``tokenizer.json`` (the ``tokenizers`` library's format, for byte-level BPE),
and ``tokenizer_config.json``, which names the BOS/EOS tokens and holds the
chat template. This module reads and writes all of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..config import LlamaConfig
from ..errors import FormatError
from ..rope import half_to_interleaved, interleaved_to_half
from ..tokenization.byte_bpe import GPT2_PATTERN, ByteLevelBPE
from ..tokenization.load import token_text
from ..tokenization.sentencepiece_bpe import SentencePieceTokenizer
from .names import HF_NAMES


def hf_to_meta_name(name: str) -> str | None:
    """``model.layers.3.mlp.gate_proj.weight -> layers.3.feed_forward.w1.weight``; None if not a Llama weight."""
    return HF_NAMES.to_meta(name)


def meta_to_hf_name(name: str) -> str | None:
    """The inverse of :func:`hf_to_meta_name`."""
    return HF_NAMES.from_meta(name)


def permute_qk(
    meta_name: str, tensor: torch.Tensor, config: LlamaConfig, permute: Callable[[torch.Tensor, int], torch.Tensor]
) -> torch.Tensor:
    """Apply a RoPE row permutation to ``wq`` / ``wk`` (with their head counts); other tensors pass unchanged.

    Loading uses ``permute=half_to_interleaved`` (Hugging Face's rotate-half rows back to Meta's layout),
    saving ``interleaved_to_half``.
    """
    if meta_name.endswith("attention.wq.weight"):
        return permute(tensor, config.n_heads)
    if meta_name.endswith("attention.wk.weight"):
        return permute(tensor, config.n_kv_heads)
    return tensor


def hf_to_meta_tensor(meta_name: str, tensor: torch.Tensor, config: LlamaConfig) -> torch.Tensor:
    """Undo Hugging Face's RoPE row permutation on ``wq`` / ``wk``; other tensors pass unchanged."""
    return permute_qk(meta_name, tensor, config, half_to_interleaved)


def meta_to_hf_state_dict(state_dict: dict[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """This package's weights under Hugging Face's names and q/k layout (for ``LlamaForCausalLM``)."""
    hf = {}
    for name, tensor in state_dict.items():
        if config.tie_embeddings and name == "output.weight":
            continue  # tied: Hugging Face stores the shared matrix once, as the embedding
        hf_name = meta_to_hf_name(name)
        if hf_name is None:
            raise ValueError(f"no Hugging Face name for tensor {name!r}")
        hf[hf_name] = permute_qk(name, tensor, config, interleaved_to_half)
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
    except (TypeError, ValueError) as error:
        raise FormatError(f"{source}: {error}") from None


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


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; :class:`FormatError` naming the file if it is not one."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FormatError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise FormatError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_hf_config(directory: Path) -> LlamaConfig:
    """Read and translate ``directory/config.json``."""
    path = directory / "config.json"
    return config_from_hf(read_json(path), str(path))


def safetensors_files(directory: Path) -> list[Path]:
    """The weight files of a Hugging Face directory: one file, or the shards its index lists."""
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise FormatError(f"{index}: not a safetensors index with a 'weight_map' object")
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
                        raise FormatError(f"{file}: tensor {hf_name!r} is not a weight of a Llama model")
                    try:
                        tensor = hf_to_meta_tensor(meta_name, f.get_tensor(hf_name), config)
                    except ValueError as error:
                        raise FormatError(f"{file}: tensor {hf_name!r}: {error}") from None
                    yield file.name, meta_name, tensor
        except SafetensorError as error:
            raise FormatError(f"{file}: not a readable safetensors file ({error})") from None


def write_hf(config: LlamaConfig, weights: dict[str, torch.Tensor], directory: Path, dtype: torch.dtype) -> None:
    """Write ``config.json`` and ``model.safetensors`` (``weights`` in this package's names) into ``directory``."""
    hf_config = {**config_to_hf(config), "torch_dtype": str(dtype).removeprefix("torch.")}
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    save_file(meta_to_hf_state_dict(weights, config), directory / "model.safetensors", metadata={"format": "pt"})


# -- the tokenizer ---------------------------------------------------------------------------------------------


def read_tokenizer_config(directory: Path) -> dict:
    """``tokenizer_config.json`` of a directory (special tokens, chat template), or {} if there is none."""
    path = Path(directory) / "tokenizer_config.json"
    return read_json(path) if path.is_file() else {}


def _patterns_from_hf(pre_tokenizer: dict | None, path: Path) -> tuple[list[str], bool]:
    """The regex patterns of a ``pre_tokenizer`` entry, and whether a ByteLevel step is among them."""
    if pre_tokenizer is None:
        return [], False
    kind = pre_tokenizer.get("type")
    if kind == "Sequence":
        patterns, byte_level = [], False
        for step in pre_tokenizer["pretokenizers"]:
            p, b = _patterns_from_hf(step, path)
            patterns += p
            byte_level |= b
        return patterns, byte_level
    if kind == "ByteLevel":
        if pre_tokenizer.get("add_prefix_space"):
            raise NotImplementedError(f"{path}: ByteLevel with add_prefix_space=true is not supported")
        return ([GPT2_PATTERN] if pre_tokenizer.get("use_regex", True) else []), True
    if kind == "Digits":
        return [r"\p{N}" if pre_tokenizer.get("individual_digits") else r"\p{N}+"], False
    if kind == "Split":
        pattern = pre_tokenizer["pattern"]
        behavior = pre_tokenizer.get("behavior")
        if behavior != "Isolated" or pre_tokenizer.get("invert"):
            raise NotImplementedError(
                f"{path}: Split pre-tokenizer with behavior={behavior!r}, "
                f"invert={pre_tokenizer.get('invert')} is not supported (only Isolated)"
            )
        return [pattern["Regex"] if "Regex" in pattern else re.escape(pattern["String"])], False
    raise NotImplementedError(f"{path}: pre-tokenizer type {kind!r} is not supported")


def _added_token_content(value: object) -> str | None:
    return value.get("content") if isinstance(value, dict) else value  # "<s>" or {"content": "<s>", ...}


def read_tokenizer_json(path: str | Path) -> ByteLevelBPE:
    """A :class:`ByteLevelBPE` from a Hugging Face ``tokenizer.json``.

    The special tokens are the file's ``added_tokens``. Which of them are BOS, EOS and padding is not in
    ``tokenizer.json`` but in ``tokenizer_config.json`` beside it (``bos_token``, ...), read when present.
    """
    path = Path(path)
    spec = read_json(path)
    model = spec.get("model")
    if not isinstance(model, dict):
        raise FormatError(f"{path} is not a valid tokenizer.json: no 'model' object")
    if model.get("type") != "BPE":
        raise NotImplementedError(f"{path}: model type {model.get('type')!r} is not supported (only BPE)")
    patterns, byte_level = _patterns_from_hf(spec.get("pre_tokenizer"), path)
    if not byte_level:
        raise NotImplementedError(
            f"{path} is not a byte-level BPE tokenizer (no ByteLevel pre-tokenizer); for a "
            f"SentencePiece-style model, load its tokenizer.model instead"
        )
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    special = {token["content"]: token["id"] for token in spec.get("added_tokens", [])}
    config = read_tokenizer_config(path.parent)
    ids = {}
    for name in ("bos", "eos", "pad", "unk"):
        text = _added_token_content(config.get(f"{name}_token"))
        ids[f"{name}_id"] = special.get(text, model["vocab"].get(text)) if text is not None else None
    return ByteLevelBPE(
        model["vocab"], merges, patterns, special, ignore_merges=bool(model.get("ignore_merges", False)), **ids
    )


def hf_tokenizer_json(tokenizer: ByteLevelBPE) -> dict:
    """A ``tokenizer.json`` dictionary for a byte-level BPE tokenizer."""
    split = [
        {"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": False} for p in tokenizer.patterns
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    added = [
        {
            "id": i,
            "content": text,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for text, i in sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])
    ]
    merges = [f"{a} {b}" for (a, b), _ in sorted(tokenizer.ranks.items(), key=lambda item: item[1])]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [*split, byte_level]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": tokenizer.ignore_merges,
            "vocab": tokenizer.vocab,
            "merges": merges,
        },
    }


def write_hf_tokenizer(tokenizer, directory: Path, chat_template: str | None = None) -> None:
    """Write ``tokenizer.model`` or ``tokenizer.json``, and ``tokenizer_config.json``, into ``directory``."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        tokenizer.save(directory / "tokenizer.model")
    elif isinstance(tokenizer, ByteLevelBPE):
        text = json.dumps(hf_tokenizer_json(tokenizer), ensure_ascii=False)
        (directory / "tokenizer.json").write_text(text, encoding="utf-8")
    else:
        raise TypeError(f"cannot export a tokenizer of type {type(tokenizer).__name__}")
    config = {
        f"{name}_token": token_text(tokenizer, getattr(tokenizer, f"{name}_id")) for name in ("bos", "eos", "pad", "unk")
    }
    config = {key: value for key, value in config.items() if value is not None}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


# -- comparing with transformers -------------------------------------------------------------------------------


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
