"""Shared helpers: a model of ours and a transformers model holding the same weights."""

from __future__ import annotations

import pytest
import torch

from llama_from_scratch import Llama, LlamaConfig
from llama_from_scratch.hf_format import config_to_hf, meta_to_hf_state_dict

transformers = pytest.importorskip("transformers")


def random_llama(config: LlamaConfig, seed: int = 0) -> Llama:
    """A model with weights large enough that a wrong layout or a missing step shows in the logits.

    Norm gains are randomised too (around 1) so that a norm loaded into the
    wrong place cannot go unnoticed.
    """
    torch.manual_seed(seed)
    model = Llama(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.1)
    return model.eval()


def hf_config(config: LlamaConfig) -> transformers.LlamaConfig:
    fields = {k: v for k, v in config_to_hf(config).items() if k not in ("architectures", "model_type")}
    return transformers.LlamaConfig(**fields)


def to_transformers(model: Llama) -> transformers.LlamaForCausalLM:
    """A ``transformers.LlamaForCausalLM`` holding exactly ``model``'s weights (fp32, eval mode)."""
    hf = transformers.LlamaForCausalLM(hf_config(model.config)).eval()
    state = meta_to_hf_state_dict(model.state_dict(), model.config)
    if model.config.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    hf.load_state_dict(state, strict=True)
    return hf
