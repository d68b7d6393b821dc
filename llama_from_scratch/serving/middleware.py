"""ASGI middleware in front of the server's app: a limit on request bodies, and responses counted by status.

ASGI is the interface between a web server (uvicorn) and an app (FastAPI): the app is a coroutine called
with the request's ``scope`` and two channels, ``receive`` (the body arrives in pieces) and ``send`` (the
status, then the body). Middleware wraps the app and may watch or change either channel. :class:`Guard`
watches ``receive`` to stop a body over the limit as soon as it passes the limit (a 20 MB upload is never
held in memory), and ``send`` to count every response's status for ``/metrics``.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException

from .metrics import ServerMetrics
from .protocol import APIError


class BodyTooLarge(HTTPException):
    """A body over the limit: raised before the app runs (a ``Content-Length`` that says so) or while it reads
    the body (a chunked upload, whose size is known only as it arrives). An ``HTTPException``, so that FastAPI,
    reading the body, passes it on as it is rather than as a 400 'error parsing the body'."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than this server's limit of {limit:,} bytes")


class Guard:
    """ASGI middleware around the app: refuses bodies over the limit (413) and counts responses by status."""

    def __init__(self, app, max_body_bytes: int, metrics: ServerMetrics):
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, started = self.max_body_bytes, False

        async def counted_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self.metrics.requests.labels(str(message["status"])).inc()
            await send(message)

        declared = dict(scope.get("headers", [])).get(b"content-length")
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise BodyTooLarge(limit)
            await self.app(scope, limited_receive, counted_send)
        except BodyTooLarge as error:
            if started:
                raise
            await _drain(receive, 64 * limit)  # read what the client is still sending, so that it sees the answer
            await _send_json(counted_send, 413, APIError(413, error.detail, "request_too_large").body())


async def _drain(receive, at_most: int) -> None:
    """Read and drop the rest of a request body (up to ``at_most`` bytes)."""
    seen = 0
    while seen <= at_most:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
