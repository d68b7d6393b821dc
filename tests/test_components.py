"""Each building block against its definition and against transformers' own module."""

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import needs_transformers
from llama_from_scratch import (
    Attention,
    LlamaConfig,
    RMSNorm,
    SwiGLU,
    apply_rope,
    apply_rope_complex,
    apply_rope_half,
    attention_weights,
    causal_mask,
    half_to_interleaved,
    interleaved_to_half,
    repeat_kv,
    rope_cos_sin,
    rope_frequencies,
)
from llama_from_scratch.checkpoints.hf import transformers_config


EPS = torch.finfo(torch.float32).eps  # 1.19e-7: float32 rounds every result to within EPS / 2 of its value


def hf_llama():
    """transformers' Llama modelling code (imported inside the tests that need it)."""
    from transformers.models.llama import modeling_llama

    return modeling_llama


@needs_transformers
def test_rmsnorm_matches_definition_and_transformers():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 48) * 3 + 1
    norm = RMSNorm(48, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(48) + 0.5)
    # The definition in float64 (rounding 1e-16 relative: 1e-12 is out of its reach).
    x64, weight64 = x.double(), norm.weight.detach().double()
    by_hand = x64 / torch.sqrt((x64**2).mean(-1, keepdim=True) + 1e-6) * weight64
    torch.testing.assert_close(norm.double()(x64), by_hand, rtol=1e-12, atol=0)

    theirs = hf_llama().LlamaRMSNorm(48, eps=1e-6)
    theirs.weight.data.copy_(norm.weight.data)
    assert torch.equal(norm.float()(x), theirs(x))  # the same operations in the same order: equal to the bit


def test_rmsnorm_output_has_unit_rms_before_the_gain():
    torch.manual_seed(0)
    x = torch.randn(4, 64) * 10
    y = RMSNorm(64)(x)
    # Exactly 1 but for eps (1e-5 against a mean square near 100: 1e-7) and float32 rounding: the two means
    # of 64 squares round by at most 64 EPS / 2 each, the reciprocal square root and products by a few EPS.
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(4), rtol=2 * 64 * EPS, atol=0)


@needs_transformers
def test_swiglu_matches_transformers_mlp():
    torch.manual_seed(0)
    config = LlamaConfig(dim=32, n_layers=1, n_heads=4, vocab_size=16, hidden_dim=80)
    ours = SwiGLU(32, 80)
    theirs = hf_llama().LlamaMLP(transformers_config(config))
    theirs.gate_proj.weight.data.copy_(ours.w1.weight.data)
    theirs.up_proj.weight.data.copy_(ours.w3.weight.data)
    theirs.down_proj.weight.data.copy_(ours.w2.weight.data)
    x = torch.randn(3, 7, 32)
    assert torch.equal(ours(x), theirs(x))  # the same operations in the same order: equal to the bit
    by_hand = ours.w2(F.silu(ours.w1(x)) * ours.w3(x))
    assert torch.equal(ours(x), by_hand)


def test_rope_frequencies_fall_geometrically_from_one():
    freqs = rope_frequencies(8, theta=10000.0)
    # Each a float32 power, correct to within an EPS or two: float32's default rtol (1.3e-6) holds it.
    torch.testing.assert_close(freqs, torch.tensor([1.0, 0.1, 0.01, 0.001]))


def test_rope_preserves_norms():
    torch.manual_seed(0)
    x = torch.randn(1, 10, 2, 16)
    cos, sin = rope_cos_sin(torch.arange(10), 16)
    # A rotation keeps the norm exactly; float32 rounding of cos, sin, the products and a 16-term norm moves
    # it by a few EPS relative, well inside float32's default rtol (1.3e-6, about 11 EPS).
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1))


def test_rope_scores_depend_only_on_relative_offset():
    """q at position m and k at position n: q'.k' is the same for every (m, n) with equal m - n."""
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)

    def score(m: int, n: int) -> float:
        cos_m, sin_m = rope_cos_sin(torch.tensor([m]), 32)
        cos_n, sin_n = rope_cos_sin(torch.tensor([n]), 32)
        return float((apply_rope(q, cos_m, sin_m) * apply_rope(k, cos_n, sin_n)).sum())

    # Exactly equal but for rounding: the angle m * theta_i is rounded to float32 (an error up to m EPS / 2
    # radians, m <= 116 here), cos and sin add about EPS each, and the 32-term dot product 32 EPS / 2 relative.
    # A rotation off by delta radians moves a vector by |v| delta, so a score moves by at most |q| |k| times:
    bound = (q.norm() * k.norm()).item() * (116 + 32) * EPS
    for offset in (0, 1, 5, 17):
        scores = [score(n + offset, n) for n in (0, 3, 40, 99)]
        assert max(scores) - min(scores) <= bound, (offset, scores)
    assert abs(score(5, 0) - score(0, 0)) > bound  # but it does depend on the offset


