"""Chapter 13's RL: the reference is the base with its adapters off, a step with nothing to learn changes nothing,
and an RL run resumes exactly (its samples are a pure function of the step and the weights)."""

import copy

import pytest
import torch
from helpers import random_llama

from llama_from_scratch import LlamaConfig
from llama_from_scratch.alignment.policy import (
    answer_example,
    answer_logprobs,
    grouped_batch,
    policy_loss,
    reference_logprobs,
    sample_answers,
    sampling_logprobs,
)
from llama_from_scratch.alignment.rl import RLConfig, RLData, heldout_rewards, rl
from llama_from_scratch.finetuning.dpo import token_logprobs
from llama_from_scratch.finetuning.sft import pad_batch
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
    return grouped_batch(PROMPTS[:2], answers)


def full_rows(group_size, batch):
    """The same answers as chapter 10's rows, prompt + answer each (right-padded), scored by token_logprobs."""
    _, _, answers, labels = batch
    rows = [answer_example(p, a[l != -100].tolist()) for p, a, l in zip([p for p in PROMPTS[:2] for _ in range(group_size)], answers, labels)]
    return pad_batch(rows)


def test_sampled_answers_are_grouped_and_reproducible():
    model = random_llama(CONFIG)
    answers = sample_answers(model, PROMPTS[:2], 3, 6, stop_tokens=[STOP], seed=4)
    assert len(answers) == 6 and answers == sample_answers(model, PROMPTS[:2], 3, 6, stop_tokens=[STOP], seed=4)
    assert all(len(a) <= 6 and (STOP not in a[:-1]) for a in answers)
    assert all(a[-1] == STOP for a in answers if len(a) < 6)  # a stopped answer keeps its stop: it is an action too
    prompts, prompt_mask, tokens, labels = grouped_batch(PROMPTS[:2], answers)
    assert prompts.shape == prompt_mask.shape == (2, 3) and prompt_mask.sum(dim=1).tolist() == [3, 2]  # each once
    for row, answer in enumerate(answers):
        assert labels[row][labels[row] != -100].tolist() == answer == tokens[row, : len(answer)].tolist()
    with pytest.raises(ValueError, match="G answers to each prompt: got 5 answers to 2 prompts"):
        grouped_batch(PROMPTS[:2], answers[:5])


def test_each_prompt_runs_once_for_its_group_with_the_same_logprobs_and_gradients():
    """answer_logprobs (each prompt once, its keys and values copied to its answers) against every prompt +
    answer as its own row, in float64. The first prompt is the longest (no padding): the same positions, so
    the same numbers up to float64 rounding (a few hundred roundings of 1.1e-16 relative on values of order
    10: about 1e-13; 1e-12). The second is left-padded by one: its tokens sit one position later, and RoPE's
    angle tables are float32 (rope.py), whose cos and sin round differently there, by up to 6e-8 relative;
    through two layers that moves log-probabilities of order 5 by a few times 6e-8 times their size: 1e-6."""
    model = random_llama(CONFIG).double()
    add_lora(model, rank=2, alpha=4)
    randomize_adapters(model)
    batch = rollout(model, group_size=3, seed=2)
    tokens, labels = full_rows(3, batch)
    grouped = answer_logprobs(model, batch[0], batch[1], batch[2], batch[3])  # (6, longest answer)
    whole = token_logprobs(model, tokens, labels)  # (6, prompt + answer)
    for rows, tolerance in ((slice(0, 3), 1e-12), (slice(3, 6), 1e-6)):  # the unpadded prompt's group, the padded one's
        a, b = grouped[rows][batch[3][rows] != -100], whole[rows][labels[rows] != -100]
        assert torch.allclose(a, b, rtol=0, atol=tolerance)
    assert torch.equal(grouped[batch[3] == -100], torch.zeros_like(grouped[batch[3] == -100]))
    weights = torch.linspace(-1, 1, int((labels != -100).sum()), dtype=torch.float64)  # any loss of the log-probabilities
    gradients = []
    for logprobs in (lambda: answer_logprobs(model, *batch)[batch[3] != -100], lambda: token_logprobs(model, tokens, labels)[labels != -100]):
        model.zero_grad()
        (weights * logprobs()).sum().backward()
        gradients.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    # each log-probability's gradient moves by the same float32 RoPE rounding as its value (above: up to 1e-6 for
    # values of order 5, so about 2e-7 relative); summed with weights up to 1 over 36 tokens whose gradients in
    # this seeded tiny model are at most 2.1 per weight (float64, any CPU; 5 leaves room): 36 * 5 * 2e-7 = 4e-5
    assert all(torch.allclose(a, b, rtol=0, atol=4e-5) for a, b in zip(*gradients))


