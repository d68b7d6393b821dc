"""Chapter 13's reward model: one score per sequence read at its last real token, saved and loaded like a checkpoint."""

import pytest
import torch
from helpers import random_llama

from llama_from_scratch import FormatError, LlamaConfig
from llama_from_scratch.alignment.reward_model import (
    RewardModel,
    load_reward_model,
    right_pad,
    save_reward_model,
    score_sequences,
)
from llama_from_scratch.checkpoints.load import load_checkpoint
from llama_from_scratch.training.checkpoint import write_full_model

CONFIG = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, hidden_dim=64, max_seq_len=64)
TIED = LlamaConfig(**{**CONFIG.__dict__, "tie_embeddings": True})


def reward_model(config=CONFIG, seed=0):
    return RewardModel.from_language_model(random_llama(config, seed).double(), seed=seed).eval()


def sequences(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, CONFIG.vocab_size, (int(k),), generator=g).tolist() for k in torch.randint(3, 12, (n,), generator=g)]


def test_score_is_read_at_the_last_real_token_and_ignores_right_padding():
    model = reward_model()
    seqs = sequences()
    tokens, lengths = right_pad(seqs, pad_id=7)
    batch = model(tokens, lengths)
    one_by_one = torch.cat([model(torch.tensor([s]), torch.tensor([len(s)])) for s in seqs])
    # float64 throughout; rows batched or alone differ by summation order in the matrix products only (~1e-15)
    assert torch.allclose(batch, one_by_one, rtol=0, atol=1e-12)
    longer = torch.cat([tokens, torch.full((len(seqs), 5), 123)], dim=1)  # more padding, of another id
    assert torch.allclose(model(longer, lengths), batch, rtol=0, atol=1e-12)
    # the head reads the final norm's output at position length - 1, nothing else
    hidden = model.hidden_states(torch.tensor([seqs[0]]))[0, -1]
    assert torch.allclose(batch[0], hidden @ model.score.weight[0], rtol=0, atol=1e-12)
    assert torch.allclose(score_sequences(model, seqs, batch_size=3).double(), batch.float().double(), atol=1e-6)


def test_lengths_are_checked():
    model = reward_model()
    tokens, lengths = right_pad(sequences(2))
    for bad in (lengths * 0, lengths + 100, lengths[:1]):
        with pytest.raises(ValueError, match="lengths must hold"):
            model(tokens, bad)


@pytest.mark.parametrize("config", [CONFIG, TIED], ids=["untied", "tied"])
def test_reward_model_round_trip(tmp_path, config):
    model = reward_model(config).float()
    save_reward_model(model, tmp_path / "rm")
    loaded = load_reward_model(tmp_path / "rm", device="cpu", dtype=torch.float32)
    assert isinstance(loaded, RewardModel)
    tokens, lengths = right_pad(sequences())
    assert torch.equal(loaded(tokens, lengths), model(tokens, lengths))
    if config.tie_embeddings:
        assert loaded.output.weight is loaded.tok_embeddings.weight


def test_language_model_and_reward_model_are_not_confused(tmp_path):
    (tmp_path / "lm").mkdir()
    write_full_model(random_llama(CONFIG), tmp_path / "lm")
    with pytest.raises(FormatError, match=r"a language model .* not a reward model"):
        load_reward_model(tmp_path / "lm")
    save_reward_model(reward_model().float(), tmp_path / "rm")
    with pytest.raises(FormatError, match="a reward model .* not a language model"):
        load_checkpoint(tmp_path / "rm", device="cpu")
    with pytest.raises(TypeError, match="reward model already"):
        RewardModel.from_language_model(reward_model())


def test_a_reward_model_without_its_head_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    save_reward_model(reward_model().float(), tmp_path / "rm")
    weights = load_file(tmp_path / "rm" / "model.safetensors")
    del weights["score.weight"]
    save_file(weights, tmp_path / "rm" / "model.safetensors")
    with pytest.raises(FormatError, match="missing 1 tensor.*score.weight"):
        load_reward_model(tmp_path / "rm")


def test_reward_model_learns_a_known_rule_through_the_training_loop(tmp_path):
    from llama_from_scratch.alignment.reward_training import RewardData
    from llama_from_scratch.training.train import TrainConfig, train

    # the known rule: an answer ending in token 5 beats one ending in token 6, whatever comes before
    def pairs(n, seed):
        return [(s + [5], s + [6]) for s in sequences(n, seed)]

    model = RewardModel.from_language_model(random_llama(CONFIG, 1), seed=1)
    data = RewardData(pairs(32, 1), pairs(16, 2))
    config = TrainConfig(steps=12, batch_size=8, lr=1e-2, warmup_steps=2, eval_every=12, checkpoint_every=12, seed=0)
    before = data.validate(model, config)
    history = train(model, data, config)
    assert history[-1]["val_pair_accuracy"] == 1.0 and history[-1]["val_loss"] < before["loss"]
    assert history[-1]["val_chosen_reward"] > history[-1]["val_rejected_reward"]


def test_a_reward_model_starts_from_a_checkpoint_with_its_lora_adapters_merged(tmp_path):
    from test_alignment_sampling import TOKENIZER

    from llama_from_scratch.alignment.reward_model import reward_model_from_checkpoint
    from llama_from_scratch.checkpoints import save_checkpoint
    from llama_from_scratch.finetuning import add_lora, merge_lora, save_adapter
    from llama_from_scratch.finetuning.lora import lora_layers

    config = LlamaConfig(**{**CONFIG.__dict__, "vocab_size": 258})
    save_checkpoint(random_llama(config), TOKENIZER, tmp_path / "base")
    tuned = random_llama(config)
    add_lora(tuned, rank=2, alpha=4)
    with torch.no_grad():
        for layer in lora_layers(tuned).values():
            layer.lora_B.normal_(0.0, 0.1)
    save_adapter(tuned, tmp_path / "adapter")
    started = reward_model_from_checkpoint(tmp_path / "base", [tmp_path / "adapter"], seed=3, device="cpu")
    expected = RewardModel.from_language_model(merge_lora(tuned), seed=3)
    tokens, lengths = right_pad(sequences())
    tokens = tokens % 258  # this model's vocabulary
    # the same merged weights (W + B @ A summed once, in the same order) and the same seeded head
    assert torch.equal(started.model(tokens, lengths), expected(tokens, lengths))
    assert started.tokenizer.vocab_size == 258
