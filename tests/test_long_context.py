"""Chapter 11's code: RoPE scaling against transformers, FlashAttention against SDPA, the Llama 3 presets.

Float32 bounds: the scaled inverse frequencies are computed by the same float32 operations as
``transformers`` up to the order of one division (``inv_freq / factor`` against ``1 / (factor * freq)``),
so they agree within ``2 * eps`` relative (``eps = 2**-23``; one rounding either way). FlashAttention is
compared in float64, where rounding is about 1e-16 per operation: 1e-10 is far above it, and far below
any wrong mask, offset or rescaling, which moves the output by O(0.1).
"""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import assert_same_logits, float32_rounding, needs_transformers, random_llama
from llama_from_scratch import Llama, LlamaConfig, attention_weights, causal_mask, repeat_kv, rope_cos_sin
from llama_from_scratch.checkpoints.hf import (
    config_from_hf,
    config_to_hf,
    rope_parameters_to_hf,
    rope_scaling_from_hf,
    to_transformers,
)
from llama_from_scratch.checkpoints.load import load_checkpoint
from llama_from_scratch.checkpoints.save import save_checkpoint
from llama_from_scratch.config import PRESETS
from llama_from_scratch.long_context import flash_attention
from llama_from_scratch.rope_scaling import (
    REQUIRED_FIELDS,
    ROPE_SCALING_FUNCTIONS,
    RopeScaling,
    meta_llama3_scaling,
    rope_cos_sin_scaled,
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
    """What transformers expects as max_position_embeddings: the original context for dynamic, else the new one.

    (llama3 wants it above the original context even at factor 1.)
    """
    if rope_type == "dynamic":
        return original
    return int(original * factor) + (1 if rope_type == "llama3" and factor == 1 else 0)


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
    for scaling in (PRESETS["llama3.1-8b"].rope_scaling, yarn):
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


def hf_config_dict(rope_type: str, factor: float, spelling: str) -> dict:
    """MODEL_CONFIG's config.json with RoPE scaling in one spelling: transformers 4.x or 5.x."""
    hf = config_to_hf(MODEL_CONFIG)
    del hf["rope_scaling"], hf["rope_parameters"], hf["rope_theta"]
    hf["max_position_embeddings"] = hf_max_position_embeddings(rope_type, factor, ORIGINAL)
    rope = hf_rope_parameters(rope_type, factor)
    if spelling == "4.x":  # as published on the Hub: "type" (older files) or "rope_type", rope_theta outside
        key = "type" if rope_type in ("linear", "dynamic") else "rope_type"
        hf["rope_scaling"] = {key: rope["rope_type"], **{k: v for k, v in rope.items() if k != "rope_type"}}
        hf["rope_theta"] = MODEL_CONFIG.rope_theta
    else:
        hf["rope_parameters"] = {**rope, "rope_theta": MODEL_CONFIG.rope_theta}
    return hf


@needs_transformers
@pytest.mark.parametrize("spelling", ["4.x", "5.x"])
@pytest.mark.parametrize("rope_type", TYPES)
def test_model_past_the_original_context_equals_transformers(rope_type, spelling):
    """A config.json with RoPE scaling, read by us and by transformers: the same logits at 3x the original context.

    The model computes its cos and sin through ``LlamaConfig.rope_scaling``; the config we write back
    (``to_transformers`` builds transformers' model from it) must give transformers the very same model.
    """
    import transformers

    factor = 4.0
    hf_dict = hf_config_dict(rope_type, factor, spelling)
    config = config_from_hf(hf_dict)
    assert config.rope_scaling == rope_scaling_from_hf(hf_dict) is not None
    assert config.max_seq_len >= 3 * ORIGINAL  # dynamic: factor x max_position_embeddings
    model = random_llama(config)
    ours_written = to_transformers(model)  # from config_to_hf(config)
    theirs = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_dict)).eval()
    theirs.load_state_dict(ours_written.state_dict())

    tokens = torch.randint(0, config.vocab_size, (2, 3 * ORIGINAL))  # three times the original context
    with torch.no_grad():
        ours, expected = model(tokens), theirs(tokens).logits
        assert torch.equal(ours_written(tokens).logits, expected)  # the config we write is read the same way
        unscaled = Llama(config.replace(rope_scaling=None))
        unscaled.load_state_dict(model.state_dict())
        moved = (ours - unscaled(tokens)).abs().max()
    assert_same_logits(ours, expected, float32_rounding(model, tokens))
    assert moved > 1e-2  # the scaling did change the logits


