"""The fused output-head cross-entropy equals the plain one, in value and in gradients."""

import pytest
import torch
import torch.nn.functional as F

from conftest import random_llama
from llama_from_scratch import LlamaConfig, linear_cross_entropy
from llama_from_scratch.cross_entropy import LinearCrossEntropy


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_loss_and_gradients_equal_plain_cross_entropy(chunk_size):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 21, 16, generator=generator, requires_grad=True)
    weight = torch.randn(50, 16, generator=generator, requires_grad=True)
    targets = torch.randint(0, 50, (3, 21), generator=generator)

    expected = F.cross_entropy((hidden @ weight.t()).flatten(0, 1), targets.flatten())
    expected_grads = torch.autograd.grad(2.5 * expected, (hidden, weight))
    got = linear_cross_entropy(hidden, weight, targets, chunk_size)
    got_grads = torch.autograd.grad(2.5 * got, (hidden, weight))  # an upstream gradient other than 1

    assert abs(got.item() - expected.item()) <= 1e-6
    for g, e in zip(got_grads, expected_grads):
        assert (g - e).abs().max() <= 1e-6


def test_gradcheck_in_float64():
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(9, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = torch.randint(0, 11, (9,), generator=generator)
    assert torch.autograd.gradcheck(lambda h, w: LinearCrossEntropy.apply(h, w, targets, 4), (hidden, weight))


def test_model_with_targets_returns_the_loss_of_its_logits():
    """Tied embeddings: the head's gradient and the embedding's add up on one matrix."""
    config = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=61, max_seq_len=32)
    for tie in (False, True):
        model = random_llama(config.replace(tie_embeddings=tie))
        tokens = torch.randint(0, 61, (2, 17), generator=torch.Generator().manual_seed(2))
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        plain = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        plain_grads = torch.autograd.grad(plain, list(model.parameters()))
        fused = model(inputs, targets=targets)
        fused_grads = torch.autograd.grad(fused, list(model.parameters()))
        assert abs(fused.item() - plain.item()) <= 1e-6
        for g, e in zip(fused_grads, plain_grads):
            assert (g - e).abs().max() <= 1e-6
        with torch.no_grad():  # evaluation: the loss alone
            assert abs(model(inputs, targets=targets).item() - plain.item()) <= 1e-6


def test_mismatched_targets_are_a_clear_error():
    with pytest.raises(ValueError, match=r"targets must have the shape.*\(2, 5\).*\(2, 4\)"):
        linear_cross_entropy(torch.zeros(2, 5, 8), torch.zeros(10, 8), torch.zeros(2, 4, dtype=torch.long))
