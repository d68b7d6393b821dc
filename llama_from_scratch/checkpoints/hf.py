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

RoPE scaling (:mod:`llama_from_scratch.rope_scaling`) is spelled two ways in a
``config.json``: transformers 4.x's ``rope_scaling`` and 5.x's ``rope_parameters``;
:func:`rope_scaling_from_hf` reads both, :func:`rope_parameters_to_hf` writes them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..config import LlamaConfig
from ..errors import FormatError
from ..chat import chat_template
from ..files import REQUIRED, check_type, json_field, plain_file_name, read_json, regular_file
from ..rope import half_to_interleaved, interleaved_to_half
from ..rope_scaling import OPTIONAL_FIELDS, REQUIRED_FIELDS, RopeScaling
from ..tokenization.byte_bpe import GPT2_PATTERN, ByteLevelBPE
from ..tokenization.tokenizer import token_text
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
    if tensor.ndim != 2:
        return tensor  # not a matrix: the wrong shape, which ``assemble`` reports with the expected one
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

    RoPE scaling is read in both spellings (:func:`rope_scaling_from_hf`).
    Raises ``ValueError`` naming ``source`` and the field for anything this
    package does not implement (another architecture, biases, Phi-3's longrope),
    and :class:`FormatError` for a field of the wrong type: ``"tie_word_embeddings": "false"``
    is a string, not false.
    """

    def field(key: str, kind: str, default: object = None, nullable: bool = False) -> object:
        return json_field(hf, key, kind, source, default, nullable)

    model_type = field("model_type", "str")
    if model_type != "llama":
        raise ValueError(f"{source}: model_type is {model_type!r}; this package loads 'llama' models")
    hidden_act = field("hidden_act", "str", "silu")
    if hidden_act != "silu":
        raise ValueError(f"{source}: hidden_act is {hidden_act!r}; LLaMA's SwiGLU needs 'silu'")
    for name in ("attention_bias", "mlp_bias"):
        if field(name, "bool", False):
            raise ValueError(f"{source}: {name} is true; LLaMA has no biases")
    for spelling in ("rope_scaling", "rope_parameters"):
        field(spelling, "dict", {}, nullable=True)  # each an object (or null), whichever is read
    key = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    rope = field(key, "dict", {}, nullable=True)
    rope_scaling = rope_scaling_from_hf(hf, str(source))
    if hf.get("rope_parameters") and hf.get("rope_scaling"):  # both spellings (as this package writes them)
        v4 = rope_scaling_from_hf({k: v for k, v in hf.items() if k != "rope_parameters"}, str(source))
        if v4 != rope_scaling:
            raise FormatError(f"{source}: rope_scaling and rope_parameters describe different RoPE scalings")
    missing = [
        f
        for f in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
        if f not in hf
    ]
    if missing:
        raise ValueError(f"{source}: missing field(s) {', '.join(missing)}")
    n_heads = field("num_attention_heads", "int")
    rope_theta = json_field(rope, "rope_theta", "float", f"{source}: {key}", None)
    top_theta = field("rope_theta", "float", None, nullable=True)
    if rope_theta is not None and top_theta is not None and rope_theta != top_theta:
        raise FormatError(f"{source}: rope_theta is {top_theta} but {key}.rope_theta is {rope_theta}")
    fields = dict(
        dim=field("hidden_size", "int"),
        n_layers=field("num_hidden_layers", "int"),
        n_heads=n_heads,
        n_kv_heads=field("num_key_value_heads", "int", n_heads, nullable=True),
        vocab_size=field("vocab_size", "int"),
        hidden_dim=field("intermediate_size", "int"),
        head_dim=field("head_dim", "int", nullable=True),
        norm_eps=field("rms_norm_eps", "float", 1e-6),
        rope_theta=float(rope_theta if rope_theta is not None else top_theta if top_theta is not None else 10000.0),
        max_seq_len=field("max_position_embeddings", "int", 2048),
        tie_embeddings=field("tie_word_embeddings", "bool", False),
        rope_scaling=rope_scaling,
    )
    if rope_scaling is not None and rope_scaling.type == "dynamic":
        # transformers reads a dynamic model's *original* context from max_position_embeddings; the context
        # the scaling stretches it to is factor times that.
        fields["max_seq_len"] = dynamic_context(rope_scaling)
    try:
        return LlamaConfig(**fields)
    except (TypeError, ValueError) as error:
        raise FormatError(f"{source}: {error}") from None


# Keys a Hugging Face rope dictionary may hold besides the parameters of RopeScaling.
_HF_BOOKKEEPING = ("type", "rope_type", "rope_theta")


def rope_scaling_from_hf(hf: dict, source: str = "config.json") -> RopeScaling | None:
    """The RoPE scaling of a parsed Hugging Face ``config.json``; ``None`` for plain RoPE.

    Reads both spellings: transformers 4.x ``rope_scaling`` (``type`` or ``rope_type``; ``rope_theta`` at
    the top level) and 5.x ``rope_parameters`` (``rope_type``, ``rope_theta`` inside). As in
    ``transformers``, ``dynamic`` takes its original context from the top-level
    ``max_position_embeddings``, and ``yarn``/``llama3`` fall back to it when the dictionary has no
    ``original_max_position_embeddings`` (2048 if absent, as there). ``ValueError`` names ``source`` and the
    field for a bad value; ``NotImplementedError`` for ``longrope`` and for parameters this package does not
    compute (YaRN's ``mscale``, ``partial_rotary_factor``, ...).
    """
    key = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    rope = hf.get(key) or {}
    where = f"{source}: {key}"
    if not isinstance(rope, dict):
        raise ValueError(f"{where} must be an object, got {rope!r:.60} ({type(rope).__name__})")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if not isinstance(rope_type, str):
        raise ValueError(f"{where}: rope_type must be a string, got {rope_type!r:.60} ({type(rope_type).__name__})")
    if rope_type == "default":
        return None
    if rope_type == "longrope":
        raise NotImplementedError(f"{where}: rope_type 'longrope' (Phi-3's per-pair factors) is not implemented")
    if rope_type not in REQUIRED_FIELDS:
        raise ValueError(f"{where}: rope_type must be one of default, {', '.join(REQUIRED_FIELDS)}, got {rope_type!r}")
    known = {field.name for field in fields(RopeScaling)}
    unknown = sorted(k for k in rope if k not in known and k not in _HF_BOOKKEEPING)
    if unknown:
        allowed = REQUIRED_FIELDS[rope_type] + OPTIONAL_FIELDS.get(rope_type, ())
        raise NotImplementedError(
            f"{where}: {', '.join(unknown)}: not implemented; {rope_type!r} scaling takes {', '.join(allowed)}"
        )
    parameters = {k: v for k, v in rope.items() if k in known and k != "type" and v is not None}
    if rope_type == "dynamic" or (rope_type != "linear" and "original_max_position_embeddings" not in parameters):
        parameters["original_max_position_embeddings"] = hf.get("max_position_embeddings", 2048)
    try:
        return RopeScaling(rope_type, **parameters)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def rope_parameters_to_hf(scaling: RopeScaling | None, theta: float) -> dict:
    """The 5.x ``rope_parameters`` dictionary of ``scaling`` and base ``theta``: :func:`rope_scaling_from_hf` reversed.

    For ``dynamic`` the original context is not part of the dictionary: ``transformers`` takes it from
    ``max_position_embeddings``, which must then be set to ``scaling.original_max_position_embeddings``.
    """
    parameters = {"rope_type": "default" if scaling is None else scaling.type, "rope_theta": theta}
    if scaling is not None:
        given = {f.name: getattr(scaling, f.name) for f in fields(scaling)[1:]}
        parameters.update((name, value) for name, value in given.items() if value is not None)
        if scaling.type == "dynamic":
            del parameters["original_max_position_embeddings"]
    return parameters


def dynamic_context(scaling: RopeScaling) -> int:
    """The context of a model with ``dynamic`` scaling as read from a ``config.json``: factor x the original."""
    return int(scaling.factor * scaling.original_max_position_embeddings)


def config_to_hf(config: LlamaConfig) -> dict:
    """The ``config.json`` dictionary of a Hugging Face ``LlamaForCausalLM`` with this shape.

    RoPE is written in both spellings, so that transformers 4.x (``rope_scaling``, ``rope_theta`` at the top
    level) and 5.x (``rope_parameters``) read the same model. A ``dynamic`` model's ``max_position_embeddings``
    is its original context (transformers takes it from there), so only a ``max_seq_len`` of factor times
    that can be written: any other would come back changed, and is a ``ValueError`` instead.
    """
    scaling, max_position_embeddings = config.rope_scaling, config.max_seq_len
    if scaling is not None and scaling.type == "dynamic":
        if config.max_seq_len != dynamic_context(scaling):
            raise ValueError(
                f"config.json cannot record max_seq_len={config.max_seq_len} with dynamic RoPE scaling: it stores "
                f"the original context ({scaling.original_max_position_embeddings}), which is read back as "
                f"factor x original = {dynamic_context(scaling)}"
            )
        max_position_embeddings = scaling.original_max_position_embeddings
    rope_parameters = rope_parameters_to_hf(scaling, config.rope_theta)
    rope_scaling = None if scaling is None else {k: v for k, v in rope_parameters.items() if k != "rope_theta"}
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
        "rope_scaling": rope_scaling,
        "rope_parameters": rope_parameters,
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
    }


def read_hf_config(directory: Path) -> LlamaConfig:
    """Read and translate ``directory/config.json``."""
    path = directory / "config.json"
    return config_from_hf(read_json(path), str(path))


def safetensors_files(directory: Path) -> list[Path]:
    """The weight files of a Hugging Face directory: one file, or the shards its index lists.

    The index may only name files inside ``directory``: a name such as ``../../secret`` is refused.
    """
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = json_field(read_json(index), "weight_map", "dict", index, REQUIRED)
        names = [plain_file_name(name, f"{index}: weight_map[{t!r}]", directory) for t, name in weight_map.items()]
        files = [directory / name for name in dict.fromkeys(names)]
    elif single.exists():
        files = [single]
    else:
        raise FileNotFoundError(
            f"{directory}: no model.safetensors or model.safetensors.index.json next to config.json"
        )
    for file in files:
        if not file.exists():
            raise FileNotFoundError(f"{file}: listed in {index.name} but missing")
        regular_file(file)
    return files


def _safetensors_entries(directory: Path, read: Callable) -> Iterator[tuple[Path, str, str, object]]:
    """``(file, Hugging Face name, Meta name, read(f, name))`` for every weight of every safetensors file."""
    for file in safetensors_files(directory):
        try:
            with safe_open(str(file), framework="pt") as f:
                for hf_name in f.keys():
                    if hf_name.endswith("rotary_emb.inv_freq"):
                        continue
                    meta_name = hf_to_meta_name(hf_name)
                    if meta_name is None:
                        raise FormatError(f"{file}: tensor {hf_name!r} is not a weight of a Llama model")
                    yield file, hf_name, meta_name, read(f, hf_name)
        except (SafetensorError, TypeError) as error:  # TypeError: a dtype that PyTorch has no type for
            raise FormatError(f"{file}: not a readable safetensors file ({error})") from None


def hf_tensor_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every weight (under this package's names), read from the file headers alone."""
    entries = _safetensors_entries(directory, lambda f, name: tuple(f.get_slice(name).get_shape()))
    return {meta_name: shape for _, _, meta_name, shape in entries}


def read_hf_tensors(directory: Path, config: LlamaConfig) -> Iterator[tuple[str, str, torch.Tensor]]:
    """Yield ``(file name, Meta name, tensor)`` for every weight, already in this package's layout.

    Old checkpoints also saved RoPE's ``rotary_emb.inv_freq``: it is
    recomputed from the config, so it is skipped. Any other unknown tensor
    raises an error rather than being ignored.
    """
    for file, hf_name, meta_name, tensor in _safetensors_entries(directory, lambda f, name: f.get_tensor(name)):
        try:
            tensor = hf_to_meta_tensor(meta_name, tensor, config)
        except ValueError as error:
            raise FormatError(f"{file}: tensor {hf_name!r}: {error}") from None
        yield file.name, meta_name, tensor


def write_hf_config(config: LlamaConfig, directory: Path, dtype: torch.dtype) -> None:
    """Write ``config.json`` into ``directory``."""
    hf_config = {**config_to_hf(config), "torch_dtype": str(dtype).removeprefix("torch.")}
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")


def write_hf(config: LlamaConfig, weights: dict[str, torch.Tensor], directory: Path, dtype: torch.dtype) -> None:
    """Write ``config.json`` and ``model.safetensors`` (``weights`` in this package's names) into ``directory``."""
    write_hf_config(config, directory, dtype)
    save_file(meta_to_hf_state_dict(weights, config), directory / "model.safetensors", metadata={"format": "pt"})


# -- the tokenizer ---------------------------------------------------------------------------------------------


def read_tokenizer_config(directory: Path) -> dict:
    """``tokenizer_config.json`` of a directory (special tokens, chat template), or {} if there is none."""
    path = Path(directory) / "tokenizer_config.json"
    return read_json(path) if path.exists() else {}


def read_chat_template(directory: Path) -> str | None:
    """The chat template in a directory's ``tokenizer_config.json``, or None.

    It is a Jinja string, or a list of named templates (``[{"name": "default", "template": ...}, ...]``),
    of which the one named ``default`` is used, as ``transformers`` does.
    """
    path = Path(directory) / "tokenizer_config.json"
    template = read_tokenizer_config(directory).get("chat_template")
    if isinstance(template, list):
        named = {}
        for i, entry in enumerate(template):
            check_type(entry, "dict", f"{path}: chat_template[{i}]")
            named[json_field(entry, "name", "str", f"{path}: chat_template[{i}]", REQUIRED)] = entry
        if "default" not in named:
            return None
        template = named["default"].get("template")
        return chat_template(check_type(template, "str", f"{path}: the default chat_template's template"), str(path))
    return template if template is None else chat_template(check_type(template, "str", f"{path}: chat_template"), str(path))


def _compiled(pattern: object, where: str) -> str:
    """``pattern`` if it is a regular expression the ``regex`` package compiles."""
    import regex

    check_type(pattern, "str", where)
    try:
        regex.compile(pattern)
    except (regex.error, RecursionError, OverflowError) as error:
        raise FormatError(f"{where} is not a valid regular expression ({error})") from None
    return pattern


def _patterns_from_hf(pre_tokenizer: dict | None, path: Path, where: str = "pre_tokenizer") -> tuple[list[str], bool]:
    """The regex patterns of a ``pre_tokenizer`` entry, and whether a ByteLevel step is among them."""
    if pre_tokenizer is None:
        return [], False
    check_type(pre_tokenizer, "dict", f"{path}: {where}")

    def field(key: str, kind: str, default: object = None) -> object:
        return json_field(pre_tokenizer, key, kind, f"{path}: {where}", default)

    kind = field("type", "str")
    if kind == "Sequence":
        patterns, byte_level = [], False
        for i, step in enumerate(field("pretokenizers", "list", REQUIRED)):
            p, b = _patterns_from_hf(step, path, f"{where}.pretokenizers[{i}]")
            patterns += p
            byte_level |= b
        return patterns, byte_level
    if kind == "ByteLevel":
        if field("add_prefix_space", "bool"):
            raise NotImplementedError(f"{path}: ByteLevel with add_prefix_space=true is not supported")
        return ([GPT2_PATTERN] if field("use_regex", "bool", True) else []), True
    if kind == "Digits":
        return [r"\p{N}" if field("individual_digits", "bool") else r"\p{N}+"], False
    if kind == "Split":
        pattern = field("pattern", "dict", REQUIRED)
        behavior = pre_tokenizer.get("behavior")
        if behavior != "Isolated" or field("invert", "bool"):
            raise NotImplementedError(
                f"{path}: Split pre-tokenizer with behavior={behavior!r}, "
                f"invert={pre_tokenizer.get('invert')} is not supported (only Isolated)"
            )
        if "Regex" in pattern:
            return [_compiled(pattern["Regex"], f"{path}: {where}.pattern.Regex")], False
        literal = json_field(pattern, "String", "str", f"{path}: {where}.pattern", REQUIRED)
        return [re.escape(literal)], False
    raise NotImplementedError(f"{path}: pre-tokenizer type {kind!r} is not supported")


def _special_token_text(config: dict, name: str, path: Path) -> str | None:
    """``tokenizer_config.json``'s ``bos_token`` (or eos, pad, unk): ``"<s>"`` or ``{"content": "<s>", ...}``."""
    value = config.get(f"{name}_token")
    if isinstance(value, dict):
        return json_field(value, "content", "str", f"{path}: {name}_token", REQUIRED)
    return json_field(config, f"{name}_token", "str", path, nullable=True)


def _merge_rule(merge: object, where: str) -> tuple[str, str]:
    """A merge rule written as ``"a b"`` or as ``["a", "b"]``."""
    pair = merge.split(" ", 1) if isinstance(merge, str) else merge
    if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair)):
        raise FormatError(f'{where} must be "left right" or a list of two strings, got {merge!r:.60}')
    return pair[0], pair[1]


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
    vocab = json_field(model, "vocab", "dict", f"{path}: model", REQUIRED)
    for piece, i in vocab.items():
        if not (isinstance(i, int) and not isinstance(i, bool) and i >= 0):
            raise FormatError(f"{path}: model.vocab[{piece!r}] must be a token id (an integer >= 0), got {i!r:.60}")
    merges = [
        _merge_rule(m, f"{path}: model.merges[{i}]")
        for i, m in enumerate(json_field(model, "merges", "list", f"{path}: model", REQUIRED))
    ]
    special = {}
    for i, token in enumerate(json_field(spec, "added_tokens", "list", path, [], nullable=True)):
        where = f"{path}: added_tokens[{i}]"
        check_type(token, "dict", where)
        content = json_field(token, "content", "str", where, REQUIRED)
        token_id = json_field(token, "id", "int", where, REQUIRED)
        if not content or token_id < 0:
            raise FormatError(f"{where} is {content!r} with id {token_id}; expected a non-empty text and an id >= 0")
        special[content] = token_id
    config = read_tokenizer_config(path.parent)
    config_path = path.parent / "tokenizer_config.json"
    ids = {}
    for name in ("bos", "eos", "pad", "unk"):
        text = _special_token_text(config, name, config_path)
        ids[f"{name}_id"] = special.get(text, vocab.get(text)) if text is not None else None
    ignore_merges = json_field(model, "ignore_merges", "bool", f"{path}: model", False, nullable=True)
    return ByteLevelBPE(vocab, merges, patterns, special, ignore_merges=ignore_merges, **ids)


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
        f"{name}_token": token_text(tokenizer, getattr(tokenizer, f"{name}_id"))
        for name in ("bos", "eos", "pad", "unk")
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
