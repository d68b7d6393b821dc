"""Weight-only quantization of the model: int8 per channel, int4 group-wise, the module swap, the file format.

Error bounds are derived from the arithmetic, with ``u = 2**-24`` the unit roundoff of float32 (every
float32 operation's result is within a relative ``u`` of the exact one).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import random_llama
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from llama_from_scratch import FormatError, LlamaConfig
from llama_from_scratch.checkpoints.load import assemble
from llama_from_scratch.checkpoints.save import model_tensors
from llama_from_scratch.quantization import (
    Int4Embedding,
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    QuantizedLinear,
    dequantize,
    dequantize_int4,
    dequantize_int8,
    load_quantized,
    pack_int4,
    quantize,
    quantize_int4,
    quantize_int8,
    save_quantized,
    unpack_int4,
)
from llama_from_scratch.quantization.safetensors_format import HEADER_KEY, quantization_header, quantized_skeleton

U = 2.0**-24  # float32 unit roundoff
SCHEMES = [("int8", 64), ("int4", 32), ("int4", 64), ("int4-sym", 32), ("int4-sym", 64)]
CONFIG = LlamaConfig.from_preset("tiny")  # dim 64, hidden 192: every group size divides both
TIED = CONFIG.replace(tie_embeddings=True)
ATTENTION = ("wq", "wk", "wv", "wo")
FEED_FORWARD = ("w1", "w2", "w3")


def weight_with_outliers(out_features: int = 48, in_features: int = 256, seed: int = 0) -> torch.Tensor:
    """Gaussian weights, rows at different scales, a few large outliers, and one row of zeros."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g) * torch.rand(out_features, 1, generator=g)
    w[3, 17] = 25.0
    w[5, 200] = -40.0
    w[7] = 0.0
    return w


# ---------------------------------------------------------------- packing


def test_pack_layout_by_hand():
    assert pack_int4(torch.tensor([3, 10])).tolist() == [0xA3]  # q[0] in the low nibble, q[1] in the high one


def test_unpack_pack_is_identity_for_every_value_in_every_position():
    pairs = torch.cartesian_prod(torch.arange(16), torch.arange(16))  # (256, 2): each value in both positions
    assert torch.equal(unpack_int4(pack_int4(pairs)), pairs.to(torch.uint8))
    row = torch.stack([torch.arange(16).roll(k) for k in range(16)])  # (16, 16): every value at every index
    assert torch.equal(unpack_int4(pack_int4(row)), row.to(torch.uint8))


@pytest.mark.parametrize(
    "q, message",
    [
        (torch.tensor([0, 16]), "values 0..15, got values from 0 to 16"),
        (torch.tensor([-1, 3]), "values 0..15, got values from -1 to 3"),
        (torch.tensor([1, 2, 3]), "even number of values"),
        (torch.tensor([1.0, 2.0]), "integer values 0..15, got a torch.float32 tensor"),
    ],
)
def test_pack_refuses_what_does_not_fit(q, message):
    with pytest.raises(ValueError, match=message):
        pack_int4(q)


def test_unpack_refuses_other_dtypes():
    with pytest.raises(ValueError, match="uint8 bytes, got a torch.int8 tensor"):
        unpack_int4(torch.zeros(4, dtype=torch.int8))


# ---------------------------------------------------------------- round-trip error bounds


