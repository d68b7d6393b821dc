"""Chat templates: the text format a chat model was fine-tuned on, and rendering a conversation in it.

A chat model was fine-tuned on conversations written in a fixed format, its
*chat template*. SmolLM2 uses ChatML::

    <|im_start|>system
    You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
    <|im_start|>user
    What is a llama?<|im_end|>
    <|im_start|>assistant

and the model answers until it produces ``<|im_end|>``. The template ships
with the checkpoint (GGUF's ``tokenizer.chat_template``, Hugging Face's
``tokenizer_config.json``; ``load_pretrained`` reads it) as a small Jinja
program; rendering it with the conversation so far gives the prompt
(:func:`render_chat`). Checkpoints without a template of their own get one of
:data:`CHAT_TEMPLATES`.

This module works on text only. Turning the rendered text into token ids, the
tokens that end an answer, streaming the answer back as text and the
conversation loop are the tokenizer's side: :mod:`.tokenization.chat`.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from datetime import datetime

MAX_RENDERED_CHARS = 4 << 20  # 4M characters, about a million tokens: eight times Llama 3.1's longest context
MAX_RENDER_SECONDS = 2.0  # a template renders in milliseconds; one that loops for seconds is hostile or broken


class ChatTemplate(str):
    """A chat template's text that remembers where it came from (``source``: the file, and the field), so that
    an error in rendering it names the file. Made by :func:`chat_template`, which compiles it first."""

    source: str = ""  # a template written in code (CHAT_TEMPLATES) comes from no file


def chat_template(text: str, source: str) -> ChatTemplate:
    """``text``, a template read from ``source`` (a checkpoint's file), compiled once to find syntax errors
    now, as a :class:`ValueError` naming ``source``, rather than at the first message."""
    template = ChatTemplate(text)
    template.source = source
    try:
        _compiled(str(template))
    except Exception as error:  # noqa: BLE001 - Jinja's syntax errors, and a template too deep to compile
        raise ValueError(f"{source}: the chat template does not compile ({_one_line(error)})") from None
    return template


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


class TemplateLimit(Exception):
    """A render went past :data:`MAX_RENDERED_CHARS` or :data:`MAX_RENDER_SECONDS`."""


def _bounded_sandbox():
    """Jinja's immutable sandbox (no file, no Python internals such as ``''.__class__``), with the arithmetic
    that can allocate without bound checked first: ``'x' * 10**11`` or ``10 ** 10**9`` is refused before it
    is computed, not after it has taken the memory."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for sequence, count in ((left, right), (right, left)):
                    if isinstance(sequence, (str, list, tuple)) and isinstance(count, int):
                        if len(sequence) * count > MAX_RENDERED_CHARS:
                            raise TemplateLimit(f"{len(sequence)} * {count} items is more than {MAX_RENDERED_CHARS:,}")
            if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
                if right * math.log2(abs(left)) > 4096:
                    raise TemplateLimit(f"{left} ** {right} has more than 4096 bits")
            return super().call_binop(context, operator, left, right)

    return BoundedSandbox


@functools.lru_cache(maxsize=32)
def _compiled(template: str):
    """The compiled template (rendered as Hugging Face does: ``trim_blocks``, ``lstrip_blocks``), with
    ``transformers``' two helpers: ``raise_exception(message)``, a template's way of refusing a conversation,
    and ``strftime_now(format)``, today's date."""
    from jinja2 import TemplateError

    def raise_exception(message):
        raise TemplateError(message)

    environment = _bounded_sandbox()(trim_blocks=True, lstrip_blocks=True)
    environment.globals.update(raise_exception=raise_exception, strftime_now=lambda f: datetime.now().strftime(f))
    return environment.from_string(template)


def _deadline(seconds: float):
    """A trace function that stops the template's own code after ``seconds``: a loop in a template runs as
    Python lines of the code Jinja compiled it to (file ``<template>``), so each of them checks the clock;
    other code is not traced."""
    end = time.monotonic() + seconds

    def line(frame, event, arg):
        if time.monotonic() > end:
            raise TemplateLimit(f"rendering took more than {seconds:g} s")
        return line

    def call(frame, event, arg):
        return line if frame.f_code.co_filename == "<template>" else None

    return call


def render_chat(template: str, messages: list[dict[str, str]], add_generation_prompt: bool = True, **variables) -> str:
    """Fill a Jinja chat template with ``messages`` (``[{"role": "user", "content": "..."}, ...]``).

    A template comes with a checkpoint from the internet, so it is foreign code, run with limits: in
    Jinja's sandbox (it cannot touch files or Python objects), for at most :data:`MAX_RENDER_SECONDS`, writing
    at most :data:`MAX_RENDERED_CHARS`. Any error (a syntax error, ``raise_exception``, an undefined name, a
    limit) is a ``ValueError`` naming the template's ``source`` (:class:`ChatTemplate`).
    """
    source = getattr(template, "source", "")
    pieces, size = [], 0
    previous = sys.gettrace()
    sys.settrace(_deadline(MAX_RENDER_SECONDS))
    try:
        compiled = _compiled(str(template))
        for piece in compiled.generate(messages=messages, add_generation_prompt=add_generation_prompt, **variables):
            size += len(piece)
            if size > MAX_RENDERED_CHARS:
                raise TemplateLimit(f"the text grew past {MAX_RENDERED_CHARS:,} characters")
            pieces.append(piece)
    except Exception as error:  # noqa: BLE001 - whatever a foreign template raises is its error
        raise ValueError(f"{source + ': ' if source else ''}the chat template failed ({_one_line(error)})") from None
    finally:
        sys.settrace(previous)
    return "".join(pieces)


# Formats written out for models whose checkpoint has no template of its own (a model trained by the
# course, a fine-tune). ChatML (OpenAI's, used by SmolLM2): every message between <|im_start|>ROLE and
# <|im_end|>. Llama 2-Chat's: each user turn in [INST] ... [/INST] after BOS, each answer followed by EOS,
# the system prompt inside the first turn between <<SYS>> markers; the text of Meta's ``chat_completion``.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA2_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set turns = messages[1:] %}{% else %}{% set system = none %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}{% if message['role'] == 'user' %}{% set content = message['content'] %}"
    "{% if loop.first and system is not none %}{% set content = '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + content %}"
    "{% endif %}{{ bos_token }}[INST] {{ content | trim }} [/INST]"
    "{% else %} {{ message['content'] | trim }} {{ eos_token }}{% endif %}{% endfor %}"
)
# Llama 3's (Meta's ``ChatFormat``): BOS once, then every message as a header naming its role between
# <|start_header_id|> and <|end_header_id|>, a blank line, the stripped content and <|eot_id|> (end of turn);
# the answer starts after an assistant header and ends with the model's own <|eot_id|>.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHAT_TEMPLATES = {"chatml": CHATML_TEMPLATE, "llama2": LLAMA2_TEMPLATE, "llama3": LLAMA3_TEMPLATE}
