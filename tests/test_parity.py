"""The whole model against transformers.LlamaForCausalLM holding the same weights: the same logits in float32.

"The same" means: equal up to float32 rounding, measured on each input against our own float64 result
(see ``helpers.assert_same_logits``), not a fixed number that a CPU rounding differently could cross.
"""

import pytest
import torch

from helpers import assert_same_logits, float32_rounding, needs_transformers, random_llama
from llama_from_scratch import LlamaConfig
from llama_from_scratch.checkpoints.hf import to_transformers

CONFIGS = {
    # multi-head attention, LLaMA 1's norm eps
    "mha": LlamaConfig(dim=64, n_layers=2, n_heads=4, vocab_size=128, multiple_of=32, norm_eps=1e-6),
    # grouped-query attention with a non-default RoPE base, as Llama 3
    "gqa-theta": LlamaConfig(
        dim=96, n_layers=3, n_heads=6, n_kv_heads=2, vocab_size=250, hidden_dim=200, rope_theta=500000.0
    ),
    # multi-query attention, odd sizes everywhere
    "mqa-odd": LlamaConfig(dim=60, n_layers=3, n_heads=5, n_kv_heads=1, vocab_size=97, hidden_dim=131, norm_eps=3e-5),
    # SmolLM2's shape in miniature: GQA 3:1, tied embeddings, RoPE base 1e5
    "tied-smol": LlamaConfig(
        dim=72,
        n_layers=2,
        n_heads=9,
        n_kv_heads=3,
        vocab_size=151,
        hidden_dim=192,
        rope_theta=100000.0,
        tie_embeddings=True,
    ),
    # a head_dim that is not dim // n_heads
    "head-dim": LlamaConfig(dim=48, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=20, vocab_size=64, hidden_dim=100),
}


@needs_transformers
@pytest.mark.parametrize("name", CONFIGS)
def test_logits_equal_transformers(name):
    config = CONFIGS[name]
    ours = random_llama(config)
    theirs = to_transformers(ours)
    tokens = torch.randint(0, config.vocab_size, (2, 33), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(tokens).logits
        got = ours(tokens)
    assert got.shape == (2, 33, config.vocab_size)
    assert expected.abs().max() > 1.0  # the logits are not trivially small
    assert_same_logits(got, expected, float32_rounding(ours, tokens))


@needs_transformers
def test_parity_fails_when_a_weight_differs():
    """The parity check can fail: a single perturbed weight shows in the logits."""
    config = CONFIGS["gqa-theta"]
    ours = random_llama(config)
    theirs = to_transformers(ours)
    tokens = torch.arange(20)[None]
    with torch.no_grad():
        ours.layers[1].attention.wk.weight[0, 0] += 0.05
        expected = theirs(tokens).logits
    with pytest.raises(AssertionError, match="more than float32 rounding allows"):
        assert_same_logits(ours(tokens), expected, float32_rounding(ours, tokens))


def test_tied_model_shares_one_matrix():
    model = random_llama(CONFIGS["tied-smol"])
    assert model.output.weight is model.tok_embeddings.weight
    untied = random_llama(CONFIGS["mha"])
    assert untied.num_parameters() - untied.num_parameters(exclude_embeddings=True) == 128 * 64
