"""Chapter 07's exercises (training): the learning-rate schedule, gradient clipping, one training step.

Each check calls the learner's function through :func:`~.feedback.answer`, compares with the package's
:mod:`..training.train` (``learning_rate``, ``train_step``) or with the arithmetic itself, and, when the
answer differs, names the catalogued mistake below that gives what the learner got. A schedule is
compared over the steps of a whole run; clipping and a step are compared on the gradients and weights
they leave behind, each mistake replayed from the same starting point.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .feedback import Mistake, answer, diagnose, fail, float32_drift, passed, tensor_difference

# --- the common wrong answers ---------------------------------------------------------------------


def _lr(step, warmup, total, lr, min_lr, warm_from_zero=False, decay_end=0, floor=True, to_zero=False, linear=False):
    if step < warmup:
        return lr * (step if warm_from_zero else step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup - decay_end)
    progress = min(1.0, progress) if floor else progress
    low = 0.0 if to_zero else min_lr
    shape = 1.0 - progress if linear else 0.5 * (1.0 + math.cos(math.pi * progress))
    return low + shape * (lr - low)


LR_SCHEDULE = [
    Mistake(
        "looks like the warm-up starts at 0:\nstep 0 gets lr / warmup_steps and step warmup_steps − 1 the peak:\n"
        "lr · (step + 1) / warmup_steps",
        lambda s, w, t, lr, m: _lr(s, w, t, lr, m, warm_from_zero=True),
    ),
    Mistake(
        "looks like the cosine reaches min_lr one step early:\n"
        "progress is (step − warmup_steps) / (total_steps − warmup_steps)",
        lambda s, w, t, lr, m: _lr(s, w, t, lr, m, decay_end=1),
    ),
    Mistake(
        "looks like the rate rises again after total_steps:\nclamp the progress at 1, so later steps stay at min_lr",
        lambda s, w, t, lr, m: _lr(s, w, t, lr, m, floor=False),
    ),
    Mistake(
        "looks like the cosine decays to 0, not to min_lr:\nmin_lr + (lr − min_lr) · (1 + cos(π · progress)) / 2",
        lambda s, w, t, lr, m: _lr(s, w, t, lr, m, to_zero=True),
    ),
    Mistake(
        "looks like a linear decay:\nafter the warm-up the rate follows half a cosine, (1 + cos(π · progress)) / 2",
        lambda s, w, t, lr, m: _lr(s, w, t, lr, m, linear=True),
    ),
]


def _clip(parameters, max_norm, per_tensor=False, always=False, return_after=False, in_place=True):
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = float(torch.sqrt(sum((g**2).sum() for g in grads)))
    for g in grads:
        own = float(g.norm())
        factor = max_norm / ((own if per_tensor else norm) + 1e-6)
        if always or (own if per_tensor else norm) > max_norm:
            if in_place:
                g.mul_(factor)
            else:
                g = g * factor  # a new tensor: p.grad is unchanged
    return min(norm, max_norm) if return_after else norm


CLIP_GRADIENTS = [
    Mistake(
        "looks like each gradient is clipped on its own:\n"
        "the norm is global, of all gradients together, and one factor scales them all",
        lambda parameters, max_norm: _clip(parameters, max_norm, per_tensor=True),
    ),
    Mistake(
        "looks like the gradients are scaled even when the norm is below max_norm:\n"
        "clip only when the norm exceeds it (small gradients stay as they are)",
        lambda parameters, max_norm: _clip(parameters, max_norm, always=True),
    ),
    Mistake(
        "looks like it returns the norm after clipping:\nreturn the norm the gradients had before",
        lambda parameters, max_norm: _clip(parameters, max_norm, return_after=True),
    ),
    Mistake(
        "looks like the gradients are not changed in place:\n"
        "scale each p.grad itself (p.grad.mul_(factor)): the optimizer reads them there",
        lambda parameters, max_norm: _clip(parameters, max_norm, in_place=False),
    ),
]


def _step_variant(model, optimizer, inputs, targets, lr, max_norm, zero=True, clip=True, set_lr=True):
    if set_lr:
        for group in optimizer.param_groups:
            group["lr"] = lr
    if zero:
        optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss.item()


TRAIN_STEP = [
    Mistake(
        "looks like the gradients are not cleared first:\n"
        "call optimizer.zero_grad() before backward, or they add up across steps",
        lambda *a: _step_variant(*a, zero=False),
    ),
    Mistake(
        "looks like the gradients are not clipped:\nclip them to max_norm after backward, before optimizer.step()",
        lambda *a: _step_variant(*a, clip=False),
    ),
    Mistake(
        "looks like the learning rate is not set:\nset group['lr'] = lr for every group in optimizer.param_groups",
        lambda *a: _step_variant(*a, set_lr=False),
    ),
]


# --- the checks -----------------------------------------------------------------------------------


def check_lr_schedule(fn: Callable[[int, int, int, float, float], float]) -> None:
    """``fn(step, warmup_steps, total_steps, lr, min_lr)``: linear warm-up, then cosine decay to ``min_lr``."""
    from ..training.train import TrainConfig, learning_rate

    # the last two: no decay phase at all (warmup_steps = total_steps), and a run as chapter 07 trains one
    cases = [(100, 1000, 1e-3, 1e-4), (10, 50, 3e-3, 0.0), (1, 20, 1.0, 0.5), (4, 20, 1.0, 0.1), (5, 5, 2.0, 0.5)]
    cases += [(30, 300, 3e-3, 1e-4)]
    for warmup, total, lr, min_lr in cases:
        config = TrainConfig(steps=total, warmup_steps=warmup, lr=lr, min_lr=min_lr)
        steps = [*range(total + 20), 500]  # every step of the run, some after it, and one far after
        got = [
            answer("my_learning_rate", fn, step, warmup, total, lr, min_lr, forbidden=[learning_rate]) for step in steps
        ]
        expected = [learning_rate(step, config) for step in steps]
        for step, g, e in zip(steps, got, expected):
            # float64 arithmetic of a few operations: two correct formulas agree to some 1e-15 relative
            if not isinstance(g, (int, float)) or not math.isclose(g, e, rel_tol=1e-9, abs_tol=1e-15):
                wrong = [
                    Mistake(m.cause, lambda *a, m=m, steps=steps: [m.answer(s, *a) for s in steps]) for m in LR_SCHEDULE
                ]
                cause = diagnose(
                    got,
                    (warmup, total, lr, min_lr),
                    wrong,
                    lambda a, b: all(
                        isinstance(x, (int, float)) and math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)
                        for x, y in zip(a, b)
                    ),
                )
                raise fail(
                    f"my_learning_rate(step={step}, warmup_steps={warmup}, total_steps={total},\n"
                    f"  lr={lr}, min_lr={min_lr})",
                    f"  expected {e:.6g}, got {g!r}",
                    cause,
                )
    passed("lr schedule", len(cases))


def check_clip_gradients(fn: Callable[[list[torch.Tensor], float], float]) -> None:
    """``fn(parameters, max_norm)``: scale all gradients so their global L2 norm is at most ``max_norm``.

    Returns the norm *before* clipping and changes the ``.grad`` tensors in place.
    """
    torch.manual_seed(0)
    cases = [(0.5, 3.0), (10.0, 1.0), (1.0, 1e-3)]  # (max_norm, gradient scale): clipped, untouched, tiny
    rules = [torch.nn.utils.clip_grad_norm_, torch.nn.utils.clip_grads_with_norm_]
    for max_norm, scale in cases:
        weights = [torch.randn(shape) for shape in ((4, 3), (5,), (2, 2, 2))]
        reference = [torch.randn_like(w) * scale for w in weights]

        def run(answer_fn, name=None, weights=weights, reference=reference, max_norm=max_norm):
            """(norm returned, gradients afterwards) of answer_fn, on fresh parameters holding the reference gradients."""
            params = [torch.nn.Parameter(w.clone()) for w in weights] + [torch.nn.Parameter(torch.zeros(3))]
            for p, g in zip(params, reference):  # the last parameter has no gradient (a frozen one, say)
                p.grad = g.clone()
            call = (lambda *a: answer(name, answer_fn, *a, forbidden=rules)) if name else answer_fn
            return call(iter(params), max_norm), [p.grad for p in params]

        def same(got, wrong):
            return (
                isinstance(got[0], (int, float, torch.Tensor))
                and math.isclose(float(got[0]), wrong[0], rel_tol=1e-4)
                and all(
                    (g is None and w is None) or (g is not None and w is not None and torch.allclose(g, w, atol=1e-6))
                    for g, w in zip(got[1], wrong[1])
                )
            )

        expected_norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in reference])))
        factor = min(1.0, max_norm / (expected_norm + 1e-6))  # the small constant avoids dividing by zero
        outcome = run(fn, "my_clip_grad_norm")

        def cause(outcome=outcome, run=run):
            return next((m.cause for m in CLIP_GRADIENTS if same(outcome, run(m.answer))), None)

        label = f"my_clip_grad_norm(max_norm={max_norm}, gradients of norm {expected_norm:.3g})"
        got = outcome[0]
        # a sum of n squares and a root in float32 on either side, each within float32_drift(n) of the exact norm
        rel = 2 * float32_drift(sum(g.numel() for g in reference))
        if not isinstance(got, (int, float, torch.Tensor)) or not math.isclose(float(got), expected_norm, rel_tol=rel):
            raise fail(label, f"  should return the norm before clipping, {expected_norm:.6g}, got {got!r}", cause())
        for i, (grad, g) in enumerate(zip(outcome[1], reference)):
            if factor < 1:  # one float32 product off at most
                difference = tensor_difference(grad, g * factor, atol=1e-6, rtol=1e-5)
            else:  # below max_norm the gradients stay exactly as they are
                difference = tensor_difference(grad, g, atol=0, rtol=0)
            if difference is not None:
                raise fail(f"{label}, gradient {i} afterwards", difference, cause())
        if outcome[1][-1] is not None:
            raise fail(
                f"{label}, a parameter without a gradient",
                "  its .grad is no longer None",
                "skip the parameters whose .grad is None (frozen ones): leave them None",
            )
    passed("clip gradients", len(cases))


def check_train_step(fn: Callable[..., float]) -> None:
    """``fn(model, optimizer, inputs, targets, lr, max_norm)``: one training step; returns the loss.

    Set the learning rate, clear old gradients, compute the next-token
    cross-entropy, backpropagate, clip the gradients to ``max_norm``, update.
    """
    from ..config import LlamaConfig
    from ..model import Llama
    from ..training.train import train_step

    config = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, hidden_dim=64, max_seq_len=16)
    torch.manual_seed(0)
    data = torch.randint(0, 50, (2, 4, 13))
    models = [Llama(config), Llama(config)]
    models[1].load_state_dict(models[0].state_dict())
    # SGD with momentum rather than AdamW: Adam divides each gradient by its own size, so
    # rounding-level differences between two correct ways of computing the loss (logits then
    # F.cross_entropy, or the model's fused loss) would show up as visible weight differences.
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9) for m in models]
    for p in models[0].parameters():  # stale gradients, as an earlier backward pass leaves them
        p.grad = torch.full_like(p, 0.01)
    for step, (lr, max_norm) in enumerate([(1e-2, 1.0), (5e-3, 0.1)]):
        inputs, targets = data[step, :, :-1], data[step, :, 1:]
        # where the mistakes start from: the learner's model and optimizer before the call (a deep copy
        # leaves the gradients behind, so they are kept apart)
        start = copy.deepcopy((models[0], optimizers[0]))
        start_grads = {n: p.grad.clone() for n, p in models[0].named_parameters() if p.grad is not None}
        got = answer(
            "my_train_step", fn, models[0], optimizers[0], inputs, targets, lr, max_norm, forbidden=[train_step]
        )
        expected, _ = train_step(models[1], optimizers[1], [(inputs, targets)], lr, max_norm)
        label = f"my_train_step (step {step}, lr={lr}, max_norm={max_norm})"

        def cause(start=start, start_grads=start_grads, batch=(inputs, targets, lr, max_norm)):
            for mistake in TRAIN_STEP:
                model, optimizer = copy.deepcopy(start)
                for n, grad in start_grads.items():
                    model.get_parameter(n).grad = grad.clone()
                mistake.answer(model, optimizer, *batch)
                if all(torch.allclose(models[0].get_parameter(n), p, atol=1e-5) for n, p in model.named_parameters()):
                    return mistake.cause
            return None

        if not isinstance(got, float):
            raise fail(
                label, f"  expected the loss as a Python float, got {type(got).__name__}",
                "return loss.item(): a float, not the tensor (which would keep its graph alive)",
            )
        # float32 rounding, as the hidden tests allow: the two losses add in other orders over the vocabulary and
        # the positions, through the layers; independent rounding errors add up like a random walk
        drift = float32_drift(config.vocab_size + inputs.numel() + config.n_layers * config.hidden_dim)
        if abs(got - expected) > drift * expected:
            raise fail(label, f"  the loss should be {expected:.6f}, got {got!r}")
        for name, p in models[1].named_parameters():
            difference = tensor_difference(models[0].get_parameter(name), p, atol=1e-5, rtol=1e-5)
            if difference is not None:
                raise fail(f"{label}, weight {name} afterwards", difference, cause())
    passed("train step", 2)