@needs_transformers
def test_dynamic_scaling_with_a_cache_equals_transformers():
    """Dynamic NTK recomputes the frequencies for the current length: prefill, then decode past the original context."""
    import transformers

    hf_dict = hf_config_dict("dynamic", 4.0, "5.x")
    model = random_llama(config_from_hf(hf_dict))
    theirs = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_dict)).eval()
    theirs.load_state_dict(to_transformers(model).state_dict())
    tokens = torch.randint(0, model.config.vocab_size, (1, 2 * ORIGINAL))
    cache = model.new_kv_caches(1)
    with torch.no_grad():
        ours = [model(tokens[:, : ORIGINAL - 2], 0, cache)[:, -1]]
        for t in range(ORIGINAL - 2, tokens.shape[1]):  # one token at a time, crossing the original context
            ours.append(model(tokens[:, t : t + 1], t, cache)[:, -1])
        out = theirs(tokens[:, : ORIGINAL - 2], use_cache=True)
        past, expected = out.past_key_values, [out.logits[:, -1]]
        for t in range(ORIGINAL - 2, tokens.shape[1]):
            out = theirs(tokens[:, t : t + 1], cache=past, use_cache=True)
            past = out.past_key_values
            expected.append(out.logits[:, -1])
    assert_same_logits(torch.stack(ours), torch.stack(expected), float32_rounding(model, tokens))


# -- reading Hugging Face configs ------------------------------------------------------------------------------------


def test_both_spellings_read_the_same():
    llama31 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    v4_type = {"rope_scaling": {"type": "llama3", **llama31}, "rope_theta": 500000.0}
    v4_rope_type = {"rope_scaling": {"rope_type": "llama3", **llama31}, "rope_theta": 500000.0}
    v5 = {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, **llama31}}
    assert rope_scaling_from_hf(v4_type) == rope_scaling_from_hf(v4_rope_type) == rope_scaling_from_hf(v5)
    assert rope_scaling_from_hf(v5) == PRESETS["llama3.1-8b"].rope_scaling
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
        ({"rope_type": "linear", "factor": "8"}, ValueError, "factor must be a number >= 1, finite in float32, got '8'"),
        ({"rope_type": "linear", "factor": 0.5}, ValueError, "factor must be a number >= 1, finite in float32, got 0.5"),
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


def test_every_scaling_type_has_its_parameters_and_its_frequencies():
    assert set(ROPE_SCALING_FUNCTIONS) == set(REQUIRED_FIELDS)


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
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 11, 4, 8), torch.randn(2, 11, 2, 8), torch.randn(2, 11, 2, 8)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    torch.testing.assert_close(flash_attention(q, k, v, block_size=4), sdpa(q, k, v, True))


def test_flash_attention_low_precision_inputs():
    torch.manual_seed(0)
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
    torch.manual_seed(0)
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
    torch.manual_seed(0)
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

LLAMA3 = ["llama3-8b", "llama3-70b", "llama3.1-8b", "llama3.1-70b", "llama3.1-405b", "llama3.2-1b", "llama3.2-3b"]
# Their published parameter counts are checked with every other preset's in test_config.py.


def test_llama3_presets_share_vocabulary_gqa_and_base():
    for name in LLAMA3:
        config = PRESETS[name]
        assert config.vocab_size == 128256 and config.n_kv_heads == 8 and config.rope_theta == 500000.0


