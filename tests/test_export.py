"""save_checkpoint round trips: our model -> each format -> transformers / load_checkpoint, same logits."""

import copy

import pytest
import torch

from helpers import SMOLLM2, SMOLLM2_INSTALL, assert_same_logits, float32_rounding, needs_transformers, random_llama
from llama_from_scratch import LlamaConfig, load_checkpoint
from llama_from_scratch.checkpoints.save import save_checkpoint

CONFIG = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, hidden_dim=160, rope_theta=20000.0)
TOKENS = torch.randint(0, 96, (2, 20), generator=torch.Generator().manual_seed(0))


def logits(model):
    with torch.no_grad():
        return model(TOKENS)


@needs_transformers
@pytest.mark.parametrize("tie", [False, True])
def test_hf_export_loads_in_transformers_with_identical_logits(tmp_path, tie):
    import transformers

    model = random_llama(CONFIG.replace(tie_embeddings=tie))
    save_checkpoint(model, None, tmp_path / "hf", format="hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        assert_same_logits(theirs(TOKENS).logits, logits(model), float32_rounding(model, TOKENS))
    assert torch.equal(logits(load_checkpoint(tmp_path / "hf", device="cpu")), logits(model))  # same weights, same code


@pytest.mark.parametrize(("n_shards", "tie"), [(1, False), (2, False), (2, True)])
def test_meta_export_round_trip(tmp_path, n_shards, tie):
    model = random_llama(CONFIG.replace(tie_embeddings=tie))
    save_checkpoint(model, None, tmp_path / "meta", format="meta", n_shards=n_shards)
    assert len(list((tmp_path / "meta").glob("consolidated.*.pth"))) == n_shards
    loaded = load_checkpoint(tmp_path / "meta", device="cpu")
    assert loaded.config == model.config
    assert torch.equal(logits(loaded), logits(model))  # the same float32 weights and code: equal to the bit


def test_meta_export_follows_metas_rule_when_it_can():
    from llama_from_scratch.checkpoints.meta import meta_params

    rule = LlamaConfig(dim=64, n_layers=1, n_heads=4, vocab_size=8, multiple_of=32, ffn_dim_multiplier=1.3)
    assert "hidden_dim" not in meta_params(rule)
    assert meta_params(CONFIG)["hidden_dim"] == 160


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gguf_export_round_trip(tmp_path, dtype):
    model = random_llama(CONFIG.replace(tie_embeddings=True))
    save_checkpoint(model, None, tmp_path / "model.gguf", format="gguf", dtype=dtype)
    loaded = load_checkpoint(tmp_path / "model.gguf", device="cpu")
    assert loaded.config == model.config
    # The file holds the matrices in `dtype` (norm gains stay float32, as in llama.cpp's files), so the loaded
    # model is exactly ours with its matrices rounded to `dtype` and back: equal to the bit, no tolerance needed.
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for weight in rounded.parameters():
            if weight.ndim == 2:
                weight.copy_(weight.to(dtype).float())
    assert torch.equal(logits(loaded), logits(rounded))


def test_export_refuses_to_overwrite_and_bad_arguments(tmp_path):
    model = random_llama(CONFIG)
    save_checkpoint(model, None, tmp_path / "hf")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_checkpoint(model, None, tmp_path / "hf")
    save_checkpoint(model, None, tmp_path / "hf", overwrite=True)
    with pytest.raises(ValueError, match="unknown format"):
        save_checkpoint(model, None, tmp_path / "x", format="onnx")
    with pytest.raises(ValueError, match="n_kv_heads=2 is not divisible"):
        save_checkpoint(model, None, tmp_path / "meta", format="meta", n_shards=4)
    assert not (tmp_path / "meta").exists()  # nothing half-written
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # and no staging folder left behind


TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
STRINGS = ["To be, or not to be", "héllo wörld 🦙\n\n  spaces", "ROMEO:\nWhat light? 1604", ""]


def _round_trip(tmp_path, tokenizer, config, fmt):
    from llama_from_scratch.checkpoints import load_pretrained

    model = random_llama(config)
    target = tmp_path / ("model.gguf" if fmt == "gguf" else fmt)
    save_checkpoint(model, tokenizer, target, format=fmt, chat_template=TEMPLATE)
    loaded = load_pretrained(target, device="cpu")
    assert loaded.chat_template == TEMPLATE
    for text in STRINGS:
        assert loaded.tokenizer.encode(text, bos=True) == tokenizer.encode(text, bos=True), text
    assert (loaded.tokenizer.bos_id, loaded.tokenizer.eos_id) == (tokenizer.bos_id, tokenizer.eos_id)
    assert torch.equal(logits(loaded.model), logits(model))  # the same float32 weights and code: equal to the bit
    return target


@pytest.mark.parametrize("fmt", ["hf", "meta", "gguf"])
def test_sentencepiece_tokenizer_travels_with_the_weights(tmp_path, fmt):
    from llama_from_scratch import train_bpe

    tokenizer = train_bpe("To be, or not to be, that is the question.\nROMEO:\nWhat light\n" * 50, vocab_size=300)
    _round_trip(tmp_path, tokenizer, CONFIG.replace(vocab_size=300), fmt)


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_byte_level_tokenizer_travels_with_the_weights(tmp_path, fmt):

    from llama_from_scratch.checkpoints.gguf import read_gguf_tokenizer

    if SMOLLM2 is None:
        pytest.skip(f"SmolLM2's byte-level vocabulary comes from its GGUF file: {SMOLLM2_INSTALL}")
    tokenizer = read_gguf_tokenizer(SMOLLM2)
    config = LlamaConfig(dim=16, n_layers=1, n_heads=2, vocab_size=tokenizer.vocab_size, hidden_dim=32)
    target = _round_trip(tmp_path, tokenizer, config, fmt)
    if fmt == "hf":  # the Hugging Face tokenizers library reads our tokenizer.json the same way
        tokenizers = pytest.importorskip("tokenizers")
        reference = tokenizers.Tokenizer.from_file(str(target / "tokenizer.json"))
        for text in STRINGS + ["<|im_start|>user\nHi<|im_end|>"]:
            assert reference.encode(text).ids == tokenizer.encode(text), text
