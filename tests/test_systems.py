"""Chapter 14's systems pieces: loss scaling, mixed precision, activation checkpointing."""

import math

import pytest
import torch

from llama_from_scratch import Llama, LlamaConfig
from llama_from_scratch.systems.loss_scaling import DynamicLossScaler
from llama_from_scratch.systems.precision import autocast
from llama_from_scratch.training.train import TextWindows, TrainConfig, train
from tests.test_train import quick_config, synthetic_data

MODEL = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, hidden_dim=64, max_seq_len=32)

# Gradient multipliers for one parameter vector, step by step: ordinary steps, an overflow (inf), a NaN, a
# gradient that overflows only once scaled (1e34 * 2^10 > float32's 3.4e38), and runs long enough to grow.
GRADIENT_SEQUENCE = [1.0, 2.0, math.inf, 0.5, 0.25, 1.0, math.nan, 1.0, 1e34, 1.0, 1.0, 1.0, 3.0, 1e-3, 1.0]


def scaled_steps(use_grad_scaler: bool) -> tuple[list[float], list[torch.Tensor]]:
    """Run GRADIENT_SEQUENCE through AdamW with GradScaler or with the package's scaler; scales and weights."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(5))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    settings = dict(init_scale=2.0**10, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)
    scaler = torch.amp.GradScaler("cpu", **settings) if use_grad_scaler else DynamicLossScaler(**settings)
    scales, weights = [], []
    for g in GRADIENT_SEQUENCE:
        optimizer.zero_grad()
        loss = (weight * torch.tensor([g, 1.0, -g, 0.5, 2.0])).sum()
        if use_grad_scaler:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scales.append(scaler.get_scale())
        else:
            scaler.scale_loss(loss).backward()
            found_inf = scaler.unscale_([weight])
            if not found_inf:
                optimizer.step()
            scaler.update(found_inf)
            scales.append(scaler.scale)
        weights.append(weight.detach().clone())
    return scales, weights


def test_the_loss_scaler_equals_torch_grad_scaler_on_one_sequence_of_gradients():
    expected_scales, expected_weights = scaled_steps(use_grad_scaler=True)
    scales, weights = scaled_steps(use_grad_scaler=False)
    assert scales == expected_scales
    for step, (w, expected) in enumerate(zip(weights, expected_weights)):
        assert torch.equal(w, expected), f"step {step}: {w} != {expected}"
    assert min(scales) < 2.0**10 < max(scales)  # the sequence both lowered and raised the scale


def test_the_loss_scaler_skips_an_overflowing_step_halves_then_grows_after_the_interval():
    weight = torch.nn.Parameter(torch.ones(2))
    scaler = DynamicLossScaler(init_scale=8.0, growth_interval=2)
    weight.grad = torch.tensor([8.0, math.inf])  # gradients of the scaled loss
    assert scaler.unscale_([weight])
    scaler.update(True)
    assert (scaler.scale, scaler.good_steps) == (4.0, 0)
    for expected_scale in (4.0, 8.0):
        weight.grad = torch.tensor([4.0, 2.0])
        assert not scaler.unscale_([weight])
        assert torch.equal(weight.grad, torch.tensor([1.0, 0.5]))  # divided by the scale of 4
        scaler.update(False)
        assert scaler.scale == expected_scale
    with pytest.raises(ValueError, match="backoff_factor"):
        DynamicLossScaler(backoff_factor=2.0)
    with pytest.raises(ValueError, match="good_steps"):
        scaler.load_state_dict({"scale": 1.0, "good_steps": 5})


def test_precision_errors_name_the_choice_and_the_device():
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16, got 'fp8'"):
        autocast(torch.device("cpu"), "fp8")
    with pytest.raises(ValueError, match="'fp16' is not supported on meta by PyTorch"):
        autocast(torch.device("meta"), "fp16")
    with pytest.raises(ValueError, match="TrainConfig.precision"):
        TrainConfig(precision="half")


def test_fp16_training_on_the_cpu_scales_the_loss_and_resumes_with_its_scale(tmp_path):
    from llama_from_scratch.training.checkpoint import RunFolder

    data = TextWindows(synthetic_data())
    config = quick_config(steps=4, precision="fp16", checkpoint_every=2, eval_every=4)
    torch.manual_seed(0)
    whole = train(Llama(MODEL), data, config)
    assert all(math.isfinite(r["loss"]) for r in whole) and all(r["loss_scale"] > 0 for r in whole)
    torch.manual_seed(0)
    train(Llama(MODEL), data, config.replace(steps=2), RunFolder(tmp_path))
    torch.manual_seed(1)  # the resumed run's weights come from the checkpoint, not from this seed
    resumed = train(Llama(MODEL), data, config, RunFolder(tmp_path, resume=True))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]
    assert [r["loss_scale"] for r in resumed] == [r["loss_scale"] for r in whole]


def test_activation_checkpointing_gives_bit_identical_gradients_in_float64():
    torch.manual_seed(0)
    model = Llama(MODEL).to(torch.float64)
    inputs, targets = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
    calls = []
    model.layers[0].attention.register_forward_hook(lambda *_: calls.append(1))  # inside the block
    grads = []
    for checkpointing in (False, True):
        model.activation_checkpointing = checkpointing
        model.zero_grad()
        calls.clear()
        model.loss(inputs, targets).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        assert len(calls) == 1 + checkpointing  # checkpointed: attention ran again in the backward pass
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def saved_activation_bytes(model: Llama, inputs: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for the backward pass of ``model.loss`` (weights excluded), each
    storage once: measured, as PyTorch keeps them."""
    saved = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.loss(inputs, inputs)
    return sum(n for pointer, n in saved.items() if pointer not in weights)


