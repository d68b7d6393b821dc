"""Weight-only quantization of the model: int8 per channel, int4 group-wise, the module swap, the file format.

Error bounds are derived from the arithmetic, with ``u = 2**-24`` the unit roundoff of float32 (every
float32 operation's result is within a relative ``u`` of the exact one).
"""

from __future__ import annotations

import copy
import gc
import json
import weakref

import numpy as np
import pytest
import torch
from helpers import random_llama
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from llama_from_scratch import FormatError, LlamaConfig
from llama_from_scratch.checkpoints import assemble, load_quantized, model_tensors, save_quantized
from llama_from_scratch.checkpoints.quantized import HEADER_KEY, quantization_header, quantized_skeleton
from llama_from_scratch.quantization import (
    Int4Embedding,
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    QuantizedLinear,
    dequantize,
    dequantize_int4,
    dequantize_int8,
    int4_kernel,
    pack_int4,
    quantize,
    quantize_int4,
    quantized_layers,
    quantize_int8,
    unpack_int4,
)
from llama_from_scratch.swap import swap_layers

U = 2.0**-24  # float32 unit roundoff
# float64 rounding is ~1e-16 relative: two orders of the same sums of a few hundred products of size ~1 differ
# by far less than this; a wrong scale or weight moves logits by ~0.1
FLOAT64_TOLERANCE = 1e-10
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
    # byte j holds q[j] in its low nibble and q[j + n/2] in its high one: 3 | 10 << 4 = 0xA3, 5 | 12 << 4 = 0xC5
    assert pack_int4(torch.tensor([3, 5, 10, 12])).tolist() == [0xA3, 0xC5]


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


@pytest.mark.parametrize("symmetric", [False, True])
def test_int4_pads_a_partial_last_group_without_changing_its_scale(symmetric, monkeypatch):
    """576 = 4.5 groups of 128 (SmolLM2): the last group is padded with copies of the row's last weight, so its
    range and scale are those of its 64 real weights, and the padding never reaches the output."""
    w = weight_with_outliers(8, 576)
    packed, scales, mins = quantize_int4(w, 128, symmetric)
    assert packed.shape == (8, 5 * 64) and scales.shape == (8, 5)
    last = w[:, 512:]
    expected = last.abs().amax(-1) / 7 if symmetric else (last.amax(-1) - last.amin(-1)) / 15
    assert torch.equal(scales[:, 4], expected)
    full = quantize_int4(w[:, :512], 128, symmetric)  # the four whole groups are quantized as without padding
    assert torch.equal(packed[:, :256], full[0]) and torch.equal(scales[:, :4], full[1])
    back = dequantize_int4(packed, scales, mins, 128, in_features=576)
    assert back.shape == (8, 576)
    layer = Int4Linear.from_weight(w, group_size=128, symmetric=symmetric)
    x = torch.randn(576, dtype=torch.float64)
    bound = U * (x.abs() * back.abs().double()).sum(-1) + 1e-12  # as in the one-row kernel test below
    assert ((layer.matmul_one_row(x) - back.double() @ x).abs() <= bound).all()
    monkeypatch.setenv(int4_kernel.SWITCH, "0")  # the PyTorch path (the C++ kernel's padding: test_int4_kernel.py)
    assert torch.equal(layer(torch.ones(1, 576)), torch.ones(1, 576) @ back.T)


def test_int4_refuses_an_unknown_group_size():
    with pytest.raises(ValueError, match=r"group_size must be one of \(32, 64, 128\), got 48"):
        quantize_int4(torch.zeros(4, 96), 48)


# ---------------------------------------------------------------- the layers