def test_llama3_presets_carry_their_rope_scaling():
    for name in LLAMA3:
        config = PRESETS[name]
        if name.startswith("llama3-"):
            assert config.rope_scaling is None and config.max_seq_len == 8192
        else:
            scaling = config.rope_scaling
            assert scaling.type == "llama3" and scaling.factor == (32.0 if name.startswith("llama3.2") else 8.0)
            assert (scaling.low_freq_factor, scaling.high_freq_factor) == (1.0, 4.0)
            assert scaling.original_max_position_embeddings == 8192 and config.max_seq_len == 131072


def test_presets_command_lists_llama3():
    from llama_from_scratch.cli import presets_table

    table = presets_table()
    for name in LLAMA3:
        assert f"\n{name} " in table


# -- Llama-3-style checkpoints: the scaling saved and loaded in every format ------------------------------------------

# A Llama 3.2 in miniature: GQA, RoPE base 500,000, llama3 scaling, tied embeddings.
LLAMA3_STYLE = LlamaConfig(
    dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=101, hidden_dim=96, rope_theta=500000.0, max_seq_len=131072
)
SHORT_CONTEXT = dict(original_max_position_embeddings=16)  # llama.cpp's defaults would be 8,192
SCALINGS = {
    "llama3.1": meta_llama3_scaling(8.0),
    "llama3.2": meta_llama3_scaling(32.0),
    "llama3-short": meta_llama3_scaling(4.0, 16),
    "linear": RopeScaling("linear", factor=4.0),
    "yarn": RopeScaling("yarn", factor=4.0, beta_fast=16.0, beta_slow=2.0, attention_factor=0.9, **SHORT_CONTEXT),
    "dynamic": RopeScaling("dynamic", factor=4.0, **SHORT_CONTEXT),
}
# What each format can hold: Meta's params.json only Llama 3.1's flag; GGUF no dynamic NTK.
FORMATS = {
    "hf": list(SCALINGS),
    "gguf": ["llama3.1", "llama3.2", "llama3-short", "linear", "yarn"],
    "meta": ["llama3.1", "llama3.2"],
}


def scaled_model(name: str) -> Llama:
    scaling = SCALINGS[name]
    max_seq_len = 64 if scaling.type == "dynamic" else LLAMA3_STYLE.max_seq_len  # dynamic: factor x original
    return random_llama(LLAMA3_STYLE.replace(rope_scaling=scaling, max_seq_len=max_seq_len, tie_embeddings=True))


@pytest.mark.parametrize("fmt, name", [(fmt, name) for fmt, names in FORMATS.items() for name in names])
def test_scaled_checkpoint_saves_and_loads_to_the_same_logits(tmp_path, fmt, name):
    model = scaled_model(name)
    path = save_checkpoint(model, None, tmp_path / ("model.gguf" if fmt == "gguf" else "model"), fmt)
    loaded = load_checkpoint(path, device="cpu", dtype=torch.float32)
    for field in ("rope_scaling", "rope_theta", "max_seq_len", "head_dim", "n_kv_heads", "tie_embeddings"):
        assert getattr(loaded.config, field) == getattr(model.config, field), field
    tokens = torch.randint(0, model.config.vocab_size, (2, 40))  # past the short original context
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))  # float32 weights, the same config: the same arithmetic


def llama_cpp_rope_factors(head_dim: int, theta: float, scaling: RopeScaling) -> list[float]:
    """llama.cpp's converter's rope_freqs for llama3 scaling, from its published formula, in Python floats."""
    original, low, high = scaling.original_max_position_embeddings, scaling.low_freq_factor, scaling.high_freq_factor
    factors = []
    for i in range(head_dim // 2):
        wavelength = 2 * math.pi * theta ** (2 * i / head_dim)
        if wavelength < original / high:
            factors.append(1.0)
        elif wavelength > original / low:
            factors.append(scaling.factor)
        else:
            smooth = (original / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / scaling.factor + smooth))
    return factors


