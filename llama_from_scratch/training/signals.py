"""Stopping a training run cleanly: Ctrl-C and SIGTERM become a request that the loop honours between steps.

A signal handled the default way raises ``KeyboardInterrupt`` wherever the process happens to be: in the
middle of an optimizer step, say, with half the weights updated and nothing saved since the last
checkpoint. :func:`stop_requests` turns the first signal into a flag instead; the training loop looks at it
after each step, saves a checkpoint and raises :class:`TrainingStopped`, whose message says where the
checkpoint is. ``torchrun`` sends the signal to every process, and all of them agree on the step to stop
at (:func:`.distributed.any_rank`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


class TrainingStopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run between two steps; the message says where its checkpoint is."""


@contextlib.contextmanager
def stop_requests() -> Iterator[Callable[[], bool]]:
    """Turn Ctrl-C (SIGINT) and SIGTERM into a *request* that the loop honours between two steps.

    A signal that arrives mid-step would otherwise stop the process with half an optimizer step applied
    and nothing saved. The handler only records the request; the loop finishes its step, saves a
    checkpoint and stops. A second signal stops at once, as usual. Signal handlers can only be set in
    the main thread: elsewhere no request is ever made.
    """
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum: int, frame) -> None:
        if requested:
            raise KeyboardInterrupt  # asked twice: stop now
        requested.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(requested)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