def test_int8_error_is_at_most_half_a_step_per_channel():
    w = weight_with_outliers()
    q, scales = quantize_int8(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127 and scales.shape == (48,)
    assert torch.equal(scales, w.abs().amax(dim=1) / 127)
    error = (dequantize_int8(q, scales) - w).abs()
    # Exact rounding of w/s to the nearest integer is off by <= 1/2 step. In float32, w/s (|w/s| <= 127) is off
    # by <= 127u, and q * s by <= 127u * s: at most s * (1/2 + 254u). The zero row has s = 0 and no error.
    bound = scales[:, None] * (0.5 + 256 * U)
    assert (error <= bound).all(), f"largest excess {(error - bound).max():.3g}"
    assert error[7].max() == 0 and (dequantize_int8(q, scales)[3, 17] - 25.0).abs() <= 25.0 * 256 * U


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [False, True])
def test_int4_error_is_at_most_half_a_step_per_group(group_size, symmetric):
    w = weight_with_outliers()
    packed, scales, mins = quantize_int4(w, group_size, symmetric)
    n_groups = 256 // group_size
    assert packed.shape == (48, 128) and packed.dtype == torch.uint8 and scales.shape == (48, n_groups)
    assert (mins is None) == symmetric
    groups = w.view(48, n_groups, group_size)
    error = (dequantize_int4(packed, scales, mins, group_size) - w).view(48, n_groups, group_size).abs()
    if symmetric:
        # s = max|w| / 7; w/s (|w/s| <= 7) is off by <= 7u, s * (q - 8) by <= 7u * s: s * (1/2 + 14u).
        bound = scales[..., None] * (0.5 + 16 * U)
    else:
        # s = (hi - lo) / 15; w - lo (<= 15s) is off by <= 15u s, its quotient by s by <= 30u more steps, s * q by
        # <= 15u s, and adding lo by <= u * |w|: s * (1/2 + 60u) + u * max|w| (2u for the max's own rounding).
        bound = scales[..., None] * (0.5 + 64 * U) + 2 * U * groups.abs().amax(dim=-1, keepdim=True)
    assert (error <= bound).all(), f"largest excess {(error - bound).max():.3g}"
    assert error[7].max() == 0  # a zero row: scale 0 (and min 0) reproduce it exactly


def test_int4_asymmetric_steps_are_finer_than_symmetric_ones():
    w = weight_with_outliers() + 0.5  # lopsided groups: all 16 codes help
    _, asymmetric, _ = quantize_int4(w, 64, symmetric=False)
    _, symmetric, _ = quantize_int4(w, 64, symmetric=True)
    assert (asymmetric <= symmetric).all()  # (hi - lo) / 15 <= 2 max|w| / 15 < max|w| / 7


def test_int4_refuses_a_group_size_that_does_not_divide_the_row():
    with pytest.raises(ValueError, match="in_features=96 is not a multiple of group_size=64"):
        quantize_int4(torch.zeros(4, 96), 64)
    with pytest.raises(ValueError, match=r"group_size must be one of \(32, 64, 128\), got 48"):
        quantize_int4(torch.zeros(4, 96), 48)


# ---------------------------------------------------------------- the layers


@pytest.mark.parametrize(
    "cls, settings",
    [(Int8Linear, {}), (Int4Linear, {"group_size": 32}), (Int4Linear, {"group_size": 64, "symmetric": True})],
)
def test_quantized_linear_holds_buffers_and_computes_with_its_dequantized_weight(cls, settings):
    linear = nn.Linear(64, 24, bias=False)
    layer = cls.from_linear(linear, **settings)
    assert list(layer.parameters()) == [] and {"qweight", "scales"} <= dict(layer.named_buffers()).keys()
    x = torch.randn(3, 5, 64)
    plain = nn.Linear(64, 24, bias=False)
    plain.weight = nn.Parameter(layer.dequantize())
    # the same float32 matrix and input through the same kernel (F.linear): the same bits
    assert torch.equal(layer(x), plain(x))
    assert torch.equal(layer.weight, layer.dequantize())


def test_from_linear_refuses_a_bias_and_non_finite_weights():
    with pytest.raises(ValueError, match="has a bias"):
        Int8Linear.from_linear(nn.Linear(8, 8))
    linear = nn.Linear(32, 8, bias=False)
    with torch.no_grad():
        linear.weight[2, 3] = float("nan")
    with pytest.raises(ValueError, match="Int4Linear: the weight holds NaN or infinite values"):
        Int4Linear.from_linear(linear, group_size=32)


@pytest.mark.parametrize("cls", [Int8Embedding, Int4Embedding])
def test_quantized_embedding_looks_up_the_dequantized_rows(cls):
    table = nn.Embedding(50, 64)
    layer = cls.from_embedding(table, **({"group_size": 32} if cls is Int4Embedding else {}))
    tokens = torch.tensor([[0, 7, 49], [7, 7, 3]])
    # row-wise dequantization does the same elementwise float32 operations as the whole table's
    assert torch.equal(layer(tokens), nn.functional.embedding(tokens, layer.dequantize()))


