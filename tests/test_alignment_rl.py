"""Chapter 13's RL: the reference is the base with its adapters off, a step with nothing to learn changes nothing,
and an RL run resumes exactly (its samples are a pure function of the step and the weights)."""

import copy

import pytest
import torch
from helpers import random_llama

from llama_from_scratch import LlamaConfig
from llama_from_scratch.alignment.policy import answer_batch, policy_loss, rollout_logprobs, sample_answers
from llama_from_scratch.alignment.rl import RLConfig, RLData, heldout_rewards, rl
from llama_from_scratch.finetuning.dpo import token_logprobs
from llama_from_scratch.finetuning.lora import add_lora, lora_layers
from llama_from_scratch.training.train import configure_optimizer, train_step

CONFIG = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, hidden_dim=64, max_seq_len=64)
PROMPTS = [[1, 5, 9], [2, 7], [3, 3, 3, 8], [4, 11, 6]]
STOP = 0


def reward(indices, answers):
    """A known rule: the share of each answer's tokens below 32 (in [0, 1], so ppo takes it too)."""
    return [sum(t < 32 for t in answer) / max(1, len(answer)) for answer in answers]


def randomize_adapters(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(0.1 * torch.randn(layer.lora_B.shape, generator=generator, dtype=layer.lora_B.dtype))


def rollout(model, group_size=3, seed=0):
    answers = sample_answers(model, PROMPTS[:2], group_size, 6, stop_tokens=[STOP], seed=seed)
    return answer_batch([p for p in PROMPTS[:2] for _ in range(group_size)], answers)


def test_sampled_answers_are_grouped_and_reproducible():
    model = random_llama(CONFIG)
    answers = sample_answers(model, PROMPTS[:2], 3, 6, stop_tokens=[STOP], seed=4)
    assert len(answers) == 6 and answers == sample_answers(model, PROMPTS[:2], 3, 6, stop_tokens=[STOP], seed=4)
    assert all(len(a) <= 6 and (STOP not in a[:-1]) for a in answers)
    assert all(a[-1] == STOP for a in answers if len(a) < 6)  # a stopped answer keeps its stop: it is an action too
    tokens, labels = answer_batch([p for p in PROMPTS[:2] for _ in range(3)], answers)
    for row, (prompt, answer) in enumerate(zip([p for p in PROMPTS[:2] for _ in range(3)], answers)):
        scored = labels[row][labels[row] != -100].tolist()
        assert scored == answer and tokens[row, len(prompt) - 1] == prompt[-1]


def test_reference_logprobs_are_the_untouched_base_model():
    model = random_llama(CONFIG).double()
    tokens, labels = rollout(model)
    base = token_logprobs(copy.deepcopy(model), tokens, labels)
    with pytest.raises(ValueError, match="add_lora"):
        rollout_logprobs(model, tokens, labels)
    add_lora(model, rank=2, alpha=4)
    randomize_adapters(model)  # a policy that has moved away from its base
    old, reference = rollout_logprobs(model, tokens, labels)
    assert not torch.equal(old, base.float())
    # adapters off, every LoRALinear computes base(x): the same operations on the same numbers, the same bits
    assert torch.equal(reference, base.float())
    assert all(layer.enabled for layer in lora_layers(model).values())


def one_step(advantages, beta):
    model = random_llama(CONFIG).double()
    add_lora(model, rank=2, alpha=4)
    randomize_adapters(model)
    tokens, labels = rollout(model)
    old, reference = rollout_logprobs(model, tokens, labels)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = configure_optimizer(model, RLConfig(weight_decay=0.0))
    batch = (tokens, labels, old.double(), reference.double(), advantages)
    train_step(model, optimizer, [batch], 1e-2, 1.0, lambda m, *b: policy_loss(m, *b, clip=0.2, beta=beta))
    return before, model.state_dict()


def test_a_step_with_zero_advantage_and_no_kl_leaves_the_policy_unchanged():
    # at the sampling policy the k3 KL's gradient is not zero unless the policy is the reference: beta = 0
    before, after = one_step(torch.zeros(6, dtype=torch.float64), beta=0.0)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the same step with something to learn moves the adapters (and nothing else)
    before, after = one_step(torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0], dtype=torch.float64), beta=0.0)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)


def test_ppo_run_resumes_exactly(tmp_path):
    """(GRPO's resume is the command line's test: test_alignment_cli.)"""
    from safetensors.torch import load_file

    settings = dict(
        steps=4, batch_size=2, group_size=3, max_new_tokens=5, lr=1e-2, warmup_steps=1, eval_every=2,
        checkpoint_every=2, rank=2, alpha=4.0, algorithm="ppo", seq_len=64,
    )

    def run(folder, resume=False, on_eval=None, **changes):
        return rl(
            random_llama(CONFIG), PROMPTS, reward, PROMPTS[:2], {"reward": reward}, RLConfig(**{**settings, **changes}),
            tmp_path / folder, resume=resume, stop_tokens=[STOP], on_eval=on_eval,
        )

    once = run("once")
    reported = []
    run("twice", steps=2, on_eval=lambda step, figures: reported.append(step))
    twice = run("twice", resume=True, on_eval=lambda step, figures: reported.append(step))
    assert reported == [0, 2, 4]  # the starting point once, by the new run; the resumed run goes on from step 2
    assert [r["loss"] for r in once] == [r["loss"] for r in twice]
    a = load_file(tmp_path / "once" / "step-0000004" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "twice" / "step-0000004" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert {"val_reward", "val_kl"} <= once[1].keys()
    with pytest.raises(ValueError, match="group_size: 3 -> 4"):
        run("twice", resume=True, steps=6, group_size=4)


def test_rl_data_batches_have_group_advantages():
    model = random_llama(CONFIG)
    add_lora(model, rank=2, alpha=4)
    config = RLConfig(batch_size=2, group_size=4, max_new_tokens=5)
    data = RLData(model, PROMPTS, reward, PROMPTS[:1], {"reward": reward}, config, [STOP])
    tokens, _, old, reference, advantages = data.batch(0, config)
    assert tokens.shape[0] == 8 and advantages.shape == (8,)
    assert torch.allclose(advantages.view(2, 4).sum(dim=1), torch.zeros(2), atol=1e-5)  # each group's baseline
    assert torch.equal(old, reference)  # zero adapters: the policy is still its reference
    assert torch.equal(data.batch(0, config)[0], tokens)  # a pure function of the step and the weights


def test_heldout_kl_is_the_mean_over_the_first_kl_answers():
    model = random_llama(CONFIG).double()
    add_lora(model, rank=2, alpha=4)
    randomize_adapters(model)  # a policy away from its reference: every answer has its own KL
    every = heldout_rewards(model, PROMPTS, {"reward": reward}, 5, [STOP], batch_size=3, kl_answers=4)
    first = heldout_rewards(model, PROMPTS[:2], {"reward": reward}, 5, [STOP], batch_size=3, kl_answers=2)
    whole = heldout_rewards(model, PROMPTS[:2], {"reward": reward}, 5, [STOP], batch_size=1, kl_answers=99)
    assert first["kl"] > 0 and first["kl"] == pytest.approx(whole["kl"], rel=1e-12)  # float64: the same sums
    assert every["reward"] == pytest.approx(sum(reward(None, sample_answers(model, PROMPTS, 1, 5, 0.0, [STOP]))) / 4)
