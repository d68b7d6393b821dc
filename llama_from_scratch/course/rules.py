"""The rules an exercise states, enforced: "do not use ``F.rms_norm``" fails the check when it is called.

:func:`forbidding` watches the calls made while a learner's function runs, with Python's profiling
hook (``sys.setprofile``). It recognises a forbidden function by its code object (a Python function,
or an ``nn.Module`` class by its ``forward``) or, for a function written in C such as
``F.scaled_dot_product_attention``, by identity. Either way it does not matter under which name the
learner imported it. The calls are recorded, not stopped: the check reports the first one when the
learner's function returns.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager


def _name(fn: Callable) -> str:
    module = getattr(fn, "__module__", None) or "torch"
    if module.startswith("torch._C"):
        module = {"torch._C._nn": "torch.nn.functional"}.get(module, "torch")
    return f"{module}.{getattr(fn, '__qualname__', getattr(fn, '__name__', repr(fn)))}"


@contextmanager
def forbidding(functions: Sequence[Callable]) -> Iterator[list[str]]:
    """Record, as qualified names, the calls to any of ``functions`` made inside the block (this thread only)."""
    by_code, builtins = {}, {}
    for fn in functions:
        if inspect.isclass(fn):  # a class: building one runs its __init__, calling a module its forward
            for method in ("__init__", "forward"):
                if hasattr(vars(fn).get(method), "__code__"):
                    by_code[vars(fn)[method].__code__] = _name(fn)
        elif hasattr(inspect.unwrap(fn), "__code__"):
            by_code[inspect.unwrap(fn).__code__] = _name(fn)
        else:
            builtins[id(fn)] = _name(fn)
    calls: list[str] = []
    if not functions:
        yield calls
        return

    def profile(frame, event, arg) -> None:
        if event == "call" and frame.f_code in by_code:
            calls.append(by_code[frame.f_code])
        elif event == "c_call" and id(arg) in builtins:
            calls.append(builtins[id(arg)])

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield calls
    finally:
        sys.setprofile(previous)