@pytest.mark.parametrize("config", [MODEL, MODEL.replace(dim=64, n_heads=8, n_kv_heads=1, hidden_dim=160, n_layers=3)])
def test_activation_bytes_equal_what_autograd_saves(config):
    from llama_from_scratch.systems.memory import activation_bytes, block_activation_elements

    torch.manual_seed(0)
    model = Llama(config)
    for batch_size, seq_len in ((1, 16), (2, 32)):
        inputs = torch.randint(0, config.vocab_size, (batch_size, seq_len))
        assert saved_activation_bytes(model, inputs) == activation_bytes(config, batch_size, seq_len)
        # checkpointed: the forward pass keeps the blocks' inputs; one block is recomputed at a time later
        model.activation_checkpointing = True
        one_block = 4 * block_activation_elements(config, batch_size * seq_len)
        assert saved_activation_bytes(model, inputs) == activation_bytes(config, batch_size, seq_len, True) - one_block
        model.activation_checkpointing = False


def test_model_state_bytes_equal_the_tensors_of_an_adamw_step_and_the_zero_paper():
    from llama_from_scratch.systems.memory import MIXED_PRECISION_ADAMW, model_state_bytes, training_memory
    from llama_from_scratch.training.train import configure_optimizer

    model = Llama(MODEL)
    optimizer = configure_optimizer(model, TrainConfig())
    model.loss(torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8))).backward()
    optimizer.step()
    # AdamW's per-parameter "step" counters are one 0-d float32 each, not per-parameter state: left out
    moments = sum(t.nbytes for state in optimizer.state.values() for name, t in state.items() if name != "step")
    measured = (
        sum(p.nbytes for p in model.parameters()), sum(p.grad.nbytes for p in model.parameters()), moments
    )
    assert model_state_bytes(model.num_parameters()) == measured
    assert training_memory(MODEL, 2, 8).optimizer == moments
    # The ZeRO paper's figure 1: 7.5B parameters, 64 devices, K = 12: 120, 31.4, 16.6 and 1.9 GB per device
    per_device = [sum(model_state_bytes(7_500_000_000, s, 64, MIXED_PRECISION_ADAMW)) / 1e9 for s in ("ddp", "zero1", "zero2", "zero3")]
    assert [round(x, 1) for x in per_device] == [120.0, 31.4, 16.6, 1.9]
    with pytest.raises(ValueError, match="strategy must be one of ddp, zero1, zero2, zero3, got 'fsdp'"):
        model_state_bytes(10, "fsdp")
