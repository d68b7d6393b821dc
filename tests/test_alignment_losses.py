"""Chapter 13's losses and rewards: each equals its formula written out by hand, passes gradcheck, and points the right way."""

import math

import pytest
import torch

from llama_from_scratch.alignment.losses import (
    bradley_terry_loss,
    group_advantages,
    kl_k3,
    llama2_reward,
    ppo_clip_loss,
    ppo_reward,
    sequence_kl,
    whiten,
)

# Every comparison below is float64 against a Python-float loop of a few dozen operations: both round at
# ~1e-16 per operation, so 1e-12 leaves room for the accumulation and nothing for a wrong formula.
TOL = 1e-12


def rand(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def test_bradley_terry_loss_is_its_formula():
    r_c, r_r, margin = rand(6, seed=1), rand(6, seed=2), rand(6, seed=3).abs()
    by_hand = sum(-math.log(sigmoid(c - r - m)) for c, r, m in zip(r_c.tolist(), r_r.tolist(), margin.tolist())) / 6
    assert abs(bradley_terry_loss(r_c, r_r, margin).item() - by_hand) < TOL
    no_margin = sum(-math.log(sigmoid(c - r)) for c, r in zip(r_c.tolist(), r_r.tolist())) / 6
    assert abs(bradley_terry_loss(r_c, r_r).item() - no_margin) < TOL


def test_bradley_terry_loss_signs_and_gradients():
    r_c, r_r = rand(5, seed=4).requires_grad_(), rand(5, seed=5).requires_grad_()
    assert torch.autograd.gradcheck(lambda c, r: bradley_terry_loss(c, r, 0.5), (r_c, r_r))
    bradley_terry_loss(r_c, r_r).backward()
    assert (r_c.grad < 0).all() and (r_r.grad > 0).all()  # descending raises the chosen, lowers the rejected
    # a margin asks for more: the same rewards cost more
    assert bradley_terry_loss(r_c, r_r, 1.0) > bradley_terry_loss(r_c, r_r)
    with pytest.raises(ValueError, match="one shape"):
        bradley_terry_loss(r_c, r_r[:3])


def ppo_by_hand(logprobs, old, advantages, mask, clip):
    total, count = 0.0, 0.0
    for lp_row, old_row, a, m_row in zip(logprobs.tolist(), old.tolist(), advantages.tolist(), mask.tolist()):
        for lp, o, m in zip(lp_row, old_row, m_row):
            rho = math.exp(lp - o)
            total += m * min(rho * a, min(max(rho, 1 - clip), 1 + clip) * a)
            count += m
    return -total / count


def test_ppo_clip_loss_is_its_formula():
    logprobs, old = rand(3, 5, seed=6) * 0.3 - 1.0, rand(3, 5, seed=7) * 0.3 - 1.0
    advantages = torch.tensor([1.5, -0.7, 0.2], dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.float64)
    loss = ppo_clip_loss(logprobs, old, advantages, mask, clip=0.2)
    assert abs(loss.item() - ppo_by_hand(logprobs, old, advantages, mask, 0.2)) < TOL
    # per-token advantages of the same value give the same loss
    assert abs(ppo_clip_loss(logprobs, old, advantages[:, None].expand(3, 5), mask).item() - loss.item()) < TOL
    # the padding's values change nothing (normalised over answer tokens, not over padding)
    garbage = torch.where(mask.bool(), logprobs, torch.full_like(logprobs, 50.0))
    assert abs(ppo_clip_loss(garbage, old, advantages, mask).item() - loss.item()) < TOL


def test_ppo_clip_loss_gradcheck_and_old_logprobs_are_detached():
    logprobs = (rand(2, 4, seed=8) * 0.1).requires_grad_()
    old = (rand(2, 4, seed=9) * 0.1).requires_grad_()
    advantages, mask = rand(2, 4, seed=10), torch.ones(2, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda lp: ppo_clip_loss(lp, old, advantages, mask), (logprobs,))
    ppo_clip_loss(logprobs, old, advantages, mask).backward()
    assert old.grad is None  # the sampling policy's log-probabilities are data


def test_ppo_gradient_is_zero_where_the_clip_is_active():
    old = torch.zeros(1, 4, dtype=torch.float64)
    # ratios 1.5 and 0.5 outside [0.8, 1.2], 1.1 and 0.9 inside
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.9]], dtype=torch.float64)).requires_grad_()
    mask = torch.ones(1, 4, dtype=torch.float64)
    positive = torch.ones(1, 4, dtype=torch.float64)
    ppo_clip_loss(logprobs, old, positive, mask).backward()
    # A > 0: at ρ = 1.5 the clipped term 1.2·A is smaller and constant: no gradient; at ρ = 0.5 the unclipped
    # ρ·A is smaller: the gradient pushes the good token back up (-ρA/4 = -0.125)
    assert logprobs.grad[0, 0] == 0
    assert torch.allclose(logprobs.grad[0, 1:], -torch.tensor([0.5, 1.1, 0.9], dtype=torch.float64) / 4, atol=TOL)
    logprobs.grad = None
    ppo_clip_loss(logprobs, old, -positive, mask).backward()
    # A < 0: now ρ = 0.5 is clipped (0.8·A is smaller), ρ = 1.5 is not
    assert logprobs.grad[0, 1] == 0
    assert logprobs.grad[0, 0] > 0  # descending lowers the bad token's probability