# ---------------------------------------------------------------- the module swap


def quantized_names(model):
    return {name for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}


@pytest.mark.parametrize("include_embeddings", [False, True])
@pytest.mark.parametrize("include_output", [False, True])
def test_quantize_swaps_exactly_the_selected_modules(include_embeddings, include_output):
    model = random_llama(CONFIG)
    before = dict(model.named_modules())
    result = quantize(model, "int4", 32, include_embeddings=include_embeddings, include_output=include_output)
    assert result is model
    expected = {f"layers.{i}.attention.{w}" for i in range(CONFIG.n_layers) for w in ATTENTION}
    expected |= {f"layers.{i}.feed_forward.{w}" for i in range(CONFIG.n_layers) for w in FEED_FORWARD}
    expected |= {"tok_embeddings"} if include_embeddings else set()
    expected |= {"output"} if include_output else set()
    assert quantized_names(model) == expected
    for name, module in model.named_modules():
        if name not in expected and not any(name.startswith(e + ".") for e in expected):
            assert module is before[name], name  # everything else untouched
    assert isinstance(model.tok_embeddings, Int4Embedding if include_embeddings else nn.Embedding)


def test_quantize_refuses_to_split_a_tied_head_and_leaves_the_model_unchanged():
    model = random_llama(TIED)
    for flags in ({"include_embeddings": True}, {"include_output": True}):
        with pytest.raises(ValueError, match="ties its output head to its token embedding"):
            quantize(model, "int8", **flags)
        assert quantized_names(model) == set()
    quantize(model, "int8")  # the default leaves both in floating point, still one matrix
    assert model.output.weight is model.tok_embeddings.weight


def test_quantize_names_the_layer_it_cannot_quantize():
    model = random_llama(LlamaConfig.from_preset("tiny", dim=96, n_heads=4, n_kv_heads=2))  # 96 = 3 x 32
    with pytest.raises(ValueError, match=r"cannot quantize 'layers.0.attention.wq' \(int4\): in_features=96"):
        quantize(model, "int4", 64)
    assert quantized_names(model) == set()  # nothing swapped before the failure
    with pytest.raises(ValueError, match="unknown quantization scheme 'int3'"):
        quantize(model, "int3")


