"""load_checkpoint on Meta's consolidated.NN.pth layout and on llama.cpp's GGUF files."""

import json
import os
import pickle

import numpy as np
import pytest
import torch

from helpers import random_llama
from llama_from_scratch import LlamaConfig, load_checkpoint
from llama_from_scratch.checkpoints.gguf import meta_to_gguf_name

gguf = pytest.importorskip("gguf")

# Meta's params.json for a model whose FFN size follows the multiple_of / ffn_dim_multiplier rule.
PARAMS = {
    "dim": 64,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "multiple_of": 32,
    "ffn_dim_multiplier": 1.3,
    "norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "vocab_size": -1,
}
CONFIG = LlamaConfig(**{**PARAMS, "vocab_size": 96, "max_seq_len": 4096})
TOKENS = torch.randint(0, 96, (2, 20), generator=torch.Generator().manual_seed(0))

# How Meta's model-parallel layers split each weight across GPUs (written out here, independently of the package):
# ColumnParallelLinear splits output rows, RowParallelLinear input columns, ParallelEmbedding the embedding dim.
SPLIT_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}


def write_meta(model, directory, n_shards, vocab_size=-1):
    directory.mkdir(exist_ok=True)
    (directory / "params.json").write_text(json.dumps({**PARAMS, "vocab_size": vocab_size}))
    shards = [{} for _ in range(n_shards)]
    for name, tensor in model.state_dict().items():
        kind = name.split(".")[-2]
        pieces = tensor.chunk(n_shards, dim=SPLIT_DIM[kind]) if kind in SPLIT_DIM else [tensor] * n_shards
        for shard, piece in zip(shards, pieces):
            shard[name] = piece.clone()
    for i, shard in enumerate(shards):
        shard["rope.freqs"] = torch.zeros(CONFIG.head_dim // 2)  # LLaMA 1 files carry this buffer
        torch.save(shard, directory / f"consolidated.{i:02d}.pth")


@pytest.mark.parametrize("n_shards", [1, 2])
def test_meta_checkpoint_loads_to_the_same_logits(tmp_path, n_shards):
    original = random_llama(CONFIG)
    write_meta(original, tmp_path / "meta", n_shards)
    if n_shards == 2:  # really split: each file holds half of a column- and a row-parallel weight
        shard = torch.load(tmp_path / "meta" / "consolidated.01.pth", weights_only=True)
        assert shard["layers.0.attention.wq.weight"].shape == (32, 64)
        assert shard["layers.0.attention.wo.weight"].shape == (64, 32)
    model = load_checkpoint(tmp_path / "meta", device="cpu")
    assert model.config == CONFIG
    assert model.config.hidden_dim == 224  # int(1.3 * int(2/3 * 4 * 64)) = 221, rounded up to a multiple of 32
    with torch.no_grad():
        assert torch.equal(model(TOKENS), original(TOKENS))  # the same float32 weights and code: equal to the bit


def test_meta_shards_of_different_models_are_an_error(tmp_path):
    write_meta(random_llama(CONFIG), tmp_path / "meta", 2)
    shard = torch.load(tmp_path / "meta" / "consolidated.01.pth", weights_only=True)
    del shard["norm.weight"]
    torch.save(shard, tmp_path / "meta" / "consolidated.01.pth")
    with pytest.raises(ValueError, match="consolidated.01.pth: holds different tensors"):
        load_checkpoint(tmp_path / "meta", device="cpu")


class RunsCode:
    """A pickle that would run a shell command when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True])
def test_a_pth_whose_pickle_runs_code_is_refused_without_running_it(tmp_path, legacy):
    directory = tmp_path / "evil"
    write_meta(random_llama(CONFIG), directory, 1)
    marker = tmp_path / "pwned"
    state = torch.load(directory / "consolidated.00.pth", weights_only=True)
    state["payload"] = RunsCode(marker)
    if legacy:  # a bare pickle, as PyTorch wrote before 1.6
        with open(directory / "consolidated.00.pth", "wb") as f:
            pickle.dump(state, f)
    else:
        torch.save(state, directory / "consolidated.00.pth")
    with pytest.raises(ValueError, match="consolidated.00.pth: refused to load"):
        load_checkpoint(directory, device="cpu")
    assert not marker.exists()


def write_gguf(model, path, qtype=None, tie=False):
    """A GGUF file of ``model`` as llama.cpp lays it out; matrices quantized to ``qtype`` if given."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.n_layers)
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.dim)
    writer.add_feed_forward_length(config.hidden_dim)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_vocab_size(config.vocab_size)
    for name, tensor in model.state_dict().items():
        if tie and name == "output.weight":
            continue
        array = tensor.numpy()
        if qtype is not None and array.ndim == 2:
            writer.add_tensor(meta_to_gguf_name(name), gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(meta_to_gguf_name(name), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("tie", [False, True])
def test_f32_gguf_loads_to_the_same_logits(tmp_path, tie):
    original = random_llama(CONFIG.replace(tie_embeddings=tie))
    write_gguf(original, tmp_path / "model.gguf", tie=tie)
    model = load_checkpoint(tmp_path / "model.gguf", device="cpu")
    assert model.config.tie_embeddings == tie
    with torch.no_grad():
        assert torch.equal(model(TOKENS), original(TOKENS))  # the same float32 weights and code: equal to the bit


def quantization_step(weight: torch.Tensor, name: str) -> torch.Tensor:
    """The spacing of the values ``name`` can store near each element of ``weight`` (same shape).

    Rounding to the nearest stored value errs by at most half a step; the block's scale is itself stored in
    float16 (2^-11 relative), which moves a value by at most 2^-11 * 15 (4-bit) or 2^-11 * 127 (8-bit) steps,
    and Q4_0's range [-8, 7] steps cuts the block's largest value by up to one step. One step covers all three.
    F16 rounds each value to 11 significant bits (2^-11 relative), or to 2^-24 where it is subnormal.
    """
    if name == "F16":
        return torch.maximum(weight.abs() * 2.0**-11, torch.tensor(2.0**-24))
    blocks = weight.reshape(-1, 32)  # every GGUF block format here quantizes 32 consecutive values together
    if name == "Q8_0":
        step = blocks.abs().amax(1, keepdim=True) / 127
    elif name == "Q4_0":
        step = blocks.abs().amax(1, keepdim=True) / 8
    else:  # Q4_1: 16 levels from the block's minimum to its maximum
        step = (blocks.amax(1, keepdim=True) - blocks.amin(1, keepdim=True)) / 15
    return step.expand_as(blocks).reshape(weight.shape)


@pytest.mark.parametrize("name", ["F16", "Q8_0", "Q4_0", "Q4_1"])
def test_quantized_gguf_dequantizes_every_matrix(tmp_path, name):
    qtype = gguf.GGMLQuantizationType[name]
    original = random_llama(CONFIG)
    write_gguf(original, tmp_path / "model.gguf", qtype=qtype)
    model = load_checkpoint(tmp_path / "model.gguf", device="cpu")
    for key, weight in original.state_dict().items():
        loaded = model.state_dict()[key]
        if weight.ndim == 2:
            expected = gguf.quants.dequantize(gguf.quants.quantize(weight.numpy(), qtype), qtype)
            np.testing.assert_array_equal(loaded.numpy(), expected.reshape(weight.shape))
            # and it is close to the original: within one quantization step of each value
            assert ((loaded - weight).abs() <= quantization_step(weight, name)).all()
        else:
            assert torch.equal(loaded, weight)


def test_truncated_gguf_is_the_same_clear_error_for_weights_and_tokenizer(tmp_path):
    from llama_from_scratch import FormatError, load_tokenizer

    write_gguf(random_llama(CONFIG), tmp_path / "model.gguf")
    data = (tmp_path / "model.gguf").read_bytes()
    (tmp_path / "model.gguf").write_bytes(data[: len(data) // 3])
    messages = set()
    for load in (lambda path: load_checkpoint(path, device="cpu"), load_tokenizer):
        with pytest.raises(FormatError, match=r"model.gguf: tensor '[\w.]+' needs bytes \d+ to \d+, but the file") as error:
            load(tmp_path / "model.gguf")
        messages.add(str(error.value))
    assert len(messages) == 1, messages


@pytest.mark.slow
def test_unsupported_or_incomplete_gguf_is_a_clear_error(tmp_path):
    """A tokenizer this package does not implement, and no model metadata: one line each from the CLI."""
    import subprocess
    import sys

    from llama_from_scratch import load_tokenizer

    writer = gguf.GGUFWriter(str(tmp_path / "model.gguf"), "llama")
    writer.add_tokenizer_model("bert")
    writer.add_token_list(["[CLS]", "a"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(NotImplementedError, match="model.gguf: tokenizer model 'bert' is not supported"):
        load_tokenizer(tmp_path / "model.gguf")
    for command in (["info", str(tmp_path / "model.gguf")], ["chat", "--checkpoint", str(tmp_path / "model.gguf")]):
        result = subprocess.run([sys.executable, "-m", "llama_from_scratch", *command], capture_output=True, text=True)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("error:") and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and "model.gguf" in result.stderr, result.stderr


def test_legacy_format_pth_still_loads(tmp_path):
    """Files from PyTorch before 1.6 cannot be memory-mapped; they are read whole instead."""
    original = random_llama(CONFIG)
    write_meta(original, tmp_path / "meta", 1)
    state = torch.load(tmp_path / "meta" / "consolidated.00.pth", weights_only=True)
    torch.save(state, tmp_path / "meta" / "consolidated.00.pth", _use_new_zipfile_serialization=False)
    model = load_checkpoint(tmp_path / "meta", device="cpu")
    with torch.no_grad():
        assert torch.equal(model(TOKENS), original(TOKENS))  # the same float32 weights and code: equal to the bit
