"""Chapter 14's systems pieces: loss scaling, mixed precision, activation checkpointing, memory and FLOPs
accounting, FlashAttention's backward pass, the scaling-law fit."""

import math

import numpy as np
import pytest
import torch
from test_train import quick_config, synthetic_data

from llama_from_scratch import Llama, LlamaConfig
from llama_from_scratch.systems.loss_scaling import DynamicLossScaler
from llama_from_scratch.systems.precision import autocast
from llama_from_scratch.training.train import TextWindows, TrainConfig, evaluate, train

MODEL = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, hidden_dim=64, max_seq_len=32)

# Gradient multipliers for one parameter vector, step by step: ordinary steps, an overflow (inf), a NaN, a
# gradient that overflows only once scaled (1e34 * 2^10 > float32's 3.4e38), and runs long enough to grow.
GRADIENT_SEQUENCE = [1.0, 2.0, math.inf, 0.5, 0.25, 1.0, math.nan, 1.0, 1e34, 1.0, 1.0, 1.0, 3.0, 1e-3, 1.0]


def scaled_steps(use_grad_scaler: bool) -> tuple[list[float], list[torch.Tensor]]:
    """Run GRADIENT_SEQUENCE through AdamW with GradScaler or with the package's scaler; scales and weights."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(5))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    settings = {"init_scale": 2.0**10, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 3}
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
    measured = (sum(p.nbytes for p in model.parameters()), sum(p.grad.nbytes for p in model.parameters()), moments)
    assert model_state_bytes(model.num_parameters()) == measured
    assert training_memory(MODEL, 2, 8).optimizer == moments
    # The ZeRO paper's figure 1: 7.5B parameters, 64 devices, K = 12: 120, 31.4, 16.6 and 1.9 GB per device
    per_device = [
        sum(model_state_bytes(7_500_000_000, s, 64, MIXED_PRECISION_ADAMW)) / 1e9
        for s in ("ddp", "zero1", "zero2", "zero3")
    ]
    assert [round(x, 1) for x in per_device] == [120.0, 31.4, 16.6, 1.9]
    with pytest.raises(ValueError, match="strategy must be one of ddp, zero1, zero2, zero3, got 'fsdp'"):
        model_state_bytes(10, "fsdp")


FLOAT32_U = 2.0**-24  # float32's unit roundoff: each operation rounds with a relative error of at most this


def attention_gradient_bounds(q, k, v, grad_out):
    """Bounds on the float32 rounding error of ``(dq, dk, dv)`` at each entry, from float64 magnitudes.

    A sum of n terms computed in floating point is off by at most about n * u * (sum of |terms|) (Higham's
    gamma_n). Every gradient is such a sum over keys (dq) or query rows (dk, dv, over the n_rep heads of a
    group too) of terms that are themselves sums: the scores and dO . v over head_dim. So the error is
    bounded by (kv_seq + seq * n_rep + 2 * head_dim) * u times the magnitude of the final sum, whose terms
    carry the relative error of the recomputed weights P = exp(S - lse): the rounding of the score and of
    lse (head_dim terms each), which exp turns into a relative error of P. dS = P (dP - D) is bounded by
    P (|dP| + |D|) in size, before the cancellation that makes it small.
    """
    from llama_from_scratch.attention import causal_mask, repeat_kv

    n_heads, seq, head_dim = q.shape[1:]
    n_kv_heads, kv_seq = k.shape[1], k.shape[2]
    n_rep = n_heads // n_kv_heads
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)
    p = torch.softmax(scores.masked_fill(~causal_mask(seq, kv_seq), -math.inf), dim=-1)
    out = p @ v
    size_s = q.abs() @ k.abs().transpose(-2, -1) / math.sqrt(head_dim)
    relative_p = (head_dim + 4) * FLOAT32_U * (size_s + size_s.amax(dim=-1, keepdim=True) + 1)
    size_ds = (
        p
        * (1 + relative_p)
        * (grad_out.abs() @ v.abs().transpose(-2, -1) + (grad_out * out).abs().sum(-1, keepdim=True))
    )
    gamma = (kv_seq + seq * n_rep + 2 * head_dim) * FLOAT32_U

    def per_kv_head(x):
        return x.unflatten(1, (n_kv_heads, n_rep)).sum(dim=2)

    dq = gamma * size_ds @ k.abs() / math.sqrt(head_dim)
    dk = per_kv_head(gamma * size_ds.transpose(-2, -1) @ q.abs() / math.sqrt(head_dim))
    dv = per_kv_head(gamma * (p * (1 + relative_p)).transpose(-2, -1) @ grad_out.abs())
    return dq, dk, dv


def attention_gradients(attend, q, k, v, grad_out, dtype):
    leaves = [t.to(dtype).detach().requires_grad_() for t in (q, k, v)]
    attend(*leaves).backward(grad_out.to(dtype))
    return [t.grad.double() for t in leaves]


@pytest.mark.parametrize(
    "n_heads, n_kv_heads, seq, kv_seq, block_size",
    [(4, 4, 37, 37, 8), (4, 2, 50, 50, 16), (6, 1, 33, 33, 8), (4, 2, 20, 29, 8)],  # MHA, GQA, MQA, cached past
)
def test_tiled_attention_gradients_equal_sdpa_within_float32_rounding(n_heads, n_kv_heads, seq, kv_seq, block_size):
    import torch.nn.functional as F

    from llama_from_scratch.attention import causal_mask
    from llama_from_scratch.long_context.flash_backward import tiled_attention

    torch.manual_seed(0)
    q = 2 * torch.randn(2, n_heads, seq, 16, dtype=torch.float64)
    k = 2 * torch.randn(2, n_kv_heads, kv_seq, 16, dtype=torch.float64)
    v, grad_out = torch.randn(2, n_kv_heads, kv_seq, 16, dtype=torch.float64), torch.randn_like(q)
    mask = causal_mask(seq, kv_seq)

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

    def tiled(q, k, v):
        return tiled_attention(q, k, v, True, block_size)

    exact = attention_gradients(sdpa, q, k, v, grad_out, torch.float64)
    bounds = attention_gradient_bounds(q, k, v, grad_out)
    for name, attend in (("tiled", tiled), ("sdpa", sdpa)):  # SDPA's own float32 rounding obeys the bound too
        for which, got, expected, bound in zip(
            "qkv", attention_gradients(attend, q, k, v, grad_out, torch.float32), exact, bounds
        ):
            assert ((got - expected).abs() <= bound).all(), f"{name} d{which}: {((got - expected).abs() / bound).max()}"
    # in float64 the tiles and the fused kernel differ by float64 rounding only (u = 1.1e-16, sums of < 100 terms)
    for got, expected in zip(attention_gradients(tiled, q, k, v, grad_out, torch.float64), exact):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_tiled_attention_passes_gradcheck_and_saves_only_the_output_and_the_log_sum_exp():
    from llama_from_scratch.long_context.flash_backward import tiled_attention

    torch.manual_seed(0)
    q = torch.randn(1, 4, 5, 4, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(1, 2, 7, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    for causal in (True, False):
        assert torch.autograd.gradcheck(lambda q, k, v, causal=causal: tiled_attention(q, k, v, causal, 3), (q, k, v))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = tiled_attention(q, k, v, True, 3)
    extra = [t for t in saved if t is not q and t is not k and t is not v]
    assert [tuple(t.shape) for t in extra] == [tuple(out.shape), (1, 4, 5)]  # the output and one lse per row


def test_a_model_trains_with_tiled_attention_as_with_sdpa():
    from llama_from_scratch.long_context.flash_backward import set_attention

    torch.manual_seed(0)
    model = Llama(MODEL).to(torch.float64)
    inputs, targets = torch.randint(0, 64, (2, 20)), torch.randint(0, 64, (2, 20))
    grads = []
    for attention in ("sdpa", "tiled"):
        set_attention(model, attention, block_size=8)  # 20 tokens: blocks of 8, 8 and 4
        model.zero_grad()
        model.loss(inputs, targets).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for tiled, fused in zip(*grads):  # float64 rounding of sums of a few hundred terms
        torch.testing.assert_close(tiled, fused, rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="attention must be one of sdpa, tiled, got 'flash'"):
        set_attention(model, "flash")


@pytest.mark.parametrize("config", [MODEL, MODEL.replace(n_kv_heads=4, tie_embeddings=True)])
def test_training_flops_per_token_equal_pytorchs_count_of_a_training_step(config):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from llama_from_scratch.systems.flops import training_flops_per_token

    model = Llama(config)
    inputs = torch.randint(0, config.vocab_size, (2, 16))
    # the math kernel computes attention with matrix products that FlopCounterMode counts (the fused CPU one
    # is not counted), the whole (seq, seq) square as PaLM's formula does
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model.loss(inputs, inputs).backward()
    assert counter.get_total_flops() == inputs.numel() * training_flops_per_token(config, 16)


def test_the_training_loop_reports_model_flops_utilization():
    from llama_from_scratch.systems.flops import training_flops_per_token

    config = quick_config(steps=2)
    history = train(Llama(MODEL), TextWindows(synthetic_data()), config, peak_flops=1e9)
    per_token = training_flops_per_token(MODEL, config.seq_len)
    assert [r["mfu"] for r in history] == [r["tokens_per_s"] * per_token / 1e9 for r in history]
    with pytest.raises(ValueError, match="peak_flops must be a positive, finite FLOP/s figure, got 0"):
        train(Llama(MODEL), TextWindows(synthetic_data()), config, peak_flops=0)


CHINCHILLA = {
    "E": 1.69,
    "A": 406.4,
    "B": 410.7,
    "alpha": 0.34,
    "beta": 0.28,
}  # Hoffmann et al. (2022), approach 3's fit
FIT_STARTS = [(0.0, 5.0, 5.0, 0.5, 0.5), (1.0, 0.0, 10.0, 0.25, 1.0), (0.0, 10.0, 0.0, 1.0, 0.25)]  # a few: quick


def chinchilla_runs():
    """36 runs: 6 model sizes (1M to 1B) x 6 token counts (10M to 10B), their loss by Chinchilla's law."""
    from llama_from_scratch.systems.scaling_laws import ScalingLaw

    n, d = (x.ravel() for x in np.meshgrid(np.geomspace(1e6, 1e9, 6), np.geomspace(1e7, 1e10, 6)))
    return n, d, ScalingLaw(**CHINCHILLA).loss(n, d)