@pytest.mark.parametrize(
    "cls, settings",
    [(Int8Linear, {}), (Int4Linear, {"group_size": 32}), (Int4Linear, {"group_size": 64, "symmetric": True})],
)
def test_quantized_linear_holds_buffers_and_computes_with_its_dequantized_weight(cls, settings):
    torch.manual_seed(0)
    linear = nn.Linear(64, 24, bias=False)
    layer = cls.from_linear(linear, **settings)
    assert list(layer.parameters()) == [] and {"qweight", "scales"} <= dict(layer.named_buffers()).keys()
    x = torch.randn(3, 5, 64)
    plain = nn.Linear(64, 24, bias=False)
    plain.weight = nn.Parameter(layer.dequantize())
    y, expected = layer(x), plain(x)
    if cls is Int8Linear:  # it scales its outputs, not its weights (Int8Linear.matmul_tile): other roundings
        # Each float32 dot product of 64 terms is within 64u sum|x_i w_i| of the exact one (Higham), and the
        # twin's weights within u|w| of q * scale: at most 129u sum|x_i w_i| apart. A wrong scale is O(|x||w|) off.
        assert ((y - expected).abs() <= 129 * U * (x.abs() @ plain.weight.abs().T)).all()
    else:  # the same float32 matrix and input through the same kernel (F.linear): the same bits
        assert torch.equal(y, expected)
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


