"""The fused output-head cross-entropy equals the plain one, in value and in gradients.

The comparisons run in float64: the fused loss sums its terms in another order than ``F.cross_entropy``
(by chunks), and in float64 any order of a sum of n terms of size s is within about n * 2.2e-16 * s of
any other. Here n <= 1,000 and the terms are below 100, so 1e-10 cannot be missed by rounding alone,
while any mistake (a dropped row, a wrong gradient) is orders of magnitude larger.
"""

import pytest
import torch
import torch.nn.functional as F

from helpers import random_llama
from llama_from_scratch import LlamaConfig, linear_cross_entropy
from llama_from_scratch.cross_entropy import LinearCrossEntropy


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_loss_and_gradients_equal_plain_cross_entropy(chunk_size):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 21, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (3, 21), generator=generator)

    expected = F.cross_entropy((hidden @ weight.t()).flatten(0, 1), targets.flatten())
    expected_grads = torch.autograd.grad(2.5 * expected, (hidden, weight))
    got = linear_cross_entropy(hidden, weight, targets, chunk_size)
    got_grads = torch.autograd.grad(2.5 * got, (hidden, weight))  # an upstream gradient other than 1

    # float64 (2.2e-16 relative) on losses and gradients of size ~10, summed over at most 63 rows in another
    # order (chunk by chunk): rounding stays below 1e-13, far under the 1e-10 allowed; a wrong term moves 1e-2.
    assert abs(got.item() - expected.item()) <= 1e-10
    for g, e in zip(got_grads, expected_grads):
        assert (g - e).abs().max() <= 1e-10


@pytest.mark.parametrize("chunk_size", [1, 8, 1000])
def test_ignored_targets_carry_no_loss_and_no_gradient(chunk_size):
    """Supervised fine-tuning masks the prompt: targets equal to ignore_index count for nothing."""
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 9, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(30, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 30, (2, 9), generator=generator)
    targets[0, :4] = -100
    targets[1, 7:] = -100
    expected = F.cross_entropy((hidden @ weight.t()).flatten(0, 1), targets.flatten(), ignore_index=-100)
    expected_grads = torch.autograd.grad(expected, (hidden, weight))
    got = linear_cross_entropy(hidden, weight, targets, chunk_size)
    got_grads = torch.autograd.grad(got, (hidden, weight))
    assert abs(got.item() - expected.item()) <= 1e-10  # float64, summed in another order: rounding only
    for g, e in zip(got_grads, expected_grads):
        assert (g - e).abs().max() <= 1e-10
    assert got_grads[0][0, :4].abs().max() == 0 and got_grads[1].abs().max() > 0  # masked rows: exactly zero
    # The masked positions' values do not matter at all: change them, same loss.
    targets[0, :4] = -100
    changed = hidden.detach().clone()
    changed[0, :4] = 1e3
    assert linear_cross_entropy(changed, weight, targets, chunk_size).item() == got.item()


def test_gradcheck_in_float64():
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(9, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = torch.randint(0, 11, (9,), generator=generator)
    assert torch.autograd.gradcheck(lambda h, w: LinearCrossEntropy.apply(h, w, targets, 4, -100), (hidden, weight))


def test_model_loss_is_the_loss_of_its_logits():
    """Tied embeddings: the head's gradient and the embedding's add up on one matrix."""
    config = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=61, max_seq_len=32)
    for tie in (False, True):
        model = random_llama(config.replace(tie_embeddings=tie)).double()
        tokens = torch.randint(0, 61, (2, 17), generator=torch.Generator().manual_seed(2))
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        plain = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        plain_grads = torch.autograd.grad(plain, list(model.parameters()))
        fused = model.loss(inputs, targets)
        fused_grads = torch.autograd.grad(fused, list(model.parameters()))
        # float64 through a small model: the fused and plain sums differ by rounding (~1e-14), far below 1e-10
        assert abs(fused.item() - plain.item()) <= 1e-10
        for g, e in zip(fused_grads, plain_grads):
            assert (g - e).abs().max() <= 1e-10
        with torch.no_grad():  # evaluation: the loss alone
            assert abs(model.loss(inputs, targets).item() - plain.item()) <= 1e-10


def test_mismatched_targets_are_a_clear_error():
    with pytest.raises(ValueError, match=r"targets must have the shape.*\(2, 5\).*\(2, 4\)"):
        linear_cross_entropy(torch.zeros(2, 5, 8), torch.zeros(10, 8), torch.zeros(2, 4, dtype=torch.long))
