"""Chapter 13's commands: `reward-model` and `rl`, resumable like `train` (a resumed run repeats the uninterrupted one)."""

import json

import pytest
import torch
from helpers import random_llama
from safetensors.torch import load_file

from llama_from_scratch import LlamaConfig
from llama_from_scratch.alignment.reward_model import RewardModel, load_reward_model, save_reward_model
from llama_from_scratch.chat import CHATML_TEMPLATE
from llama_from_scratch.checkpoints import save_checkpoint
from llama_from_scratch.cli import main
from llama_from_scratch.tokenization.byte_bpe import ByteLevelBPE, bytes_to_unicode

TOKENIZER = ByteLevelBPE(
    {char: byte for byte, char in bytes_to_unicode().items()}, [],
    special_tokens={"<|im_start|>": 256, "<|im_end|>": 257}, bos_id=256, eos_id=257,
)
CONFIG = LlamaConfig(dim=16, n_layers=1, n_heads=2, vocab_size=258, hidden_dim=32, max_seq_len=512)


@pytest.fixture
def one_thread(monkeypatch):
    """Commands on one thread (set through LLAMA_THREADS, as a user would), PyTorch's count restored afterwards.

    A command picks its thread count from the machine's load, and a float32 sum split over another number of
    threads rounds differently; these tiny products gain nothing from more threads anyway."""
    threads = torch.get_num_threads()
    monkeypatch.setenv("LLAMA_THREADS", "1")
    yield
    torch.set_num_threads(threads)


def test_cli_rl_resumes_exactly_and_refuses_changed_settings(tmp_path, capsys, one_thread):
    save_checkpoint(random_llama(CONFIG), TOKENIZER, tmp_path / "base", chat_template=CHATML_TEMPLATE)
    # a learned reward (random, but it tells every answer apart) gives the untrained model something to learn
    save_reward_model(RewardModel.from_language_model(random_llama(CONFIG, seed=1)), tmp_path / "rm")
    common = ["rl", "--base", str(tmp_path / "base"), "--batch-size", "1", "--group-size", "2", "--max-new-tokens", "3"]
    common += ["--train-questions", "4", "--test-questions", "1", "--eval-every", "2", "--checkpoint-every", "1"]
    common += ["--lr", "0.01", "--reward-model", str(tmp_path / "rm")]
    assert main([*common, "--out", str(tmp_path / "once"), "--steps", "2"]) == 0
    assert main([*common, "--out", str(tmp_path / "twice"), "--steps", "1"]) == 0
    assert main([*common, "--out", str(tmp_path / "twice"), "--steps", "2", "--resume"]) == 0
    adapter = "step-0000002/adapter/adapter_model.safetensors"
    once, twice = load_file(tmp_path / "once" / adapter), load_file(tmp_path / "twice" / adapter)
    assert once.keys() == twice.keys() and all(torch.equal(once[k], twice[k]) for k in once)
    assert any(once[k].abs().max() > 0 for k in once if "lora_B" in k)  # it did learn something
    assert "val learned_reward" in capsys.readouterr().out  # beside the true rule's "val reward"
    assert main([*common, "--out", str(tmp_path / "twice"), "--steps", "3", "--resume", "--group-size", "3"]) == 1
    assert "group_size: 2 -> 3" in capsys.readouterr().err


def test_cli_reward_model_trains_and_saves_a_reward_model(tmp_path, capsys, one_thread):
    save_checkpoint(random_llama(CONFIG), TOKENIZER, tmp_path / "base", chat_template=CHATML_TEMPLATE)
    common = ["reward-model", "--base", str(tmp_path / "base"), "--batch-size", "2", "--eval-every", "2"]
    common += ["--train-pairs", "4", "--test-pairs", "2", "--out", str(tmp_path / "rm")]
    assert main([*common, "--steps", "2", "--data", "secret"]) == 0
    assert "val pair_accuracy" in capsys.readouterr().out
    assert load_reward_model(tmp_path / "rm").config == CONFIG
    assert main([*common, "--steps", "3", "--data", "secret", "--resume"]) == 0  # the run continues, head included
    assert (tmp_path / "rm" / "step-0000003" / "model.safetensors").exists()
    assert main([*common, "--steps", "4", "--data", "arithmetic", "--resume"]) == 1  # other pairs: another run
    assert "different training data" in capsys.readouterr().err
    same = [{"messages": [{"role": "user", "content": "q"}], "chosen": "x", "rejected": "x"}] * 3
    (tmp_path / "same.jsonl").write_text("\n".join(json.dumps(r) for r in same))
    assert main([*common, "--data", str(tmp_path / "same.jsonl"), "--overwrite"]) == 1
    assert "same.jsonl:1: chosen and rejected are the same text" in capsys.readouterr().err