@pytest.mark.parametrize("flag", ["include_embeddings", "include_output"])
def test_a_tied_head_is_quantized_once_and_stays_tied(flag):
    model = random_llama(TIED)
    quantize(model, "int8")  # the default leaves both in floating point, still one matrix
    assert model.output.weight is model.tok_embeddings.weight
    quantize(model, "int4", 32, **{flag: True})  # either flag means the one shared matrix
    assert isinstance(model.tok_embeddings, Int4Embedding) and type(model.output) is Int4Linear
    for name in ("qweight", "scales", "mins"):  # one set of codes and scales, used by both modules
        assert getattr(model.output, name) is getattr(model.tok_embeddings, name), name
    plain = dequantize(copy.deepcopy(model.double()))  # float64: see the test of the dequantized twin below
    assert plain.output.weight is plain.tok_embeddings.weight  # dequantized: one matrix again
    tokens = torch.randint(0, TIED.vocab_size, (1, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(tokens), plain(tokens), rtol=0, atol=FLOAT64_TOLERANCE)


def test_quantize_names_the_layer_it_cannot_quantize():
    model = random_llama(CONFIG)
    with torch.no_grad():
        model.layers[1].feed_forward.w2.weight[3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"cannot quantize 'layers.1.feed_forward.w2' \(int4\): .*NaN or infinite"):
        quantize(model, "int4", 64)
    assert quantized_names(model) == set()  # nothing swapped before the failure
    with pytest.raises(ValueError, match="unknown quantization scheme 'int3'"):
        quantize(model, "int3")


@pytest.mark.parametrize("one_at_a_time", [False, True])
def test_swap_layers_offers_each_module_once_and_frees_what_it_replaced_at_once_if_asked(one_at_a_time):
    model = random_llama(CONFIG)
    offered, replaced = [], []

    def swap_blocks(name, module):  # replaces whole blocks: what is inside them is not offered any more
        offered.append(name)
        gc.collect()
        alive = [ref() is not None for ref in replaced]  # the blocks swapped out so far
        assert alive == [not one_at_a_time] * len(replaced)
        if name.count(".") == 1 and name.startswith("layers."):
            replaced.append(weakref.ref(module))
            return nn.Identity()
        return None

    new = swap_layers(model, swap_blocks, one_at_a_time)
    assert list(new) == [f"layers.{i}" for i in range(CONFIG.n_layers)]
    assert all(isinstance(block, nn.Identity) for block in model.layers)
    assert offered == ["tok_embeddings", "layers", *new, "norm", "output"]  # nothing inside a replaced block
    gc.collect()
    assert all(ref() is None for ref in replaced)


@pytest.mark.parametrize("scheme, group_size", SCHEMES)
def test_quantized_logits_equal_the_dequantized_models(scheme, group_size):
    model = quantize(random_llama(CONFIG), scheme, group_size, include_embeddings=True, include_output=True)
    plain = dequantize(copy.deepcopy(model))
    assert quantized_names(plain) == set()
    assert type(plain.output) is nn.Linear and type(plain.tok_embeddings) is nn.Embedding
    tokens = torch.randint(0, CONFIG.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if scheme != "int8":
            # By construction: each int4 layer computes F.linear(x, W) (or looks up rows of W) with the very
            # float32 W that dequantize() put into the plain layer, so every operation sees the same bits.
            assert torch.equal(model(tokens), plain(tokens))
        # int8 scales the outputs instead of the weights, which changes float32 roundings; in float64 (scales,
        # hence the twin's weights, and activations) both compute the same products up to float64 rounding.
        model = model.double()
        plain = dequantize(copy.deepcopy(model))
        assert torch.allclose(model(tokens), plain(tokens), rtol=0, atol=FLOAT64_TOLERANCE)
        loss, plain_loss = model.loss(tokens[:, :-1], tokens[:, 1:]), plain.loss(tokens[:, :-1], tokens[:, 1:])
        assert torch.allclose(loss, plain_loss, rtol=0, atol=FLOAT64_TOLERANCE)


def test_a_fully_quantized_model_generates_the_same_tokens_as_its_dequantized_twin():
    from llama_from_scratch import GenerationConfig, generate

    model = quantize(random_llama(CONFIG), "int8", include_embeddings=True, include_output=True)
    plain = dequantize(copy.deepcopy(model))
    assert model.new_kv_caches()[0].k.dtype == torch.float32  # read from the embedding's (dequantized) .weight
    # greedy decoding with the KV cache: identical logits at every step (see above) give identical tokens
    assert generate(model, [1, 2, 3], GenerationConfig(8)) == generate(plain, [1, 2, 3], GenerationConfig(8))


# ---------------------------------------------------------------- the one-row kernels used under torch.compile


@pytest.mark.parametrize("scheme, group_size", SCHEMES)
def test_the_one_row_kernel_multiplies_by_the_dequantized_weight(scheme, group_size):
    """matmul_one_row reads the packed codes directly; it must compute x @ dequantize().T.

    Run in float64, its only difference from ``x @ W.T`` (W the float32 dequantized weight, made exact in
    float64) is that it forms each weight in float64 rather than rounding it to float32: at most ``u |w|``
    per weight, so at most ``u * sum_i |x_i| |w_i|`` per output, plus float64 rounding (about 1e-16
    relative). A wrong nibble pairing or group scale moves outputs by O(|w||x|), far more.
    """
    cls, settings = {"int8": (Int8Linear, {}), "int4": (Int4Linear, {}), "int4-sym": (Int4Linear, {"symmetric": True})}[
        scheme
    ]
    if cls is Int4Linear:
        settings["group_size"] = group_size
    layer = cls.from_weight(weight_with_outliers(48, 256), **settings)
    x = torch.randn(256, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w = layer.dequantize().double()
    bound = U * (x.abs() * w.abs()).sum(-1) + 1e-12
    assert ((layer.matmul_one_row(x) - w @ x).abs() <= bound).all()


@pytest.mark.parametrize("scheme, group_size", SCHEMES)
@pytest.mark.parametrize("rows", [1, 21])
def test_the_eager_matmul_goes_tile_by_tile_through_the_dequantized_weight(scheme, group_size, rows):
    """The eager matmul takes ``tile_weights // in_features`` output rows at a time (here 5 rows: ten tiles of
    48, the last of 3); it must compute x @ dequantize().T. The bound is the one-row kernel's (above): int8
    forms each weight q * scale exactly in float64, the reference rounds it to float32 (u |w| per weight)."""
    cls, settings = {"int8": (Int8Linear, {}), "int4": (Int4Linear, {}), "int4-sym": (Int4Linear, {"symmetric": True})}[
        scheme
    ]
    if cls is Int4Linear:
        settings["group_size"] = group_size
    layer = cls.from_weight(weight_with_outliers(48, 256), **settings)
    layer.tile_weights, layer.use_kernel = 5 * 256 + 7, False  # 5 rows a tile; int4 on its PyTorch path
    x = torch.randn(2, rows, 256, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w = layer.dequantize().double()
    bound = U * (x.abs() @ w.abs().T) + 1e-12
    assert ((layer(x) - x @ w.T).abs() <= bound).all()


@pytest.mark.slow
def test_compiled_decoding_of_a_quantized_model_uses_the_one_row_kernels(monkeypatch):
    """generate(compile=True) on an int4 model (head included), the C++ kernel switched off: Inductor compiles
    matmul_one_row, and the greedy tokens equal the eager ones: the sums are reordered, so logits differ by
    float32 rounding only (about 1e-6 here), and every step's best logit leads the second by far more (checked)."""
    from llama_from_scratch import GenerationConfig, generate
    from llama_from_scratch.generate import compiled_decode_step

    model = quantize(random_llama(TIED), "int4", 32, include_output=True)
    monkeypatch.setenv(int4_kernel.SWITCH, "0")
    calls = []
    original = Int4Linear.matmul_one_row
    counting = lambda self, x: calls.append(1) or original(self, x)  # noqa: E731 (counts while Dynamo traces)
    monkeypatch.setattr(Int4Linear, "matmul_one_row", counting)
    torch._dynamo.reset()
    tokens = generate(model, [1, 2, 3], GenerationConfig(6), compile=True)
    monkeypatch.setattr(Int4Linear, "matmul_one_row", original)  # the eager run below uses the real one-row path
    assert calls, "the compiled decode step never took the one-row path"
    assert tokens == generate(model, [1, 2, 3], GenerationConfig(6))
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, *tokens[:-1]]]))[0, 2:]  # the logits each token was chosen from
    best_two = logits.topk(2).values
    assert (best_two[:, 0] - best_two[:, 1]).min() > 1e-4  # a margin 100x the rounding: no near-tie to flip
    assert compiled_decode_step(model) is model.__dict__["_compiled_decode_step"]


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
    model = quantize(random_llama(config), scheme, group_size, include_embeddings=True, include_output=True)
    loaded = load_quantized(save_quantized(model, tmp_path / "model.safetensors"), config)
    assert_same_state(model, loaded)
    assert {n: type(m) for n, m in loaded.named_modules()} == {n: type(m) for n, m in model.named_modules()}
    if config.tie_embeddings:  # saved once, shared again after loading
        assert "output.qweight" not in safe_open(str(tmp_path / "model.safetensors"), framework="pt").keys()
        assert loaded.output.qweight is loaded.tok_embeddings.qweight
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
        (None, lambda h: h["layers"][WQ].update(group_size=32.0), rf"layer '{WQ}'.*one of.*got 32.0"),
        (None, lambda h: h["layers"][WQ].pop("group_size"), rf"layer '{WQ}'.*missing \['group_size'\]"),
        (None, lambda h: h["layers"][WQ].update(symmetric=True), rf"layer '{WQ}'.*unexpected \['symmetric'\]"),
        (None, lambda h: h["layers"].update({"layers.1.attention": {"scheme": "int8"}}),
         r"names 'layers.1.attention', not a linear layer"),
        (None, lambda h: h.update(version=1), "the quantization header must be"),
    ],
    ids=["truncated", "wrong-int-dtype", "scales-not-float", "missing", "group-size", "symmetric",
         "unknown-scheme", "bad-group-size", "float-group-size", "no-group-size", "fixed-setting", "not-a-layer",
         "version"],
)
def test_a_damaged_file_is_an_error_naming_what_is_wrong(tmp_path, change_tensors, change_header, message):
    path = save_quantized(quantize(random_llama(CONFIG), "int4", 32), tmp_path / "model.safetensors")
    rewrite(path, change_tensors, change_header)
    with pytest.raises(FormatError, match=message):
        load_quantized(path, CONFIG)