@pytest.mark.parametrize("scheme, group_size", SCHEMES)
def test_quantized_logits_equal_the_dequantized_model_bit_for_bit(scheme, group_size):
    model = quantize(random_llama(CONFIG), scheme, group_size, include_embeddings=True, include_output=True)
    plain = dequantize(copy.deepcopy(model))
    assert quantized_names(plain) == set()
    assert type(plain.output) is nn.Linear and type(plain.tok_embeddings) is nn.Embedding
    tokens = torch.randint(0, CONFIG.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # By construction: each quantized layer computes F.linear(x, W) (or looks up rows of W) with the very
        # float32 W that dequantize() put into the plain layer, so every operation sees the same bits.
        assert torch.equal(model(tokens), plain(tokens))
        assert torch.equal(model.loss(tokens[:, :-1], tokens[:, 1:]), plain.loss(tokens[:, :-1], tokens[:, 1:]))


def test_a_fully_quantized_model_generates_the_same_tokens_as_its_dequantized_twin():
    from llama_from_scratch import generate

    model = quantize(random_llama(CONFIG), "int8", include_embeddings=True, include_output=True)
    plain = dequantize(copy.deepcopy(model))
    assert model.new_kv_caches()[0].k.dtype == torch.float32  # read from the embedding's (dequantized) .weight
    # greedy decoding with the KV cache: identical logits at every step (see above) give identical tokens
    assert generate(model, [1, 2, 3], 8) == generate(plain, [1, 2, 3], 8)


# ---------------------------------------------------------------- saving and loading


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name


@pytest.mark.parametrize("scheme, group_size", SCHEMES)
def test_the_package_loaders_keep_the_integers(scheme, group_size):
    model = quantize(random_llama(CONFIG), scheme, group_size, include_output=True)
    tensors = model_tensors(model)
    assert tensors["layers.0.attention.wq.qweight"].dtype == (torch.int8 if scheme == "int8" else torch.uint8)
    skeleton = quantized_skeleton(CONFIG, quantization_header(model)["layers"], "test")
    loaded = assemble(CONFIG, (("test", n, t) for n, t in tensors.items()), "cpu", torch.float32, model=skeleton)
    assert_same_state(model, loaded)


@pytest.mark.parametrize("config", [CONFIG, TIED], ids=["untied", "tied"])
@pytest.mark.parametrize("scheme, group_size", SCHEMES)
def test_save_and_load_quantized_round_trip_exactly(tmp_path, config, scheme, group_size):
    flags = {} if config.tie_embeddings else {"include_embeddings": True, "include_output": True}
    model = quantize(random_llama(config), scheme, group_size, **flags)
    loaded = load_quantized(save_quantized(model, tmp_path / "model.safetensors"), config)
    assert_same_state(model, loaded)
    assert {n: type(m) for n, m in loaded.named_modules()} == {n: type(m) for n, m in model.named_modules()}
    if config.tie_embeddings:
        assert loaded.output.weight is loaded.tok_embeddings.weight
    tokens = torch.randint(0, config.vocab_size, (1, 6))
    with torch.no_grad():
        assert torch.equal(model(tokens), loaded(tokens))


def rewrite(path, change_tensors=None, change_header=None):
    """Rewrite a saved file with some tensors or the header changed."""
    with safe_open(str(path), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
        metadata = f.metadata()
    if change_tensors:
        change_tensors(tensors)
    if change_header:
        header = json.loads(metadata[HEADER_KEY])
        change_header(header)
        metadata[HEADER_KEY] = json.dumps(header)
    save_file(tensors, str(path), metadata=metadata)


WQ = "layers.1.attention.wq"


@pytest.mark.parametrize(
    "change_tensors, change_header, message",
    [
        (lambda t: t.update({f"{WQ}.qweight": t[f"{WQ}.qweight"][:, :-1].clone()}), None,
         rf"tensor '{WQ}.qweight' has shape \(64, 31\), expected \(64, 32\)"),
        (lambda t: t.update({f"{WQ}.qweight": t[f"{WQ}.qweight"].to(torch.int16)}), None,
         rf"tensor '{WQ}.qweight' is torch.int16, expected torch.uint8"),
        (lambda t: t.update({f"{WQ}.scales": t[f"{WQ}.scales"].to(torch.int32)}), None,
         rf"tensor '{WQ}.scales' is torch.int32, expected torch.float32"),
        (lambda t: t.pop(f"{WQ}.mins"), None, rf"missing 1 tensor\(s\): {WQ}.mins"),
        (None, lambda h: h["layers"][WQ].update(group_size=64),
         rf"tensor '{WQ}.(scales|mins)' has shape \(64, 2\), expected \(64, 1\)"),
        (None, lambda h: h["layers"][WQ].update(scheme="int4-sym"), rf"unexpected tensor '{WQ}.mins'"),
        (None, lambda h: h["layers"][WQ].update(scheme="int3"), rf"layer '{WQ}'.*unknown quantization scheme 'int3'"),
        (None, lambda h: h["layers"][WQ].update(group_size=48), rf"layer '{WQ}'.*group_size must be one of"),
        (None, lambda h: h["layers"].update({"layers.1.attention": {"scheme": "int8"}}),
         r"names 'layers.1.attention', not a linear layer"),
        (None, lambda h: h.update(version=2), "the quantization header must be"),
    ],
    ids=["truncated", "wrong-int-dtype", "scales-not-float", "missing", "group-size", "symmetric",
         "unknown-scheme", "bad-group-size", "not-a-layer", "version"],
)
def test_a_damaged_file_is_an_error_naming_what_is_wrong(tmp_path, change_tensors, change_header, message):
    path = save_quantized(quantize(random_llama(CONFIG), "int4", 32), tmp_path / "model.safetensors")
    rewrite(path, change_tensors, change_header)
    with pytest.raises(FormatError, match=message):
        load_quantized(path, CONFIG)


def test_a_file_without_the_header_is_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(FormatError, match="not a quantized model file"):
        load_quantized(path, CONFIG)
