"""Dynamic loss scaling: how float16 training keeps small gradients from rounding to zero.

float16 has 5 exponent bits: its smallest positive (subnormal) number is 2^-24, about 6e-8, and its
largest 65,504 (chapter 09's number formats). Gradients of a language model are often far below 1e-7,
so in float16 they *underflow*: they become exactly 0 and the weights they belong to stop learning.
bfloat16 keeps float32's 8 exponent bits (same range, fewer digits) and needs none of this.

The remedy (Micikevicius et al., 2018, "Mixed Precision Training"): multiply the loss by a large
``scale`` S before ``backward()``. Every gradient is linear in the loss, so every gradient comes out
S times larger, lifted above float16's floor. Before the optimizer step, divide the gradients by S
again (in float32, where the master weights live): the update is the one the unscaled loss gives.

Too large an S overflows instead: a gradient becomes inf (or NaN). S is therefore chosen *dynamically*:

* after ``backward()``, unscale the gradients and check them: if any is inf or NaN, **skip** the
  optimizer step (the weights stay as they were) and **halve** S (``backoff_factor``);
* after ``growth_interval`` steps in a row without inf/NaN, **double** S (``growth_factor``), to
  use as much of float16's range as the gradients allow.

The scale hovers just below the overflow point. This is ``torch.amp.GradScaler``'s rule, written
out; ``tests/test_systems.py`` checks both give the same scales and the same weights on one sequence
of gradients. Like GradScaler, the scale is held in float32 (a growth that would make it infinite in
float32 is not taken) and the gradients are multiplied by ``1 / S`` rounded to float32.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from ..errors import is_finite_number, is_int


class DynamicLossScaler:
    """Scale the loss up before ``backward()``, the gradients down before the step; adapt the scale.

    One optimizer step reads::

        scaler.scale(loss).backward()
        found_inf = scaler.unscale_(parameters)  # gradients back to their true size; any inf or NaN?
        ...  # clip the (unscaled) gradients here, if clipping
        if not found_inf:
            optimizer.step()
        scaler.update(found_inf)

    Defaults are ``GradScaler``'s: start at 2^16, halve on overflow, double after 2,000 good steps.
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ):
        for name, value in (("init_scale", init_scale), ("growth_factor", growth_factor)):
            if not (is_finite_number(value) and value > (0 if name == "init_scale" else 1)):
                raise ValueError(
                    f"DynamicLossScaler.{name} must be finite and > {0 if name == 'init_scale' else 1}, got {value!r}"
                )
        if not (is_finite_number(backoff_factor) and 0 < backoff_factor < 1):
            raise ValueError(f"DynamicLossScaler.backoff_factor must lie in (0, 1), got {backoff_factor!r}")
        if not is_int(growth_interval) or growth_interval < 1:
            raise ValueError(f"DynamicLossScaler.growth_interval must be an int >= 1, got {growth_interval!r}")
        self.scale = _float32(init_scale)
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval
        self.good_steps = 0  # steps in a row without inf/NaN since the scale last changed

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss * scale``: call ``backward()`` on this instead of on the loss."""
        return loss * self.scale

    @torch.no_grad()
    def unscale_(self, parameters: Iterable[torch.Tensor]) -> bool:
        """Divide every gradient by the scale, in place; return whether any gradient holds inf or NaN."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return False
        inverse = _float32(1.0 / self.scale)
        torch._foreach_mul_(grads, inverse)
        return not bool(torch.stack([g.isfinite().all() for g in grads]).all())

    def update(self, found_inf: bool) -> None:
        """After the step: halve the scale on inf/NaN; double it after ``growth_interval`` good steps."""
        if found_inf:
            self.scale = _float32(self.scale * self.backoff_factor)
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            grown = _float32(self.scale * self.growth_factor)
            if math.isfinite(grown):  # a float32 overflow is not taken (GradScaler's rule)
                self.scale = grown
            self.good_steps = 0

    def state_dict(self) -> dict[str, float | int]:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        """Continue from :meth:`state_dict`; ``ValueError`` if the values cannot be this scaler's."""
        scale, good_steps = state["scale"], state["good_steps"]
        if not (
            is_finite_number(scale) and scale > 0 and is_int(good_steps) and 0 <= good_steps < self.growth_interval
        ):
            raise ValueError(
                f"a loss scaler's state needs a finite scale > 0 and 0 <= good_steps < {self.growth_interval}, "
                f"got scale={scale!r}, good_steps={good_steps!r}"
            )
        self.scale, self.good_steps = _float32(scale), good_steps


def _float32(x: float) -> float:
    """``x`` rounded to float32 (infinite if beyond its range), as a Python float."""
    with np.errstate(over="ignore"):
        return float(np.float32(x))