def test_a_tied_file_whose_two_heads_disagree_is_refused(tmp_path):
    path = save_quantized(quantize(random_llama(TIED), "int8", include_output=True), tmp_path / "model.safetensors")
    rewrite(path, change_header=lambda h: h["layers"].pop("output"))
    with pytest.raises(FormatError, match="ties the output head to the embedding, but the quantization header"):
        load_quantized(path, TIED)


def test_a_file_without_the_header_is_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(FormatError, match="not a quantized model file"):
        load_quantized(path, CONFIG)


# ---------------------------------------------------------------- checkpoints: our layout and quantized GGUF

SP_TEXT = "To be, or not to be, that is the question.\nROMEO:\nWhat light\n" * 50


@pytest.mark.parametrize("scheme, group_size", [("int8", 64), ("int4", 32)])
def test_a_quantized_checkpoint_directory_loads_with_its_tokenizer(tmp_path, scheme, group_size):
    from llama_from_scratch import load_checkpoint, train_bpe
    from llama_from_scratch.checkpoints import load_pretrained
    from llama_from_scratch.checkpoints.save import save_checkpoint

    tokenizer = train_bpe(SP_TEXT, vocab_size=300)
    config = TIED.replace(vocab_size=300)
    model = quantize(random_llama(config), scheme, group_size, include_output=True)
    save_checkpoint(model, tokenizer, tmp_path / "q", format="quantized", chat_template="{{ messages }}")
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["config.json", "quantized.safetensors",
                                                                   "tokenizer.model", "tokenizer_config.json"]
    loaded = load_pretrained(tmp_path / "q", device="cpu")
    assert_same_state(model, loaded.model)  # codes and scales as they were: nothing dequantized on the way
    assert loaded.tokenizer.encode("What light", bos=True) == tokenizer.encode("What light", bos=True)
    assert loaded.chat_template == "{{ messages }}"
    half = load_checkpoint(tmp_path / "q", device="cpu", dtype=torch.float16)  # dtype: for the parameters only
    assert half.norm.weight.dtype == torch.float16
    for name, layer in quantized_layers(half).items():  # codes and float32 scales untouched
        assert_same_state(model.get_submodule(name), layer)