def test_the_scaling_law_fit_recovers_known_parameters_from_noiseless_and_noisy_runs():
    from llama_from_scratch.systems.scaling_laws import _log_prediction, fit_scaling_law

    n, d, losses = chinchilla_runs()
    exact = fit_scaling_law(n, d, losses, FIT_STARTS)
    for name, value in CHINCHILLA.items():  # L-BFGS's tolerances, far below this
        assert getattr(exact, name) == pytest.approx(value, rel=1e-6), name
    sigma = 0.005  # 0.5% multiplicative noise: a log-space residual of standard deviation 0.005
    noisy = losses * np.exp(np.random.default_rng(0).normal(0.0, sigma, losses.shape))
    fit = fit_scaling_law(n, d, noisy, FIT_STARTS[:1])  # the start that found the noiseless optimum
    # The expected error of the fitted (e, a, b, alpha, beta): least squares' covariance sigma^2 (J^T J)^-1,
    # with J the derivatives of log L at the true values; times pi / 2 because with delta = 1e-3 << sigma the
    # Huber loss acts as an absolute loss, whose estimates have pi / 2 times least squares' variance for
    # Gaussian noise. Each error must lie within 4 standard errors.
    truth = torch.tensor(
        [math.log(CHINCHILLA["E"]), math.log(CHINCHILLA["A"]), math.log(CHINCHILLA["B"]), 0.34, 0.28],
        dtype=torch.float64,
    )
    log_n, log_d = torch.tensor(n).log(), torch.tensor(d).log()
    jacobian = torch.autograd.functional.jacobian(lambda theta: _log_prediction(theta, log_n, log_d), truth)
    standard_error = (sigma**2 * math.pi / 2 * torch.linalg.inv(jacobian.T @ jacobian)).diagonal().sqrt()
    got = torch.tensor([math.log(fit.E), math.log(fit.A), math.log(fit.B), fit.alpha, fit.beta], dtype=torch.float64)
    assert ((got - truth).abs() <= 4 * standard_error).all(), ((got - truth) / standard_error).tolist()


