"""Chapter 11's code: RoPE scaling against transformers, FlashAttention against SDPA, the Llama 3 presets.

Float32 bounds: the scaled inverse frequencies are computed by the same float32 operations as
``transformers`` up to the order of one division (``inv_freq / factor`` against ``1 / (factor * freq)``),
so they agree within ``2 * eps`` relative (``eps = 2**-23``; one rounding either way). FlashAttention is
compared in float64, where rounding is about 1e-16 per operation: 1e-10 is far above it, and far below
any wrong mask, offset or rescaling, which moves the output by O(0.1).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import assert_same_logits, float32_rounding, needs_transformers, random_llama
from llama_from_scratch import LlamaConfig, attention_weights, causal_mask, count_parameters, repeat_kv, rope_cos_sin
from llama_from_scratch.checkpoints.hf import to_transformers
from llama_from_scratch.long_context import (
    LLAMA3_PRESETS,
    LLAMA3_ROPE_SCALING,
    RopeScaling,
    flash_attention,
    rope_cos_sin_scaled,
    rope_parameters_to_hf,
    rope_scaling_from_hf,
    scaled_rope_frequencies,
)

FLOAT32_EPS = torch.finfo(torch.float32).eps

# Hugging Face rope parameters of every type (``rope_theta`` added per test), and the context they extend.
ORIGINAL = 16


def hf_rope_parameters(rope_type: str, factor: float, original: int = ORIGINAL) -> dict:
    return {
        "linear": {"rope_type": "linear", "factor": factor},
        "dynamic": {"rope_type": "dynamic", "factor": factor},
        "yarn": {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original},
        "yarn-betas": {
            "rope_type": "yarn",
            "factor": factor,
            "original_max_position_embeddings": original,
            "beta_fast": 16,
            "beta_slow": 2,
        },
        "yarn-attention": {
            "rope_type": "yarn",
            "factor": factor,
            "original_max_position_embeddings": original,
            "attention_factor": 0.9,
        },
        "llama3": {
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": original,
        },
    }[rope_type]


TYPES = ["linear", "dynamic", "yarn", "yarn-betas", "yarn-attention", "llama3"]


def hf_max_position_embeddings(rope_type: str, factor: float, original: int) -> int:
    """What transformers expects as max_position_embeddings: the original context for dynamic and YaRN."""
    return int(original * factor) + 1 if rope_type == "llama3" else original


# -- RoPE scaling against transformers -------------------------------------------------------------------------------


@needs_transformers
@pytest.mark.parametrize("rope_type", TYPES)
@pytest.mark.parametrize("head_dim", [8, 64, 128])
@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_scaled_frequencies_equal_transformers(rope_type, head_dim, theta):
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for factor in (1.0, 2.0, 8.0, 32.0):
        for original in (256, 8192):
            max_pos = hf_max_position_embeddings(rope_type, factor, original)
            parameters = dict(hf_rope_parameters(rope_type, factor, original), rope_theta=theta)
            hf_config = transformers.LlamaConfig(
                hidden_size=2 * head_dim,
                num_attention_heads=2,
                head_dim=head_dim,
                max_position_embeddings=max_pos,
                rope_parameters=dict(parameters),
            )
            scaling = rope_scaling_from_hf({"rope_parameters": parameters, "max_position_embeddings": max_pos})
            # dynamic depends on the current length: at, and far past, the original context
            for seq_len in (None, 3 * original + 5) if rope_type == "dynamic" else (None,):
                expected, expected_factor = ROPE_INIT_FUNCTIONS[parameters["rope_type"]](hf_config, None, seq_len)
                got, got_factor = scaled_rope_frequencies(head_dim, theta, scaling, seq_len)
                assert got.dtype == torch.float32 and got.shape == (head_dim // 2,)
                torch.testing.assert_close(got, expected, rtol=2 * FLOAT32_EPS, atol=0)
                assert got_factor == pytest.approx(expected_factor, rel=1e-15)


def test_no_scaling_is_plain_rope():
    positions = torch.arange(50)
    cos, sin = rope_cos_sin_scaled(positions, 32, 500000.0, None)
    expected_cos, expected_sin = rope_cos_sin(positions, 32, 500000.0)
    assert torch.equal(cos, expected_cos) and torch.equal(sin, expected_sin)


def test_which_pairs_change():
    """Linear moves every pair; llama3 and YaRN keep the fastest pairs and divide the slowest by factor."""
    plain, _ = scaled_rope_frequencies(128, 500000.0, None)
    linear, _ = scaled_rope_frequencies(128, 500000.0, RopeScaling("linear", factor=8.0))
    assert torch.allclose(linear * 8, plain)
    yarn = RopeScaling("yarn", factor=8.0, original_max_position_embeddings=8192)
    for scaling in (LLAMA3_ROPE_SCALING["llama3.1-8b"], yarn):
        scaled, _ = scaled_rope_frequencies(128, 500000.0, scaling)
        assert torch.equal(scaled[:8], plain[:8])  # wavelengths of a few tokens: untouched
        torch.testing.assert_close(scaled[-8:], plain[-8:] / 8)  # longer than the context: interpolated
        assert torch.all(scaled <= plain) and torch.all(scaled >= plain / 8)


def test_dynamic_changes_nothing_within_the_original_context():
    scaling = RopeScaling("dynamic", factor=4.0, original_max_position_embeddings=1024)
    plain, _ = scaled_rope_frequencies(64, 10000.0, None)
    for seq_len in (None, 1, 1024):
        assert torch.equal(scaled_rope_frequencies(64, 10000.0, scaling, seq_len)[0], plain)
    longer, _ = scaled_rope_frequencies(64, 10000.0, scaling, 4096)
    assert longer[0] == plain[0] and torch.all(longer[1:] < plain[1:])


# -- a whole model past its original context, against transformers ----------------------------------------------------

MODEL_CONFIG = LlamaConfig(
    dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=101, hidden_dim=96, rope_theta=100.0, max_seq_len=64
)


def use_rope_scaling(model, scaling: RopeScaling | None) -> None:
    """The seam: replace the model's RoPE tables by scaled ones (model.py's ``_rope``, from outside)."""
    config = model.config

    def scaled_rope(tokens, start_pos):
        positions = torch.arange(start_pos, start_pos + tokens.shape[1], device=tokens.device)
        return rope_cos_sin_scaled(positions, config.head_dim, config.rope_theta, scaling, start_pos + tokens.shape[1])

    model._rope = scaled_rope


@needs_transformers
@pytest.mark.parametrize("rope_type", TYPES)
def test_model_past_the_original_context_equals_transformers(rope_type):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    factor = 4.0
    parameters = dict(hf_rope_parameters(rope_type, factor), rope_theta=MODEL_CONFIG.rope_theta)
    scaling = rope_scaling_from_hf({"rope_parameters": parameters, "max_position_embeddings": ORIGINAL})
    model = random_llama(MODEL_CONFIG)
    hf = to_transformers(model)
    hf.config.rope_parameters = parameters
    hf.config.max_position_embeddings = hf_max_position_embeddings(rope_type, factor, ORIGINAL)
    hf.model.rotary_emb = LlamaRotaryEmbedding(hf.config)
    use_rope_scaling(model, scaling)

    tokens = torch.randint(0, MODEL_CONFIG.vocab_size, (2, 3 * ORIGINAL))  # three times the original context
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
        unscaled = to_transformers(random_llama(MODEL_CONFIG))(tokens).logits
    assert_same_logits(ours, theirs, float32_rounding(model, tokens))
    assert (ours - unscaled).abs().max() > 1e-2  # the scaling did change the logits


# -- reading Hugging Face configs ------------------------------------------------------------------------------------


def test_both_spellings_read_the_same():
    llama31 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    v4_type = {"rope_scaling": {"type": "llama3", **llama31}, "rope_theta": 500000.0}
    v4_rope_type = {"rope_scaling": {"rope_type": "llama3", **llama31}, "rope_theta": 500000.0}
    v5 = {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, **llama31}}
    assert rope_scaling_from_hf(v4_type) == rope_scaling_from_hf(v4_rope_type) == rope_scaling_from_hf(v5)
    assert rope_scaling_from_hf(v5) == LLAMA3_ROPE_SCALING["llama3.1-8b"]
    yarn = {"factor": 4, "original_max_position_embeddings": 32768}
    assert (
        rope_scaling_from_hf({"rope_scaling": {"type": "yarn", **yarn}})
        == rope_scaling_from_hf({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, **yarn}})
        == RopeScaling("yarn", factor=4.0, original_max_position_embeddings=32768)
    )


@pytest.mark.parametrize("rope_type", TYPES)
def test_rope_parameters_round_trip(rope_type):
    parameters = dict(hf_rope_parameters(rope_type, 4.0), rope_theta=500000.0)
    hf = {"rope_parameters": parameters, "max_position_embeddings": ORIGINAL}
    scaling = rope_scaling_from_hf(hf)
    assert rope_parameters_to_hf(scaling, 500000.0) == parameters
    assert rope_parameters_to_hf(None, 1e4) == {"rope_type": "default", "rope_theta": 1e4}


def test_default_and_missing_rope_read_as_no_scaling():
    for hf in ({}, {"rope_scaling": None}, {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}):
        assert rope_scaling_from_hf(hf) is None


def test_dynamic_and_fallbacks_take_the_context_from_max_position_embeddings():
    hf = {"rope_scaling": {"type": "dynamic", "factor": 2.0}, "max_position_embeddings": 4096}
    dynamic = rope_scaling_from_hf(hf)
    assert dynamic == RopeScaling("dynamic", factor=2.0, original_max_position_embeddings=4096)
    yarn = rope_scaling_from_hf({"rope_scaling": {"type": "yarn", "factor": 2.0}, "max_position_embeddings": 4096})
    assert yarn.original_max_position_embeddings == 4096


@pytest.mark.parametrize(
    "rope, error, message",
    [
        ({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [2.0]}, NotImplementedError, "longrope"),
        ({"rope_type": "yarn", "factor": 4.0, "mscale": 1.0}, NotImplementedError, "mscale"),
        ({"rope_type": "sideways", "factor": 4.0}, ValueError, "rope_type must be one of default, linear"),
        ({"rope_type": "linear"}, ValueError, "factor is required"),
        ({"rope_type": "linear", "factor": "8"}, ValueError, "factor must be a number >= 1, got '8'"),
        ({"rope_type": "linear", "factor": 0.5}, ValueError, "factor must be a number >= 1, got 0.5"),
        ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}, ValueError, "high_freq_factor is required"),
        (
            {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0},
            ValueError,
            "high_freq_factor must be a number > low_freq_factor (4.0), got 1.0",
        ),
        ({"rope_type": "linear", "factor": 2.0, "low_freq_factor": 1.0}, ValueError, "not a parameter of 'linear'"),
        ({"rope_type": 3}, ValueError, "rope_type must be a string, got 3 (int)"),
        ([8.0], ValueError, "must be an object, got [8.0] (list)"),
    ],
)
def test_bad_rope_configs_raise_clear_errors(rope, error, message):
    with pytest.raises(error, match="config.json: rope_parameters") as raised:
        rope_scaling_from_hf({"rope_parameters": rope, "max_position_embeddings": 8192})
    assert message in str(raised.value)


def test_rope_scaling_validates_its_fields():
    with pytest.raises(ValueError, match="original_max_position_embeddings must be a positive int, got 81.5"):
        RopeScaling("yarn", factor=2.0, original_max_position_embeddings=81.5)
    with pytest.raises(ValueError, match="original_max_position_embeddings must be a positive int, got True"):
        RopeScaling("yarn", factor=2.0, original_max_position_embeddings=True)
    with pytest.raises(ValueError, match=r"beta_slow must be below beta_fast \(32 when not given\), got 40"):
        RopeScaling("yarn", factor=2.0, original_max_position_embeddings=64, beta_slow=40)
    with pytest.raises(ValueError, match=r"RopeScaling.beta_fast must be a number > beta_slow \(4\), got 2"):
        RopeScaling("yarn", factor=2.0, original_max_position_embeddings=64, beta_fast=2, beta_slow=4)
    with pytest.raises(ValueError, match="RopeScaling.attention_factor must be a positive number, got nan"):
        RopeScaling("yarn", factor=2.0, original_max_position_embeddings=64, attention_factor=math.nan)


# -- FlashAttention --------------------------------------------------------------------------------------------------


def sdpa(q, k, v, causal):
    mask = causal_mask(q.shape[2], k.shape[2]) if causal else None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n_heads, n_kv_heads", [(4, 4), (6, 2), (3, 1)])  # MHA, GQA, MQA
@pytest.mark.parametrize("seq, kv_seq", [(1, 1), (13, 13), (37, 37), (5, 41), (1, 29)])  # kv_seq > seq: a cache
def test_flash_attention_equals_sdpa(causal, n_heads, n_kv_heads, seq, kv_seq):
    torch.manual_seed(seq * 100 + kv_seq)
    q = torch.randn(2, n_heads, seq, 8, dtype=torch.float64)
    k = torch.randn(2, n_kv_heads, kv_seq, 8, dtype=torch.float64)
    v = torch.randn_like(k)
    expected = sdpa(q, k, v, causal)
    for block_size in (1, 7, 64):  # 64: larger than every sequence here, one block
        got = flash_attention(q, k, v, causal=causal, block_size=block_size)
        assert got.shape == expected.shape and got.dtype == torch.float64
        assert (got - expected).abs().max() < 1e-10, f"block_size {block_size}"


def test_flash_attention_takes_the_layout_attention_makes():
    """Attention transposes (batch, seq, heads, head_dim) projections: q, k, v arrive non-contiguous."""
    q, k, v = torch.randn(2, 11, 4, 8), torch.randn(2, 11, 2, 8), torch.randn(2, 11, 2, 8)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    torch.testing.assert_close(flash_attention(q, k, v, block_size=4), sdpa(q, k, v, True))


def test_flash_attention_low_precision_inputs():
    q, k, v = (torch.randn(1, 2, 20, 16).to(torch.bfloat16) for _ in range(3))
    got = flash_attention(q, k, v, block_size=8)
    assert got.dtype == torch.bfloat16
    expected = sdpa(q.double(), k.double(), v.double(), True)
    assert (got.double() - expected).abs().max() < 2e-2  # bfloat16 output: 8 bits of mantissa


class TensorSizes(TorchDispatchMode):
    """Records the size of every tensor an operation produces, and how often each operation runs."""

    def __init__(self):
        super().__init__()
        self.largest, self.calls = 0, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        self.calls[name] = self.calls.get(name, 0) + 1
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_flash_attention_never_holds_the_score_matrix():
    batch, n_heads, seq, head_dim, block = 1, 4, 128, 8, 16
    q = torch.randn(batch, n_heads, seq, head_dim)
    k, v = torch.randn(batch, 2, seq, head_dim), torch.randn(batch, 2, seq, head_dim)
    scores = batch * n_heads * seq * seq
    with TensorSizes() as plain:  # attention step by step, as chapter 4 computes it
        attention_weights(q, repeat_kv(k, 2), causal_mask(seq, seq)) @ repeat_kv(v, 2)
    assert plain.largest == scores  # the instrument sees the full score matrix where there is one
    with TensorSizes() as flash:
        flash_attention(q, k, v, block_size=block)
    # Nothing larger than q itself (the scaled copy, the output); one score block is n_heads * block * block.
    assert flash.largest <= q.numel() < scores // 10


def test_flash_attention_skips_blocks_above_the_diagonal():
    q, k, v = torch.randn(1, 2, 64, 8), torch.randn(1, 2, 64, 8), torch.randn(1, 2, 64, 8)
    counts = {}
    for causal in (True, False):
        with TensorSizes() as sizes:
            flash_attention(q, k, v, causal=causal, block_size=16)
        counts[causal] = sizes.calls["bmm"] // 2  # two matrix products per score block: q k^T and p v
    assert counts == {False: 16, True: 1 + 2 + 3 + 4}  # 4 x 4 blocks; causal: the lower triangle


@pytest.mark.parametrize(
    "shapes, kwargs, message",
    [
        (((1, 4, 5, 8), (1, 3, 5, 8)), {}, r"n_heads \(4\) must be a multiple of n_kv_heads \(3\)"),
        (((1, 4, 9, 8), (1, 2, 5, 8)), {}, "causal attention needs kv_seq >= seq"),
        (((1, 4, 5, 8), (1, 2, 5, 6)), {}, r"head_dim \(8\)"),
        (((1, 4, 5, 8), (1, 2, 5, 8)), {"block_size": 0}, "block_size must be a positive int, got 0"),
        (((4, 5, 8), (1, 2, 5, 8)), {}, "expects q"),
    ],
)
def test_flash_attention_shape_errors(shapes, kwargs, message):
    q_shape, kv_shape = shapes
    with pytest.raises(ValueError, match=message):
        flash_attention(torch.zeros(q_shape), torch.zeros(kv_shape), torch.zeros(kv_shape), **kwargs)


# -- the Llama 3 family ----------------------------------------------------------------------------------------------

PUBLISHED_PARAMETERS = {
    "llama3-8b": 8_030_261_248,
    "llama3-70b": 70_553_706_496,
    "llama3.1-8b": 8_030_261_248,
    "llama3.1-70b": 70_553_706_496,
    "llama3.1-405b": 405_853_388_800,
    "llama3.2-1b": 1_235_814_400,
    "llama3.2-3b": 3_212_749_824,
}


@pytest.mark.parametrize("name", PUBLISHED_PARAMETERS)
def test_llama3_presets_have_the_published_sizes(name):
    config = LLAMA3_PRESETS[name]
    assert config.vocab_size == 128256 and config.n_kv_heads == 8 and config.rope_theta == 500000.0
    counted = count_parameters(config)
    assert abs(counted - PUBLISHED_PARAMETERS[name]) <= 1e-3 * PUBLISHED_PARAMETERS[name], counted


def test_llama3_rope_scaling_beside_each_preset():
    assert set(LLAMA3_ROPE_SCALING) == set(LLAMA3_PRESETS)
    for name, scaling in LLAMA3_ROPE_SCALING.items():
        if name.startswith("llama3-"):
            assert scaling is None and LLAMA3_PRESETS[name].max_seq_len == 8192
        else:
            assert scaling.type == "llama3" and scaling.factor == (32.0 if name.startswith("llama3.2") else 8.0)
            assert LLAMA3_PRESETS[name].max_seq_len == 131072
