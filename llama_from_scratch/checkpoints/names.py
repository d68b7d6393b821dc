"""Translating tensor names between checkpoint formats.

Each format names the same weights differently; layer ``3``'s gate
projection is ``layers.3.feed_forward.w1.weight`` for Meta (and this package),
``model.layers.3.mlp.gate_proj.weight`` for Hugging Face and
``blk.3.ffn_gate.weight`` for GGUF. :data:`TENSOR_NAMES` lists every
weight once, in all three spellings, as templates with ``{i}`` for the
layer index; :class:`NameMap` turns one column of it into translations in
both directions (:data:`HF_NAMES`, :data:`GGUF_NAMES`).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..config import LlamaConfig
from ..errors import FormatError


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(\d+)") + "$")


def _rename(name: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in table:
        match = pattern.match(name)
        if match:
            return template.format(i=match.group(1)) if match.groups() else template
    return None


class NameMap:
    """Both directions of a ``{their template: Meta template}`` table."""

    def __init__(self, templates: dict[str, str]):
        self._to_meta = [(_pattern(theirs), meta) for theirs, meta in templates.items()]
        self._from_meta = [(_pattern(meta), theirs) for theirs, meta in templates.items()]

    def to_meta(self, name: str) -> str | None:
        """Their name -> Meta's name; None if the name is not a Llama weight."""
        return _rename(name, self._to_meta)

    def from_meta(self, name: str) -> str | None:
        """Meta's name -> their name; None if there is none."""
        return _rename(name, self._from_meta)


# Meta's name (this package's) -> (Hugging Face's name, GGUF's name); {i} is the layer index.
TENSOR_NAMES: dict[str, tuple[str, str]] = {
    "tok_embeddings.weight": ("model.embed_tokens.weight", "token_embd.weight"),
    "norm.weight": ("model.norm.weight", "output_norm.weight"),
    "output.weight": ("lm_head.weight", "output.weight"),
    "layers.{i}.attention_norm.weight": ("model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight"),
    "layers.{i}.attention.wq.weight": ("model.layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight"),
    "layers.{i}.attention.wk.weight": ("model.layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight"),
    "layers.{i}.attention.wv.weight": ("model.layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight"),
    "layers.{i}.attention.wo.weight": ("model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight"),
    "layers.{i}.ffn_norm.weight": ("model.layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight"),
    "layers.{i}.feed_forward.w1.weight": ("model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight"),
    "layers.{i}.feed_forward.w2.weight": ("model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight"),
    "layers.{i}.feed_forward.w3.weight": ("model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight"),
}
# Not weights: RoPE tables some checkpoints carry. Meta's LLaMA 1 files hold the inverse frequencies as
# "rope.freqs" (recomputed from the config instead); Llama 3.1 GGUF files hold llama3 scaling's per-pair
# divisors as "rope_freqs.weight" (read into the config's rope_scaling).
META_ROPE_FREQS = "rope.freqs"
GGUF_ROPE_FREQS = "rope_freqs.weight"
# A reward model's scalar head (chapter 13): Hugging Face's LlamaForSequenceClassification calls it
# "score.weight", and so does this package. Only reward models hold it; language models are refused it on loading.
REWARD_HEAD = "score.weight"
HF_NAMES = NameMap({**{hf: meta for meta, (hf, _) in TENSOR_NAMES.items()}, REWARD_HEAD: REWARD_HEAD})
GGUF_NAMES = NameMap({gguf: meta for meta, (_, gguf) in TENSOR_NAMES.items()})


_LAYER = re.compile(r"layers\.(\d+)\.")


def check_config_fits(
    config: LlamaConfig, shapes: dict[str, tuple[int, ...]], source: str | Path, fields: dict[str, str]
) -> None:
    """Check a config against the tensors a checkpoint holds (``shapes``, Meta's names) *before* building a model.

    Building a model costs time and memory in proportion to its number of layers, so a config that claims
    100,000 layers must be caught first: the layer indices in the tensor names must be exactly
    ``0 .. n_layers - 1``, and the embedding's shape ``(vocab_size, dim)``. ``fields`` maps ``n_layers``,
    ``vocab_size`` and ``dim`` to the file's own names for them, for the message.
    """
    layers = {int(match.group(1)) for name in shapes if (match := _LAYER.match(name))}
    if layers != set(range(config.n_layers)):
        found = f"{len(layers)} layer(s)"
        if layers and layers != set(range(len(layers))):
            found += f" numbered from {min(layers)} to {max(layers)}"
        raise FormatError(f"{source}: {fields['n_layers']} is {config.n_layers}, but the weights hold {found}")
    embedding = shapes.get("tok_embeddings.weight")
    if embedding is not None and embedding != (config.vocab_size, config.dim):
        raise FormatError(
            f"{source}: ({fields['vocab_size']}, {fields['dim']}) is ({config.vocab_size}, {config.dim}), "
            f"but the weights' tok_embeddings.weight has shape {embedding}"
        )