def test_the_compute_optimal_frontier_is_the_minimum_of_each_iso_flop_curve():
    from llama_from_scratch.systems.scaling_laws import ScalingLaw

    law = ScalingLaw(**CHINCHILLA)
    for flops in (1e18, 1e21, 5.76e23):  # the last: Chinchilla's and Gopher's budget
        n_opt, d_opt = law.compute_optimal(flops)
        assert 6 * n_opt * d_opt == pytest.approx(flops)
        sizes = n_opt * np.geomspace(0.5, 2, 2001)  # a fine grid around it: the least loss sits in the middle
        assert abs(np.argmin(law.iso_flop(flops, sizes)) - 1000) <= 1


def _fsdp_worker(rank, world_size, port, out):
    import json
    import os

    import torch.distributed as dist
    from test_train import new_model

    from llama_from_scratch.training.checkpoint import RunFolder
    from llama_from_scratch.training.distributed import leave_distributed, shard_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    model = new_model(dtype=torch.float64)
    shard_model(model)
    data = TextWindows(synthetic_data(), synthetic_data(seed=1))
    # 2 steps (the warm-up: the same learning rates as in an 8-step run), then resumed from their checkpoint
    train(model, data, quick_config(batch_size=2, steps=2), RunFolder(out.parent / "run"))
    model = new_model(seed=1, dtype=torch.float64)  # its weights come from the sharded checkpoint
    shard_model(model)
    history = train(model, data, quick_config(batch_size=2), RunFolder(out.parent / "run", resume=True))
    # the steps run after resuming (the history read back holds rank 0's own losses for the first two)
    losses = torch.tensor([r["loss"] for r in history[2:]], dtype=torch.float64)
    dist.all_reduce(losses)  # the global mean loss: each rank's mean over its half, averaged
    model.reshard()  # the root's weights stay gathered after a forward pass without backward (the evaluation)
    held = sum(p.to_local().nbytes for p in model.parameters())  # this rank's shards of the weights
    if rank == 0:
        out.write_text(
            json.dumps({"loss": (losses / world_size).tolist(), "val": history[-1]["val_loss"], "held": held})
        )
    del model  # freed before the process group goes (leave_distributed says why)
    leave_distributed()


