"""The C++ int4 kernel (llama_from_scratch.quantization.int4_kernel): its accuracy bound, its fallback.

The first test to need the kernel builds it (about 10 s of compiler on two cores, once: the build is cached
in ~/.cache/llama_from_scratch, and later runs only load it).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import random_llama

from llama_from_scratch import GenerationConfig, LlamaConfig, generate
from llama_from_scratch.quantization import Int4Linear, int4_kernel, quantize

U = 2.0**-24  # float32 unit roundoff


@pytest.fixture(scope="module")
def kernel():
    if not int4_kernel.available():
        pytest.skip("the int4 kernel could not be built here (no C++ compiler?); its fallback is tested below")


def layer_and_input(out_features, in_features, group_size, symmetric, rows, seed=0):
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=generator)
    x = torch.randn(rows, in_features, generator=generator)
    x[:, 3] *= 40  # an outlier channel, as LLM activations have: it coarsens its own block of 32 only
    return Int4Linear.from_weight(w, group_size=group_size, symmetric=symmetric), x


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("in_features, rows", [(100, 1), (576, 3), (200, 4)])  # partial last groups; 1-4 rows
def test_the_kernel_is_within_the_int8_rounding_bound(kernel, symmetric, group_size, in_features, rows):
    layer, x = layer_and_input(37, in_features, group_size, symmetric, rows)
    exact = x.double() @ layer.dequantize().double().T
    y = int4_kernel.int4_matmul(x, layer.qweight, layer.scales, layer.mins, group_size)
    bound = int4_kernel.int8_error_bound(x, layer.qweight, layer.scales, layer.mins, group_size)  # derived there
    assert y.shape == (rows, 37) and y.dtype == torch.float32
    assert ((y.double() - exact).abs() <= bound).all()
    assert (y.double() - exact).abs().max() > 100 * U * exact.abs().max()  # int8 inputs: not float32's exactness


def test_the_kernel_multiplies_by_the_int8_rounded_input(kernel):
    """Exactly llama.cpp's Q8_1 rounding, x_i -> d a_i with a = round(x / d), d = max|x| / 127 per block of 32: against
    W @ (d a) in float64 only float32's rounding is left, the second term of int8_error_bound: (K / 16 + 64) u times
    sum_i (|s c_i| + |m|) |d a_i|, with |s c_i| = |w_i - m|. (Rounding x / d to the even neighbour at a tie could
    differ; random inputs do not hit one.)"""
    layer, x = layer_and_input(37, 200, 64, False, 3, seed=1)
    blocks = F.pad(x, (0, 56)).view(3, -1, 32)  # 200 inputs padded to 256 = 4 groups of 64
    d = blocks.abs().amax(-1, keepdim=True) / 127
    rounded = (torch.round(blocks / d) * d).view(3, -1)[:, :200].double()
    w, m = layer.dequantize().double(), layer.mins.double().repeat_interleave(64, dim=-1)[:, :200]
    y = int4_kernel.int4_matmul(x, layer.qweight, layer.scales, layer.mins, 64).double()
    bound = (256 / 16 + 64) * U * (rounded.abs() @ ((w - m).abs() + m.abs()).T)
    assert ((y - rounded @ w.T).abs() <= bound).all()


def test_int4_linear_takes_the_kernel_for_decoding_rows_only(kernel, monkeypatch):
    """One row (decoding) goes through the kernel; a prefill of many rows, float64 and inputs that need a
    gradient (the op has no backward) through dequantize-then-matmul, which the switch forces everywhere."""
    layer, x = layer_and_input(40, 576, 32, False, int4_kernel.MAX_ROWS + 1)
    w = layer.dequantize()
    one_row = layer(x[:1])
    assert torch.equal(one_row, int4_kernel.int4_matmul(x[:1], layer.qweight, layer.scales, layer.mins, 32))
    assert not torch.equal(one_row, F.linear(x[:1], w))
    assert torch.equal(layer(x), F.linear(x, w))
    assert torch.equal(layer(x[:1].double()), F.linear(x[:1].double(), w.double()))
    needs_grad = x[:1].clone().requires_grad_()
    assert torch.equal(layer(needs_grad), F.linear(x[:1], w)) and layer(needs_grad).requires_grad
    monkeypatch.setenv(int4_kernel.SWITCH, "0")
    assert torch.equal(layer(x[:1]), F.linear(x[:1], w))


def test_a_failed_build_warns_and_falls_back(tmp_path, monkeypatch):
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    with pytest.warns(UserWarning, match="int4 kernel not built .*pure-PyTorch path"):
        assert int4_kernel.build(broken, tmp_path / "build") is False
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        assert int4_kernel.build(int4_kernel.SOURCE, tmp_path / "build") is False


@pytest.mark.slow
def test_compiled_decoding_calls_the_kernel(kernel, monkeypatch):
    """torch.compile traces through the op (its shape-only twin) and calls the kernel as eager decoding does:
    the same greedy tokens (the rest of the step is reordered float32 sums, about 1e-6 on logits that lead
    by far more, as in test_quantization's compiled test)."""
    model = quantize(
        random_llama(LlamaConfig.from_preset("tiny").replace(tie_embeddings=True)), "int4", 32, include_output=True
    )
    calls = []
    original = int4_kernel.int4_matmul
    counting = lambda *args: calls.append(1) or original(*args)  # noqa: E731 (counts while Dynamo traces)
    monkeypatch.setattr(int4_kernel, "int4_matmul", counting)
    torch._dynamo.reset()
    tokens = generate(model, [1, 2, 3], GenerationConfig(6), compile=True)
    assert calls, "the compiled decode step never called the kernel"
    monkeypatch.setattr(int4_kernel, "int4_matmul", original)
    assert tokens == generate(model, [1, 2, 3], GenerationConfig(6))