def test_reference_logprobs_are_the_untouched_base_model():
    model = random_llama(CONFIG).double()
    batch = rollout(model)
    base = answer_logprobs(copy.deepcopy(model), *batch)
    with pytest.raises(ValueError, match="add_lora"):
        reference_logprobs(model, *batch)
    add_lora(model, rank=2, alpha=4)
    randomize_adapters(model)  # a policy that has moved away from its base
    policy, reference = sampling_logprobs(model, *batch), reference_logprobs(model, *batch)
    assert not torch.equal(policy, base.float())
    # adapters off, every LoRALinear computes base(x): the same operations on the same numbers, the same bits
    assert torch.equal(reference, base.float())
    assert all(layer.enabled for layer in lora_layers(model).values())


def one_step(advantages, beta):
    model = random_llama(CONFIG).double()
    add_lora(model, rank=2, alpha=4)
    randomize_adapters(model)
    prompts, prompt_mask, tokens, labels = rollout(model)
    reference = reference_logprobs(model, prompts, prompt_mask, tokens, labels)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = configure_optimizer(model, RLConfig(weight_decay=0.0))
    batch = (tokens, labels, prompts, prompt_mask, reference.double(), advantages)
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
    tokens, labels, prompts, prompt_mask, reference, advantages = data.batch(0, config)
    assert tokens.shape[0] == 8 and prompts.shape[0] == 2 and advantages.shape == (8,)
    assert torch.allclose(advantages.view(2, 4).sum(dim=1), torch.zeros(2), atol=1e-5)  # each group's baseline
    # zero adapters: the policy is still its reference
    assert torch.equal(sampling_logprobs(model, prompts, prompt_mask, tokens, labels), reference)
    assert torch.equal(data.batch(0, config)[0], tokens)  # a pure function of the step and the weights


def test_heldout_kl_is_the_mean_over_the_first_kl_answers():
    model = random_llama(CONFIG).double()
    add_lora(model, rank=2, alpha=4)
    randomize_adapters(model)  # a policy away from its reference: every answer has its own KL
    every = heldout_rewards(model, PROMPTS, {"reward": reward}, 5, [STOP], batch_size=3, kl_answers=4)
    first = heldout_rewards(model, PROMPTS[:2], {"reward": reward}, 5, [STOP], batch_size=3, kl_answers=2)
    whole = heldout_rewards(model, PROMPTS[:2], {"reward": reward}, 5, [STOP], batch_size=1, kl_answers=99)
    # one prompt at a time against two in a batch, the shorter left-padded: the log-probabilities come back in
    # float32 (each of about 5 rounds by up to 3e-7) and the padded prompt's float32 RoPE tables move them by
    # about 1e-7 more (test above); a KL sums 5 tokens' log-ratios (two each): 5 * 2 * 4e-7 = 4e-6 at most
    assert first["kl"] > 0 and first["kl"] == pytest.approx(whole["kl"], rel=0, abs=1e-5)
    assert every["reward"] == pytest.approx(sum(reward(None, sample_answers(model, PROMPTS, 1, 5, 0.0, [STOP]))) / 4)
