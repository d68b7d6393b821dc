"""Chatting with a model: chat templates, streaming text, and the conversation loop.

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
program; rendering it with the conversation so far gives the prompt.

Streaming text is subtler than streaming tokens: one character may span
several tokens (an emoji is four bytes, often four byte tokens), so
:func:`decode_stream` decodes everything generated so far and emits only the
new, complete text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from .checkpoints.load import Pretrained
from .generate import generate_stream
from .tokenization.load import Tokenizer


def render_chat(template: str, messages: list[dict[str, str]], add_generation_prompt: bool = True, **variables) -> str:
    """Fill a Jinja chat template with ``messages`` (``[{"role": "user", "content": "..."}, ...]``).

    Rendered as Hugging Face does: a sandboxed environment (a template cannot
    touch files or Python objects), ``trim_blocks`` and ``lstrip_blocks``.
    """
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, **variables
    )


def decode_stream(tokenizer: Tokenizer, tokens: Iterable[int], context: Sequence[int] = ()) -> Iterator[str]:
    """Turn a stream of token ids into a stream of text pieces, never splitting a character.

    ``context``: the tokens before the stream (the prompt). The last of them
    is decoded along with the new ones and its text removed again, because a
    SentencePiece decoder drops the space at the start of a text: without
    it, a continuation "▁foul" would print as "foul".
    """
    ids: list[int] = list(context[-1:])
    shown = tokenizer.decode(ids)
    for token in tokens:
        ids.append(token)
        text = tokenizer.decode(ids)
        if text.endswith("\ufffd"):
            continue  # an incomplete UTF-8 character: wait for its remaining bytes
        yield text[len(shown) :]
        shown = text


def chat(
    pretrained: Pretrained,
    read: Callable[[], str | None],
    write: Callable[[str], None],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float | None = None,
    seed: int | None = None,
    compile: bool = False,
) -> list[dict[str, str]]:
    """A conversation: read a user turn, stream the answer, repeat until ``read`` returns None or "".

    The whole conversation is re-rendered through the template at every turn,
    so the model sees every earlier question and answer. ``compile=True``
    decodes with the compiled step (see :func:`~llama_from_scratch.generate.compiled_decode_step`).
    Returns the messages.
    """
    if pretrained.chat_template is None:
        raise ValueError("this checkpoint has no chat template: use `generate` for plain text continuation")
    model, tokenizer = pretrained.model, pretrained.tokenizer
    messages: list[dict[str, str]] = []
    while True:
        question = read()
        if not question:
            return messages
        messages.append({"role": "user", "content": question})
        prompt = tokenizer.encode(render_chat(pretrained.chat_template, messages))
        room = model.config.max_seq_len - len(prompt)
        if room <= 0:
            raise ValueError(
                f"the conversation ({len(prompt)} tokens) has filled the context of {model.config.max_seq_len} tokens"
            )
        stream = generate_stream(
            model,
            prompt,
            min(max_new_tokens, room),
            temperature=temperature,
            top_p=top_p,
            stop_tokens=[tokenizer.eos_id],
            seed=seed,
            compile=compile,
        )
        answer = ""
        for piece in decode_stream(tokenizer, stream, context=prompt):
            answer += piece
            write(piece)
        write("\n")
        messages.append({"role": "assistant", "content": answer})
