"""The OpenAI API's shapes: request bodies (checked by pydantic), responses, stream chunks and error bodies.

Any OpenAI client (the ``openai`` package, LangChain, a chat front end) can talk to a server that speaks
these shapes. Only the fields the course's engine can honour are read; unknown ones are ignored, as
OpenAI-compatible servers (vLLM, llama.cpp's) do. A body of the wrong *shape* (a missing field, a string
where a number goes) is refused by pydantic with 422; a well-formed setting the engine cannot use
(``temperature`` -1) is refused by the engine's own checks with 400, so each rule lives in one place.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")  # strict: "5" is not a number, true is not 1


class StreamOptions(_Body):
    include_usage: bool = False  # a last chunk with the token counts (and no choices)


class SamplingFields(_Body):
    """The settings both endpoints take (``n`` other than 1 is refused: one answer per request)."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None  # not OpenAI's, but vLLM's and llama.cpp's
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(SamplingFields):
    prompt: str


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """An error the server answers with ``status`` and :func:`error_body` (``code`` as OpenAI names it)."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict:
        kind = ERROR_TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return error_body(self.message, kind, self.code, self.param)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_response(request_id: str, model: str, chat: bool, text: str, finish_reason: str | None,
                        prompt_tokens: int, completion_tokens: int) -> dict:
    """The whole answer: a ``chat.completion`` or a ``text_completion``."""
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason,
                  "logprobs": None}
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
    return {"id": request_id, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": usage(prompt_tokens, completion_tokens)}


def usage_chunk(request_id: str, model: str, chat: bool, prompt_tokens: int, completion_tokens: int) -> dict:
    """The last chunk of a stream asked for with ``stream_options: {"include_usage": true}``: no choices, the counts."""
    return {"id": request_id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def stream_chunk(request_id: str, model: str, chat: bool, text: str | None, finish_reason: str | None,
                 role: bool = False) -> dict:
    """One server-sent event's data: a ``chat.completion.chunk`` (a ``delta``) or a ``text_completion`` piece."""
    if chat:
        delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text is not None else {})
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
    return {"id": request_id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice]}