def test_complex_form_equals_interleaved_pairs():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 16)
    cos, sin = rope_cos_sin(torch.arange(6), 16, theta=500.0)
    # The same two products and one sum per value, computed by the complex kernel in its own order:
    # a few EPS apart, inside float32's default tolerances (1.3e-6 relative, 1e-5 absolute).
    torch.testing.assert_close(apply_rope_complex(x, cos, sin), apply_rope(x, cos, sin))


@needs_transformers
def test_rotate_half_matches_transformers():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 16)  # (batch, seq, heads, head_dim)
    cos, sin = rope_cos_sin(torch.arange(6), 16)
    full_cos, full_sin = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
    theirs, _ = hf_llama().apply_rotary_pos_emb(x, x, full_cos, full_sin, unsqueeze_dim=1)
    assert torch.equal(apply_rope_half(x, cos, sin), theirs)  # the same products and sums: equal to the bit


@pytest.mark.parametrize("n_heads", [1, 4])
def test_both_layouts_give_the_same_attention_scores(n_heads):
    """Permuting wq/wk rows from interleaved to rotate-half leaves every score unchanged."""
    torch.manual_seed(0)
    head_dim, dim, seq = 16, 24, 9
    # In float64: the permuted rows give every score as the same 16 products summed in another order, so the
    # two differ by float64 rounding (2.2e-16 relative, on scores of |q| |k| ~ 100) far below the 1e-10 allowed.
    wq = torch.randn(n_heads * head_dim, dim, dtype=torch.float64)
    wk = torch.randn(n_heads * head_dim, dim, dtype=torch.float64)
    x = torch.randn(2, seq, dim, dtype=torch.float64)
    cos, sin = rope_cos_sin(torch.arange(seq), head_dim)

    def scores(wq, wk, rope):
        q = rope((x @ wq.T).view(2, seq, n_heads, head_dim), cos, sin).transpose(1, 2)
        k = rope((x @ wk.T).view(2, seq, n_heads, head_dim), cos, sin).transpose(1, 2)
        return q @ k.transpose(-2, -1)

    interleaved = scores(wq, wk, apply_rope)
    half = scores(interleaved_to_half(wq, n_heads), interleaved_to_half(wk, n_heads), apply_rope_half)
    torch.testing.assert_close(half, interleaved, rtol=1e-10, atol=1e-10)
    # Without the permutation the layouts disagree, by scores' own size: the permutation is what makes them equal.
    assert (scores(wq, wk, apply_rope_half) - interleaved).abs().max() > 1.0


def test_permutations_are_inverse_and_check_shapes():
    torch.manual_seed(0)
    w = torch.randn(6 * 8, 5)
    torch.testing.assert_close(half_to_interleaved(interleaved_to_half(w, 6), 6), w, rtol=0, atol=0)
    assert not torch.equal(interleaved_to_half(w, 6), w)
    with pytest.raises(ValueError, match=r"divisible by 2 \* n_heads"):
        interleaved_to_half(torch.randn(30, 5), 4)


def test_repeat_kv_repeats_each_head_in_place():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 4)
    torch.testing.assert_close(repeat_kv(x, 4), x.repeat_interleave(4, dim=1), rtol=0, atol=0)
    assert repeat_kv(x, 1) is x


def test_causal_mask_with_and_without_a_cached_past():
    assert torch.equal(causal_mask(3, 3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    # Two new queries after three cached positions sit at positions 3 and 4.
    assert torch.equal(causal_mask(2, 5), torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool))


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])  # MHA, GQA, MQA
def test_explicit_attention_equals_fused_sdpa(n_kv_heads):
    torch.manual_seed(0)
    # In float64: the fused kernel and the step-by-step softmax add in different orders; float64 rounding
    # (2.2e-16 relative, sums of 11 terms) stays far below the 1e-12 allowed.
    config = LlamaConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=n_kv_heads, vocab_size=16)
    attention = Attention(config).double()
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    cos, sin = rope_cos_sin(torch.arange(11), config.head_dim)
    fused = attention(x, cos, sin)
    weights = attention.weights(x, cos, sin)
    _, _, v = attention.qkv(x, cos, sin)
    explicit = attention.wo((weights @ repeat_kv(v, config.n_rep)).transpose(1, 2).flatten(2))
    torch.testing.assert_close(explicit, fused, rtol=1e-12, atol=1e-12)
    assert weights.shape == (2, 4, 11, 11)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 11, dtype=torch.float64))  # float64 defaults: 1e-7
    assert torch.all(weights.triu(diagonal=1) == 0)  # no token sees the future


def test_attention_weights_are_the_scaled_softmax():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)
    expected = torch.softmax((q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(~causal_mask(3, 3), -math.inf), -1)
    # The same operations in float32, perhaps fused in another order: float32's defaults (1.3e-6 relative).
    torch.testing.assert_close(attention_weights(q, k, causal_mask(3, 3)), expected)
