"""The engine in a thread of its own, fed by the server's event loop (vLLM's ``AsyncLLMEngine``, in small).

An HTTP server answers many connections on one event loop, which must never block; a step of the model
takes milliseconds to seconds and must run back to back while anyone waits. So the engine steps in one
background thread, and the two sides talk through queues only:

* the event loop puts commands (*add this request*, *cancel that one*) into a thread-safe queue and wakes
  the thread; the thread applies them between steps, so the engine's state is touched by one thread alone;
* the thread hands each :class:`~.engine.RequestOutput` to its request's ``asyncio.Queue`` through
  ``loop.call_soon_threadsafe``, the one way to reach an event loop from another thread.

When no request is left the thread sleeps until woken, using no CPU.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence

from .engine import LLMEngine, RequestOutput
from .sampling_params import SamplingParams

log = logging.getLogger(__name__)


class EngineThread:
    """Steps ``engine`` in a daemon thread; :meth:`add` and :meth:`abort` are called from the event loop.

    ``on_step(engine)`` runs in the thread after each step (the server updates its gauges there).
    """

    def __init__(self, engine: LLMEngine, on_step: Callable[[LLMEngine], None] = lambda engine: None):
        self.engine, self.on_step = engine, on_step
        self.commands: queue.SimpleQueue = queue.SimpleQueue()
        self.wake = threading.Event()
        self.streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="llama-engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel whatever is left, end the thread, and wait for it (at most ``timeout`` seconds)."""
        self.stopped = True
        self.wake.set()
        self.thread.join(timeout)

    def add(self, request_id: str, prompt: Sequence[int], params: SamplingParams) -> asyncio.Queue:
        """Queue a request (checked first: a ``ValueError`` names the problem); its outputs arrive in the queue."""
        self.engine.check_request(prompt, params)  # reads only: safe from this thread
        outputs: asyncio.Queue = asyncio.Queue()
        self.streams[request_id] = (asyncio.get_running_loop(), outputs)
        self.commands.put(("add", request_id, list(prompt), params))
        self.wake.set()
        return outputs

    def abort(self, request_id: str) -> None:
        """Cancel a request: its blocks are freed before the next step."""
        self.streams.pop(request_id, None)
        self.commands.put(("abort", request_id))
        self.wake.set()

    def _deliver(self, output: RequestOutput | BaseException, request_id: str) -> None:
        stream = self.streams.get(request_id)
        if stream is not None:
            loop, outputs = stream
            loop.call_soon_threadsafe(outputs.put_nowait, output)

    def _apply_commands(self) -> None:
        while True:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                _, request_id, prompt, params = command
                if request_id not in self.streams:
                    continue  # cancelled before it was ever queued
                try:
                    self.engine.add_request(request_id, prompt, params)
                except ValueError as error:
                    self._deliver(error, request_id)
            else:
                self.engine.abort(command[1])

    def _run(self) -> None:
        while not self.stopped:
            self.wake.clear()  # before reading the commands: one that arrives later sets it again
            self._apply_commands()
            if not self.engine.has_unfinished_requests():
                self.on_step(self.engine)
                self.wake.wait()
                continue
            try:
                outputs = self.engine.step()
            except Exception as error:  # noqa: BLE001 - a bug must fail the requests, not silently kill the thread
                log.exception("engine step failed")
                for request_id in list(self.streams):
                    self._deliver(error, request_id)
                    self.engine.abort(request_id)
                continue
            for output in outputs:
                self._deliver(output, output.request_id)
                if output.finished:
                    self.streams.pop(output.request_id, None)
            self.on_step(self.engine)
        for request_id in list(self.streams):
            self.engine.abort(request_id)