def test_group_advantages_are_the_group_baseline():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    centered = group_advantages(rewards, scale=False)
    for row, out in zip(rewards.tolist(), centered.tolist()):
        mean = sum(row) / len(row)
        assert all(abs(o - (r - mean)) < TOL for r, o in zip(row, out))
    scaled = group_advantages(rewards, scale=True, eps=1e-6)
    for row, out in zip(rewards.tolist(), scaled.tolist()):
        mean = sum(row) / len(row)
        std = math.sqrt(sum((r - mean) ** 2 for r in row) / (len(row) - 1))
        assert all(abs(o - (r - mean) / (std + 1e-6)) < TOL for r, o in zip(row, out))
    assert (scaled[2] == 0).all()  # all equal: nothing to learn
    assert scaled[1, 3] > 0 > scaled[1, 0]  # the one right answer is pushed up, the wrong ones down
    r = rand(2, 3, seed=11).requires_grad_()
    assert torch.autograd.gradcheck(group_advantages, (r,))
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(torch.ones(3, 1))


def test_whiten_is_its_formula():
    values = rand(7, seed=12) * 3 + 2
    mean = sum(values.tolist()) / 7
    variance = sum((v - mean) ** 2 for v in values.tolist()) / 7
    expected = [(v - mean) / math.sqrt(variance + 1e-8) for v in values.tolist()]
    assert max(abs(a - b) for a, b in zip(whiten(values).tolist(), expected)) < TOL
    mask = torch.tensor([1, 1, 1, 0, 1, 1, 0])
    kept = [v for v, m in zip(values.tolist(), mask.tolist()) if m]
    mean = sum(kept) / len(kept)
    std = math.sqrt(sum((v - mean) ** 2 for v in kept) / len(kept) + 1e-8)
    assert abs(whiten(values, mask)[0].item() - (values[0].item() - mean) / std) < TOL
    assert torch.autograd.gradcheck(whiten, (values.clone().requires_grad_(),))


def test_llama2_reward_is_the_piecewise_rule():
    helpful = torch.tensor([0.9, 0.9, 0.9, 0.2], dtype=torch.float64)
    safety = torch.tensor([0.5, 0.1, 0.5, 0.9], dtype=torch.float64)
    is_safety = torch.tensor([False, False, True, False])
    # safe answer to a normal prompt: helpfulness; unsafe answer (0.1 < 0.15): safety; safety prompt: safety
    assert llama2_reward(helpful, safety, is_safety).tolist() == [0.9, 0.1, 0.5, 0.2]
    assert llama2_reward(helpful, safety, is_safety, threshold=0.6).tolist() == [0.5, 0.1, 0.5, 0.2]


def test_ppo_reward_is_the_whitened_logit_minus_the_kl_penalty():
    combined = torch.tensor([0.9, 0.3, 0.6, 0.05], dtype=torch.float64)
    logprobs, ref = rand(4, 3, seed=13), rand(4, 3, seed=14)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 1]], dtype=torch.float64)
    kl = sequence_kl(logprobs, ref, mask)
    for k, lp_row, ref_row, m_row in zip(kl.tolist(), logprobs.tolist(), ref.tolist(), mask.tolist()):
        assert abs(k - sum(m * (a - b) for a, b, m in zip(lp_row, ref_row, m_row))) < TOL
    logits = [math.log(p / (1 - p)) for p in combined.tolist()]
    mean = sum(logits) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in logits) / 4 + 1e-8)
    expected = [(x - mean) / std - 0.01 * k for x, k in zip(logits, kl.tolist())]
    # the logit's eps clamps nothing here (all scores are in [0.05, 0.9])
    assert max(abs(a - b) for a, b in zip(ppo_reward(combined, kl, beta=0.01).tolist(), expected)) < TOL
    # a policy that drifted further from the reference earns less for the same score
    assert ppo_reward(combined, kl + 1.0, 0.01)[0] < ppo_reward(combined, kl, 0.01)[0]


def test_kl_k3_is_its_formula_and_never_negative():
    logprobs, ref = rand(3, 4, seed=15), rand(3, 4, seed=16)
    d = (ref - logprobs).tolist()
    expected = [[math.exp(x) - x - 1 for x in row] for row in d]
    assert max(abs(a - b) for ra, rb in zip(kl_k3(logprobs, ref).tolist(), expected) for a, b in zip(ra, rb)) < TOL
    assert (kl_k3(logprobs, ref) >= 0).all() and (kl_k3(logprobs, logprobs) == 0).all()
    assert torch.autograd.gradcheck(lambda lp: kl_k3(lp, ref), (logprobs.clone().requires_grad_(),))
