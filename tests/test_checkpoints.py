"""load_checkpoint on Hugging Face directories: written by transformers itself, and broken on purpose."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import assert_same_logits, float32_rounding, needs_transformers, random_llama
from llama_from_scratch import FormatError, Llama, LlamaConfig, load_checkpoint, save_checkpoint
from llama_from_scratch.checkpoints.hf import config_from_hf, to_transformers

CONFIG = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=120, hidden_dim=160, rope_theta=50000.0)
TOKENS = torch.randint(0, 120, (2, 24), generator=torch.Generator().manual_seed(0))


def save_hf(model, directory, **kwargs):
    hf = to_transformers(model)
    hf.save_pretrained(directory, **kwargs)
    return hf


def save_ours(model, directory):
    save_checkpoint(model, None, directory, overwrite=True)


def save_ours_edited(directory, edit):
    """Our checkpoint of a random model in ``directory``, its weights then changed by ``edit(weights)`` (a dict of
    Hugging Face names to tensors, changed in place): a file broken on purpose."""
    save_ours(random_llama(CONFIG), directory)
    weights = load_file(directory / "model.safetensors")
    edit(weights)
    save_file(weights, directory / "model.safetensors")


@needs_transformers
@pytest.mark.parametrize("tie", [False, True])
def test_loaded_checkpoint_gives_transformers_logits(tmp_path, tie):
    config = CONFIG.replace(tie_embeddings=tie)
    hf = save_hf(random_llama(config), tmp_path)
    model = load_checkpoint(tmp_path, device="cpu")
    assert model.config == config.replace(max_seq_len=model.config.max_seq_len)
    assert (model.output.weight is model.tok_embeddings.weight) == tie
    with torch.no_grad():
        assert_same_logits(model(TOKENS), hf(TOKENS).logits, float32_rounding(model, TOKENS))


@needs_transformers
def test_sharded_checkpoint(tmp_path):
    hf = save_hf(random_llama(CONFIG), tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    model = load_checkpoint(tmp_path, device="cpu")
    with torch.no_grad():
        assert_same_logits(model(TOKENS), hf(TOKENS).logits, float32_rounding(model, TOKENS))


@needs_transformers
def test_bf16_checkpoint_loads_as_fp32_on_cpu(tmp_path):
    hf = to_transformers(random_llama(CONFIG)).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    model = load_checkpoint(tmp_path, device="cpu")
    assert model.tok_embeddings.weight.dtype == torch.float32
    assert model.layers[0].attention.wq.weight.dtype == torch.float32


def test_missing_tensor_names_it_and_returns_nothing(tmp_path):
    save_ours_edited(tmp_path, lambda weights: weights.pop("model.layers.1.mlp.up_proj.weight"))
    # one line naming the checkpoint and the tensor, in our names (not a table of every tensor's file)
    missing = r": the checkpoint is missing 1 tensor\(s\): layers\.1\.feed_forward\.w3\.weight$"
    pattern = "^" + re.escape(str(tmp_path)) + missing
    with pytest.raises(FormatError, match=pattern):
        load_checkpoint(tmp_path, device="cpu")


def test_wrong_shape_names_file_tensor_and_shapes(tmp_path):
    save_ours_edited(tmp_path, lambda weights: weights.update({"model.norm.weight": torch.ones(63)}))
    with pytest.raises(
        ValueError, match=r"model\.safetensors: tensor 'norm\.weight' has shape \(63,\), expected \(64,\)"
    ):
        load_checkpoint(tmp_path, device="cpu")


def test_unknown_tensor_is_an_error(tmp_path):
    bias = {"model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}  # LLaMA's projections have none
    save_ours_edited(tmp_path, lambda weights: weights.update(bias))
    with pytest.raises(ValueError, match="q_proj.bias"):
        load_checkpoint(tmp_path, device="cpu")


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    save_ours(random_llama(CONFIG), tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        load_checkpoint(tmp_path, device="cpu")


@needs_transformers
def test_missing_shard_is_named(tmp_path):
    save_hf(random_llama(CONFIG), tmp_path, max_shard_size="40KB")
    victim = sorted(tmp_path.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        load_checkpoint(tmp_path, device="cpu")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_checkpoint(tmp_path / "nothing-here")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_checkpoint(tmp_path)


# The fields a Hugging Face Llama config.json must have.
MINIMAL_HF_CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 100,
    "vocab_size": 50,
}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_type": "gpt2"}, "model_type"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "llama3"),
        ({"attention_bias": True}, "attention_bias"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"num_key_value_heads": 3}, "n_kv_heads"),
    ],
)
def test_unsupported_or_invalid_config_names_file_and_field(tmp_path, changes, message):
    (tmp_path / "config.json").write_text(json.dumps({**MINIMAL_HF_CONFIG, **changes}))
    with pytest.raises(ValueError, match=message) as error:
        load_checkpoint(tmp_path)
    assert "config.json" in str(error.value)


def test_config_from_transformers_v4_and_v5_rope_fields():
    base = MINIMAL_HF_CONFIG
    assert config_from_hf({**base, "rope_theta": 500000.0}).rope_theta == 500000.0
    assert config_from_hf({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}).rope_theta == 1e6


class Int8Linear(torch.nn.Module):
    """A stand-in for the quantized linears of a later chapter: int8 weights and float scales, as buffers."""

    def __init__(self, out_features: int, in_features: int):
        super().__init__()
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))

    def forward(self, x):
        return x @ (self.weight_int8.float() * self.scale[:, None]).t()


def test_assemble_fills_buffers_and_integer_tensors():
    from llama_from_scratch.checkpoints import assemble, model_tensors

    def with_int8_w2(model):
        model.layers[1].feed_forward.w2 = Int8Linear(CONFIG.dim, CONFIG.hidden_dim)
        return model

    original = with_int8_w2(random_llama(CONFIG))
    original.layers[1].feed_forward.w2.weight_int8.random_(-127, 128)
    original.layers[1].feed_forward.w2.scale.uniform_(0.001, 0.01)
    tensors = model_tensors(original)
    assert tensors["layers.1.feed_forward.w2.weight_int8"].dtype == torch.int8  # kept, not cast to float
    with torch.device("meta"):
        skeleton = with_int8_w2(Llama(CONFIG))
    triples = [("memory", name, t) for name, t in tensors.items()]
    model = assemble(CONFIG, triples, device="cpu", dtype=torch.float32, model=skeleton)
    assert torch.equal(model.layers[1].feed_forward.w2.weight_int8, original.layers[1].feed_forward.w2.weight_int8)
    with torch.no_grad():
        assert torch.equal(model(TOKENS), original(TOKENS))

    wrong = [(f, n, t.float() if n.endswith("weight_int8") else t) for f, n, t in triples]
    with torch.device("meta"):
        skeleton = with_int8_w2(Llama(CONFIG))
    with pytest.raises(FormatError, match=r"weight_int8' is torch.float32, expected torch.int8"):
        assemble(CONFIG, wrong, device="cpu", model=skeleton)


def test_an_interrupted_atomic_write_changes_nothing(tmp_path):
    from llama_from_scratch.checkpoints.atomic import atomic_write

    target = tmp_path / "model"
    with atomic_write(target, directory=True) as staging:
        (staging / "weights").write_text("first")
    with pytest.raises(RuntimeError), atomic_write(target, directory=True) as staging:
        (staging / "weights").write_text("half of the second")
        raise RuntimeError("killed")
    assert (target / "weights").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging folder left behind
