"""An OpenAI-compatible HTTP server for a checkpoint: FastAPI routes, limits, errors, metrics, a clean stop.

Routes: ``POST /v1/chat/completions`` (the conversation rendered with the checkpoint's chat template),
``POST /v1/completions`` (plain text continuation), ``GET /v1/models``, ``GET /health``, ``GET /metrics``.
With ``"stream": true`` the answer comes as server-sent events, ``data: {json}`` lines, one per piece of
text, and a last ``data: [DONE]``; a client that goes away mid-stream cancels its request, whose KV blocks
are freed before the next step.

A server meets strangers, so every limit is explicit and every refusal is OpenAI's error body
(``{"error": {"message", "type", "param", "code"}}``) with the right status: 400 for a request that cannot
be served (a bad setting, a prompt that leaves no room in the context, ``max_tokens`` above the cap), 401 for
a missing or wrong API key, 404 for an unknown model, 413 for a body over the size limit, 422 for a body
of the wrong shape, 429 when the queue is full, 503 while shutting down. It listens on 127.0.0.1 unless
told otherwise: a model server open to a network needs ``--api-key`` at least.

On SIGTERM (what ``docker stop`` and systemd send) the server stops accepting connections, lets running
requests finish for up to ``drain_seconds``, cancels the rest, and exits with status 0.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ..tokenization.chat import chat_prompt, chat_stop_tokens
from .engine import LLMEngine, RequestOutput
from .engine_thread import EngineThread
from .metrics import ServerMetrics
from .middleware import BodyTooLarge, Guard
from .protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
    completion_response,
    new_id,
    stream_chunk,
    usage_chunk,
)
from .sampling_params import SamplingParams

STATIC = Path(__file__).parent / "static"


@dataclass
class ServerSettings:
    """The server's limits and identity.

    ``model_name``: what ``/v1/models`` lists and requests must name. ``api_key``: if set, every ``/v1``
    request must carry ``Authorization: Bearer <api_key>``. ``max_body_bytes``: the largest request body.
    ``max_queue``: requests that may wait beyond the engine's running ones before 429. ``max_tokens_cap``:
    the largest ``max_tokens`` (default: the context). ``drain_seconds``: how long SIGTERM lets requests finish.
    """

    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_queue: int = 64
    max_tokens_cap: int | None = None
    drain_seconds: float = 10.0
    draining: bool = field(default=False, repr=False)


def create_app(pretrained, settings: ServerSettings, **engine_options):
    """The ASGI app serving ``pretrained`` (a model with its tokenizer and chat template, as ``load_pretrained``
    gives it; the engine takes over its model). ``engine_options`` go to :class:`~.engine.LLMEngine`."""
    tokenizer, template = pretrained.tokenizer, pretrained.chat_template
    engine = LLMEngine(pretrained.model, tokenizer, **engine_options)
    context = engine.model.config.max_seq_len
    cap = settings.max_tokens_cap or context
    metrics = ServerMetrics()
    created = int(time.time())
    capacity = engine.scheduler.max_num_seqs + settings.max_queue
    in_flight = 0

    def update_gauges(engine: LLMEngine) -> None:
        allocator = engine.cache.allocator
        metrics.requests_waiting.set(len(engine.scheduler.waiting))
        metrics.requests_running.set(len(engine.scheduler.running))
        metrics.kv_blocks_in_use.set(allocator.num_in_use)
        metrics.kv_blocks_cached.set(allocator.num_cached)

    thread = EngineThread(engine, update_gauges)

    @asynccontextmanager
    async def lifespan(app):
        thread.start()
        yield
        thread.stop()

    app = FastAPI(title="llama-from-scratch", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError):
        problems = error.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return JSONResponse(APIError(400, "the request body is not valid JSON", "invalid_json").body(), 400)
        where = [".".join(str(part) for part in p["loc"][1:]) or "body" for p in problems]
        message = "; ".join(f"{w}: {p['msg']}" for w, p in zip(where, problems))
        return JSONResponse(APIError(422, message, "invalid_value", where[0]).body(), status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        code = "request_too_large" if isinstance(error, BodyTooLarge) else None
        return JSONResponse(APIError(error.status_code, str(error.detail), code).body(), status_code=error.status_code)

    async def check_api_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        expected = f"Bearer {settings.api_key}"
        if not hmac.compare_digest(given.encode(), expected.encode()):  # in constant time: no guessing by timing
            raise APIError(401, "incorrect or missing API key (send Authorization: Bearer <key>)", "invalid_api_key")

    def sampling_params(body: SamplingFields, prompt: list[int], stop_token_ids: list[int]) -> SamplingParams:
        if body.model is not None and body.model != settings.model_name:
            raise APIError(404, f"the model '{body.model}' does not exist; this server serves '{settings.model_name}'",
                           "model_not_found", "model")
        if body.n != 1:
            raise APIError(400, f"n must be 1 (one answer per request), got {body.n}", "invalid_value", "n")
        if body.max_tokens is not None and body.max_tokens > cap:
            raise APIError(400, f"max_tokens is {body.max_tokens}, more than this server's limit of {cap}",
                           "invalid_value", "max_tokens")
        max_tokens = body.max_tokens if body.max_tokens is not None else min(cap, context - len(prompt))
        if max_tokens < 1 and body.max_tokens is None:
            raise APIError(400, f"the prompt ({len(prompt)} tokens) leaves no room in the model's context of "
                           f"{context} tokens", "context_length_exceeded")
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        top_p = None if body.top_p == 1 else body.top_p  # OpenAI's default, 1, keeps every token
        return SamplingParams(max_tokens, body.temperature, top_p, body.top_k, body.seed, stop, tuple(stop_token_ids))

    async def respond(request: Request, body: SamplingFields, prompt: list[int], stop_ids: list[int], chat: bool):
        nonlocal in_flight
        arrival = time.monotonic()
        params = sampling_params(body, prompt, stop_ids)
        if settings.draining:
            raise APIError(503, "the server is shutting down", "shutting_down")
        if in_flight >= capacity:
            raise APIError(429, f"the server is busy: {capacity} requests are running or queued; retry later",
                           "queue_full")
        request_id = new_id("chatcmpl" if chat else "cmpl")
        try:
            outputs = thread.add(request_id, prompt, params)
        except ValueError as error:
            raise APIError(400, str(error), "invalid_value") from None
        in_flight += 1
        metrics.prompt_tokens.inc(len(prompt))
        last = [arrival]

        async def next_output(watch: bool) -> RequestOutput:
            """The next output; ``watch``: check every half second whether the client is still there (a
            streaming response needs not: Starlette cancels it when the client goes)."""
            while True:
                try:
                    output = await asyncio.wait_for(outputs.get(), timeout=0.5 if watch else None)
                except TimeoutError:
                    if await request.is_disconnected():
                        raise asyncio.CancelledError from None
                    continue
                if isinstance(output, BaseException):
                    raise APIError(400 if isinstance(output, ValueError) else 500, str(output))
                if output.token_ids:
                    now = time.monotonic()
                    (metrics.time_to_first_token if last[0] == arrival else metrics.inter_token_latency).observe(
                        now - last[0])
                    last[0] = now
                    metrics.generation_tokens.inc(len(output.token_ids))
                return output

        async def events() -> AsyncIterator[str]:
            nonlocal in_flight
            finished = False
            try:
                if chat:
                    yield _sse(stream_chunk(request_id, settings.model_name, chat, "", None, role=True))
                while not finished:
                    try:
                        output = await next_output(watch=False)
                    except APIError as error:
                        finished = True
                        yield _sse(error.body())
                        break
                    finished = output.finished
                    if output.text:
                        yield _sse(stream_chunk(request_id, settings.model_name, chat, output.text, None))
                    if finished:
                        yield _sse(stream_chunk(request_id, settings.model_name, chat, None, output.finish_reason))
                        if body.stream_options is not None and body.stream_options.include_usage:
                            yield _sse(usage_chunk(request_id, settings.model_name, chat, output.num_prompt_tokens,
                                                   output.num_output_tokens))
                yield "data: [DONE]\n\n"
            finally:
                in_flight -= 1
                if not finished:
                    thread.abort(request_id)  # the client went away: free its blocks

        if body.stream:
            return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        text, finished = "", False
        try:
            while not finished:
                output = await next_output(watch=True)
                text += output.text
                finished = output.finished
        finally:
            in_flight -= 1
            if not finished:
                thread.abort(request_id)
        return completion_response(request_id, settings.model_name, chat, text, output.finish_reason,
                                   output.num_prompt_tokens, output.num_output_tokens)

    @app.post("/v1/chat/completions", dependencies=[Depends(check_api_key)])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        if template is None:
            raise APIError(400, "this checkpoint has no chat template: use /v1/completions", "no_chat_template")
        messages = [m.model_dump() for m in body.messages]

        def encode() -> list[int]:
            return chat_prompt(tokenizer, template, messages)

        try:
            prompt = await asyncio.to_thread(encode)
        except ValueError as error:
            raise APIError(400, str(error), "invalid_value", "messages") from None
        return await respond(request, body, prompt, chat_stop_tokens(tokenizer), chat=True)

    @app.post("/v1/completions", dependencies=[Depends(check_api_key)])
    async def completions(body: CompletionRequest, request: Request):
        prompt = await asyncio.to_thread(tokenizer.encode, body.prompt, bos=tokenizer.bos_id is not None)
        stop_ids = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
        return await respond(request, body, prompt, stop_ids, chat=False)

    @app.get("/v1/models", dependencies=[Depends(check_api_key)])
    async def models():
        entry = {"id": settings.model_name, "object": "model", "created": created, "owned_by": "llama-from-scratch",
                 "max_model_len": context}
        return {"object": "list", "data": [entry]}

    @app.get("/health")
    async def health():
        if settings.draining:
            raise APIError(503, "the server is shutting down", "shutting_down")
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics_text():
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    if (STATIC / "index.html").exists():

        @app.get("/")
        async def chat_page():
            return FileResponse(STATIC / "index.html")

    app.state.engine, app.state.engine_thread, app.state.settings = engine, thread, settings
    return Guard(app, settings.max_body_bytes, metrics)


def _sse(data: dict) -> str:
    """One server-sent event: a ``data:`` line and a blank line (JSON never contains a raw newline)."""
    return f"data: {json.dumps(data, allow_nan=False)}\n\n"


def run_server(app, settings: ServerSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"):
    """Serve ``app`` (from :func:`create_app`) with uvicorn until SIGTERM or Ctrl-C; returns after a clean stop.

    uvicorn handles the signal (stop accepting, wait up to ``settings.drain_seconds``, cancel the rest), then
    sends it again to the handler that was there before; a SIGTERM handler that does nothing makes that
    second delivery harmless, so the process ends with status 0.
    """
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            settings.draining = True  # /health says 503 at once, new requests too
            super().handle_exit(sig, frame)

    if not math.isfinite(settings.drain_seconds) or settings.drain_seconds < 0:
        raise ValueError(f"drain_seconds must be a finite number >= 0, got {settings.drain_seconds}")
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=max(1, round(settings.drain_seconds)))
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    DrainingServer(config).run()