def test_save_checkpoint_keeps_quantized_and_float_models_apart(tmp_path):
    from llama_from_scratch.checkpoints.save import save_checkpoint

    quantized, plain = quantize(random_llama(CONFIG), "int8"), random_llama(CONFIG)
    for fmt in ("hf", "meta", "gguf"):
        with pytest.raises(ValueError, match="holds quantized layers: save it with format='quantized'"):
            save_checkpoint(quantized, None, tmp_path / fmt, format=fmt)
    with pytest.raises(ValueError, match="format='quantized' saves a model quantized with"):
        save_checkpoint(plain, None, tmp_path / "q", format="quantized")
    with pytest.raises(ValueError, match="quant='q4_0' applies to the GGUF format only"):
        save_checkpoint(plain, None, tmp_path / "hf", format="hf", quant="q4_0")
    with pytest.raises(ValueError, match="unknown GGUF quantization 'q3_k'; choose one of q8_0, q4_0"):
        save_checkpoint(plain, None, tmp_path / "m.gguf", format="gguf", quant="q3_k")
    odd = random_llama(LlamaConfig.from_preset("tiny", hidden_dim=200))  # 200 is not a multiple of 32
    with pytest.raises(ValueError, match=r"tensor 'layers.0.feed_forward.w2.weight': .*rows of 200 values; need a multiple of 32"):
        save_checkpoint(odd, None, tmp_path / "odd.gguf", format="gguf", quant="q8_0")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.parametrize("quant", ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"])
def test_a_quantized_gguf_holds_ggufs_own_bytes_and_loads_back(tmp_path, quant):
    """Every matrix in the file equals gguf.quants.quantize of our float weight, byte for byte; the norms
    stay float32; and loading the file gives the model whose weights are those blocks dequantized."""
    gguf = pytest.importorskip("gguf")
    from llama_from_scratch import load_checkpoint
    from llama_from_scratch.checkpoints.gguf import meta_to_gguf_name
    from llama_from_scratch.checkpoints import model_tensors, save_checkpoint

    model = random_llama(TIED)
    path = save_checkpoint(model, None, tmp_path / "model.gguf", format="gguf", quant=quant)
    block_type = gguf.GGMLQuantizationType[quant.upper()]
    stored = {t.name: t for t in gguf.GGUFReader(path).tensors}
    weights = model_tensors(model)
    assert len(stored) == len(weights)
    for name, weight in weights.items():
        tensor = stored[meta_to_gguf_name(name)]
        if weight.ndim == 1:
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F32, name
            continue
        assert tensor.tensor_type == block_type, name
        expected = gguf.quants.quantize(weight.numpy(), block_type)
        assert np.array_equal(np.asarray(tensor.data).reshape(expected.shape), expected), name
    loaded = load_checkpoint(path, device="cpu")
    for name, weight in weights.items():
        if weight.ndim == 2:
            expected = gguf.quants.dequantize(gguf.quants.quantize(weight.numpy(), block_type), block_type)
            assert torch.equal(loaded.state_dict()[name], torch.from_numpy(expected)), name