@pytest.mark.slow
def test_two_process_fsdp_follows_the_single_process_trajectory_resumes_and_converts(tmp_path):
    import json

    import torch.multiprocessing as mp
    from helpers import free_port
    from test_train import new_model

    mp.spawn(_fsdp_worker, args=(2, free_port(), tmp_path / "fsdp.json"), nprocs=2)
    torch.set_num_threads(1)
    model = new_model(dtype=torch.float64)
    single = train(model, TextWindows(synthetic_data(), synthetic_data(seed=1)), quick_config(batch_size=4))
    fsdp = json.loads((tmp_path / "fsdp.json").read_text())
    # float64 as in the DDP test: the reduce-scatter sums the two halves' gradients in another order, and
    # Adam amplifies such rounding over 8 steps, far below 1e-9 at float64's 2.2e-16 relative precision
    assert np.abs(np.array(fsdp["loss"]) - np.array([r["loss"] for r in single[2:]])).max() <= 1e-9
    # every rank evaluated the whole model on the same windows: its per-process batch_size of 2 of them
    expected = evaluate(model, synthetic_data(seed=1), quick_config(batch_size=2))["loss"]
    assert fsdp["val"] == pytest.approx(expected, abs=1e-9)
    # each rank holds half of every weight, the rows of an odd-sized tensor rounded up: at most 55%
    assert fsdp["held"] <= 0.55 * sum(p.nbytes for p in model.parameters())
    # the sharded checkpoint (resumed above: the trajectory is the uninterrupted one) as one file
    from llama_from_scratch import load_checkpoint
    from llama_from_scratch.checkpoints.load import latest_checkpoint
    from llama_from_scratch.training.sharded_checkpoint import convert_to_single_file

    whole = load_checkpoint(convert_to_single_file(latest_checkpoint(tmp_path / "run"), tmp_path / "whole"))
    for name, tensor in model.state_dict().items():  # saved in float32, as every training checkpoint
        assert torch.equal(whole.state_dict()[name], tensor.float()), name