@pytest.mark.parametrize("name", ["llama3.1", "llama3.2", "llama3-short"])
def test_gguf_holds_llama3_scaling_as_llama_cpp_writes_it(tmp_path, name):
    """A rope_freqs tensor of per-pair divisors and no scaling type; the original context only when not 8,192."""
    from llama_from_scratch.checkpoints.gguf import gguf_field, open_gguf

    model = scaled_model(name)
    reader = open_gguf(save_checkpoint(model, None, tmp_path / "model.gguf", "gguf"))
    (freqs,) = [t for t in reader.tensors if t.name == "rope_freqs.weight"]
    assert freqs.tensor_type.name == "F32"
    expected = torch.tensor(llama_cpp_rope_factors(64 // 4, 500000.0, SCALINGS[name]), dtype=torch.float32)
    # float64 against float32 frequencies: a few float32 roundings apart (eight: 1e-6)
    torch.testing.assert_close(torch.from_numpy(freqs.data.copy()), expected, rtol=1e-6, atol=0)
    assert gguf_field(reader, "llama.rope.scaling.type", None) is None
    original = gguf_field(reader, "llama.rope.scaling.original_context_length", None)
    assert original == (16 if name == "llama3-short" else None)


def test_gguf_rope_freqs_of_another_scaling_are_refused(tmp_path, monkeypatch):
    import llama_from_scratch.checkpoints.gguf as gguf_module

    real = gguf_module.rope_frequency_divisors
    monkeypatch.setattr(gguf_module, "rope_frequency_divisors", lambda *args: real(*args) ** 0.5)  # not llama3's
    path = save_checkpoint(scaled_model("llama3.1"), None, tmp_path / "model.gguf", "gguf")
    monkeypatch.undo()
    with pytest.raises(NotImplementedError, match=r"model.gguf: tensor rope_freqs.weight is not Llama 3.1's scaling"):
        load_checkpoint(path, device="cpu")


def test_meta_params_json_says_use_scaled_rope(tmp_path):
    path = save_checkpoint(scaled_model("llama3.2"), None, tmp_path / "model", "meta")
    params = json.loads((path / "params.json").read_text())
    assert params["use_scaled_rope"] is True and params["rope_scaling_factor"] == 32.0
    path = save_checkpoint(scaled_model("llama3.1"), None, tmp_path / "model31", "meta")
    params = json.loads((path / "params.json").read_text())
    assert params["use_scaled_rope"] is True and "rope_scaling_factor" not in params  # as Meta's 3.1 files


def test_hf_config_json_holds_both_spellings(tmp_path):
    path = save_checkpoint(scaled_model("llama3.1"), None, tmp_path / "model", "hf")
    written = json.loads((path / "config.json").read_text())
    llama31 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert written["rope_scaling"] == {"rope_type": "llama3", **llama31} and written["rope_theta"] == 500000.0
    assert written["rope_parameters"] == {"rope_type": "llama3", "rope_theta": 500000.0, **llama31}
    assert written["max_position_embeddings"] == 131072


# -- bad scaling configs: errors that name the field --------------------------------------------------------------


def test_llama_config_checks_rope_scaling():
    with pytest.raises(ValueError, match=r"LlamaConfig.rope_scaling must be a RopeScaling or None, got 'linear'"):
        LlamaConfig(rope_scaling="linear")
    with pytest.raises(ValueError, match="LlamaConfig.rope_scaling: RopeScaling.factor is required for 'linear'"):
        LlamaConfig(rope_scaling={"type": "linear"})
    with pytest.raises(ValueError, match="LlamaConfig.rope_scaling: .*unexpected keyword argument 'scale'"):
        LlamaConfig(rope_scaling={"type": "linear", "scale": 2.0})
    as_saved = dataclasses.asdict(PRESETS["llama3.1-8b"])  # a training checkpoint's copy of the config
    assert LlamaConfig(**as_saved) == PRESETS["llama3.1-8b"]


def test_bad_scaling_in_a_checkpoint_names_file_and_field(tmp_path):
    from llama_from_scratch.checkpoints.meta import read_meta_config

    v4 = {**config_to_hf(MODEL_CONFIG), "rope_parameters": None, "rope_scaling": {"type": "linear", "factor": 0.5}}
    with pytest.raises(ValueError, match=r"config.json: rope_scaling: RopeScaling.factor must be a number >= 1"):
        config_from_hf(v4)
    both = {**config_to_hf(PRESETS["llama3.1-8b"]), "rope_scaling": {"type": "linear", "factor": 8.0}}
    with pytest.raises(ValueError, match="config.json: rope_scaling and rope_parameters describe different RoPE"):
        config_from_hf(both)
    with pytest.raises(ValueError, match=r"config.json: rope_theta is 10000.0 but rope_parameters.rope_theta is 5"):
        config_from_hf({**config_to_hf(PRESETS["llama3.1-8b"]), "rope_theta": 10000.0})
    for changes, message in [
        ({"use_scaled_rope": "yes"}, r"params.json: use_scaled_rope must be true or false, got 'yes'"),
        ({"use_scaled_rope": True, "rope_scaling_factor": 0.5}, r"params.json: rope_scaling_factor: .* got 0.5"),
        ({"rope_scaling_factor": 8.0}, r"params.json: rope_scaling_factor is 8.0, but use_scaled_rope is not true"),
    ]:
        (tmp_path / "params.json").write_text(json.dumps({"dim": 64, "n_layers": 2, "n_heads": 4, **changes}))
        with pytest.raises(ValueError, match=message):
            read_meta_config(tmp_path, vocab_size=101)


@pytest.mark.parametrize(
    "metadata, error, message",
    [
        ({"type": "sideways"}, NotImplementedError, "llama.rope.scaling.type 'sideways' is not implemented"),
        ({"type": "linear", "factor": 0.5}, ValueError, "llama.rope.scaling: RopeScaling.factor must be a number >= 1"),
        ({"type": "linear"}, ValueError, "missing metadata llama.rope.scaling.factor"),
        ({"type": "yarn", "factor": 4.0}, ValueError, "missing metadata llama.rope.scaling.original_context_length"),
    ],
)
def test_bad_gguf_scaling_names_the_key(tmp_path, metadata, error, message):
    import gguf

    from llama_from_scratch.checkpoints.gguf import config_from_gguf, open_gguf

    writer = gguf.GGUFWriter(str(tmp_path / "model.gguf"), "llama")
    for key, add in (("block_count", 2), ("embedding_length", 64), ("feed_forward_length", 96)):
        writer.add_uint32(f"llama.{key}", add)
    writer.add_uint32("llama.attention.head_count", 4)
    writer.add_uint32("llama.vocab_size", 101)
    for key, value in metadata.items():
        (writer.add_string if isinstance(value, str) else writer.add_float32)(f"llama.rope.scaling.{key}", value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(error, match=message) as raised:
        config_from_gguf(open_gguf(tmp_path / "model.gguf"), str(tmp_path / "model.gguf"))
    assert "model.gguf" in str(raised.value)


@pytest.mark.parametrize(
    "fmt, name, message",
    [
        ("gguf", "dynamic", "GGUF cannot record dynamic NTK RoPE scaling"),
        ("meta", "yarn", "params.json records only Llama 3.1's RoPE scaling"),
        ("meta", "llama3-short", "params.json records only Llama 3.1's RoPE scaling"),
    ],
)
def test_a_format_that_cannot_hold_the_scaling_refuses_it(tmp_path, fmt, name, message):
    with pytest.raises(ValueError, match=message):
        save_checkpoint(scaled_model(name), None, tmp_path / "model", fmt)
    assert not (tmp_path / "model").exists()  # nothing half-written


def test_hf_cannot_hold_a_dynamic_context_other_than_factor_times_original(tmp_path):
    model = random_llama(LLAMA3_STYLE.replace(rope_scaling=SCALINGS["dynamic"], max_seq_len=100))
    with pytest.raises(ValueError, match=r"max_seq_len=100 with dynamic RoPE scaling.*factor x original = 64"):
        save_checkpoint(model, None, tmp_path / "model", "hf")
