"""Chapter 14's exercises (systems and scaling): the memory of the model states per device, the loss scale's update.

Each check calls the learner's function through the skeleton of :mod:`.feedback`
(:func:`~.feedback.check_cases`), compares with the package (``model_state_bytes``, ``DynamicLossScaler.update``)
and, when the answer differs, names the catalogued mistake below that gives what the learner got.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from ..systems.loss_scaling import DynamicLossScaler
from ..systems.memory import FP32_ADAMW, MIXED_PRECISION_ADAMW, model_state_bytes
from .feedback import Case, Mistake, check_cases, compare_values, diagnose, fail, refuses, wrapped

# --- the common wrong answers ---------------------------------------------------------------------


def _states(n, strategy, world_size, bytes_per_parameter, sharded_by_stage):
    """``(parameters, gradients, optimizer)`` bytes with ``sharded_by_stage[strategy]`` naming which are split."""
    split = sharded_by_stage[strategy]
    parts = [n * b for b in bytes_per_parameter]
    return tuple(part / world_size if kind in split else part for kind, part in zip("pgo", parts))


_RIGHT = {"ddp": "", "zero1": "o", "zero2": "go", "zero3": "pgo"}

MODEL_STATE_BYTES = [
    Mistake(
        "looks like every ZeRO stage shards all three:\n"
        "ZeRO-1 splits the optimizer state only, ZeRO-2 the gradients too,\n"
        "ZeRO-3 (FSDP) the weights as well",
        lambda *a: _states(*a, {"ddp": "", "zero1": "pgo", "zero2": "pgo", "zero3": "pgo"}),
    ),
    Mistake(
        "looks like the stages are shifted by one:\nZeRO-1 splits the optimizer state only, ZeRO-2 the gradients too",
        lambda *a: _states(*a, {"ddp": "", "zero1": "go", "zero2": "pgo", "zero3": "pgo"}),
    ),
    Mistake(
        "looks like the stages shard in the wrong order:\n"
        "ZeRO-1 splits the optimizer state (the largest part) first,\n"
        "then the gradients, and the weights last",
        lambda *a: _states(*a, {"ddp": "", "zero1": "p", "zero2": "pg", "zero3": "pgo"}),
    ),
    Mistake(
        "looks like data parallelism is sharded:\nDDP replicates everything on every device",
        lambda *a: _states(*a, {"ddp": "pgo", "zero1": "o", "zero2": "go", "zero3": "pgo"}),
    ),
    Mistake(
        "looks like the world size multiplies:\na shard is 1 / world_size of the whole",
        lambda n, strategy, w, b: _states(n, strategy, 1 / w, b, _RIGHT),
    ),
]


def _update(scale, good_steps, found_inf, growth_interval, reset_on_inf=True, reset_on_growth=True, late=False):
    """``DynamicLossScaler.update`` as a pure function, with one step done as a learner might."""
    if found_inf:
        return scale / 2, 0 if reset_on_inf else good_steps
    good_steps += 1
    if good_steps == growth_interval + late:
        return scale * 2, 0 if reset_on_growth else good_steps
    return scale, good_steps


UPDATE = [
    Mistake(
        "looks like the count of good steps is not reset on inf/NaN:\n"
        "after an overflow the scale must prove itself for a whole interval again",
        lambda *a: _update(*a, reset_on_inf=False),
    ),
    Mistake(
        "looks like the count of good steps is not reset after growing:\n"
        "set it to 0 when the scale doubles, so it doubles once per interval",
        lambda *a: _update(*a, reset_on_growth=False),
    ),
    Mistake(
        "looks like the scale grows one step late:\n"
        "count this good step first, then double when the count reaches growth_interval",
        lambda *a: _update(*a, late=True),
    ),
    Mistake(
        "looks like halving and doubling are swapped:\nhalve the scale on inf/NaN, double it after good steps",
        lambda s, g, inf, n: (s * 2, 0) if inf else ((s / 2, 0) if g + 1 == n else (s, g + 1)),
    ),
    Mistake(
        "looks like the scale grows after every good step:\ndouble it only after growth_interval good steps in a row",
        lambda s, g, inf, n: (s / 2, 0) if inf else (s * 2, 0),
    ),
]

# --- the checks -----------------------------------------------------------------------------------


def _floats(rel: float) -> Callable[..., None]:
    """A ``compare`` of :func:`.feedback.check_cases` for tuples of numbers, each within ``rel`` of the expected."""

    def same(got: object, expected: tuple) -> bool:
        return (
            isinstance(got, (tuple, list))
            and len(got) == len(expected)
            and all(
                isinstance(g, (int, float)) and math.isclose(g, e, rel_tol=rel, abs_tol=0)
                for g, e in zip(got, expected)
            )
        )

    def compare(name: str, got: object, expected: tuple, args: tuple, mistakes: Iterable[Mistake]) -> None:
        if not same(got, expected):
            difference = f"{wrapped('  expected ', expected)}\n{wrapped('  got      ', got)}"
            raise fail(name, difference, diagnose(got, args, mistakes, same))

    return compare


def check_model_state_bytes(my_model_state_bytes: Callable) -> None:
    """``my_model_state_bytes(n_parameters, strategy, world_size, bytes_per_parameter)``: ``(parameters,
    gradients, optimizer)`` bytes per device, as :func:`..systems.memory.model_state_bytes`."""
    cases = [
        Case(
            f"{n:,} parameters, {strategy} on {w} devices, {b} bytes",
            (n, strategy, w, b),
            model_state_bytes(n, strategy, w, b),
        )
        for n, strategy, w, b in [
            (1000, "ddp", 4, FP32_ADAMW),
            (1000, "zero1", 4, FP32_ADAMW),
            (1000, "zero2", 8, MIXED_PRECISION_ADAMW),
            (1000, "zero3", 8, MIXED_PRECISION_ADAMW),
            (6_738_415_616, "zero3", 64, MIXED_PRECISION_ADAMW),  # LLaMA 7B on 64 GPUs
            (999, "zero2", 2, FP32_ADAMW),
        ]
    ]
    # a division and a product of exact integers: the order of the two roundings moves the result by 1 ulp
    check_cases(
        None, "my_model_state_bytes", my_model_state_bytes, cases, compare=_floats(1e-12), mistakes=MODEL_STATE_BYTES
    )
    refuses(
        "an unknown strategy ('fsdp')",
        "my_model_state_bytes",
        my_model_state_bytes,
        (10, "fsdp", 2, FP32_ADAMW),
        ("strategy", "fsdp"),
        "refuse an unknown strategy with a ValueError naming it",
    )
    print(f"✓ my_model_state_bytes: correct on {len(cases) + 1} test cases")


def package_update(scale: float, good_steps: int, found_inf: bool, growth_interval: int) -> tuple[float, int]:
    """``(scale, good_steps)`` after :meth:`..systems.loss_scaling.DynamicLossScaler.update` (factors 2 and 1/2)."""
    scaler = DynamicLossScaler(init_scale=scale, growth_interval=growth_interval)
    scaler.good_steps = good_steps
    scaler.update(found_inf)
    return scaler.scale, scaler.good_steps


def check_update(my_update: Callable) -> None:
    """``my_update(scale, good_steps, found_inf, growth_interval)``: the loss scale and the count of good steps
    after one step, as :meth:`..systems.loss_scaling.DynamicLossScaler.update`."""
    cases = [
        Case(label, args, package_update(*args))
        for label, args in [
            ("an overflow", (2.0**16, 0, True, 3)),
            ("an overflow after 5 good steps", (2.0**16, 5, True, 2000)),
            ("a good step", (2.0**16, 0, False, 3)),
            ("the third good step in a row, interval 3", (2.0**16, 2, False, 3)),
            ("the 2,000th good step, interval 2,000", (1024.0, 1999, False, 2000)),
            ("the 1,999th good step, interval 2,000", (1024.0, 1998, False, 2000)),
        ]
    ]
    check_cases(
        "my_update",
        "my_update",
        my_update,
        cases,
        compare=compare_values,
        mistakes=UPDATE,
        convert=lambda got: tuple(got) if isinstance(got, list) else got,
    )
