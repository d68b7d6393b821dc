"""The tokenizer's side of a conversation: template markers, stop tokens, streaming text, the chat loop.

A conversation is rendered as text by a chat template (:func:`llama_from_scratch.chat.render_chat`);
this module turns it into token ids and the model's answer back into text:

* :func:`special_texts`: the ``bos_token`` / ``eos_token`` strings a template writes;
* :func:`encode_chat`: a rendered conversation to ids, the markers written in it becoming their ids;
* :func:`chat_stop_tokens`: the ids that end an answer (EOS, or Llama 3's ``<|eot_id|>``);
* :func:`decode_stream` (and :class:`StreamDecoder`, its push form): generated ids to text pieces. Streaming
  text is subtler than streaming tokens: one character may span several tokens (an emoji is four bytes, often
  four byte tokens), so it decodes everything generated so far and emits only the new, complete text;
* :func:`chat`: the conversation loop, read a question, stream the answer, repeat.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Protocol

from ..chat import render_chat
from ..generate import GenerationConfig, generate_stream
from ..model import Llama
from .byte_bpe import ByteLevelBPE
from .tiktoken_file import LLAMA3_END_OF_TURN_TOKENS
from .tokenizer import Tokenizer, token_text


def special_texts(tokenizer: Tokenizer) -> dict[str, str]:
    """``{"bos_token": "<s>", "eos_token": "</s>"}``: the variables templates use for the tokenizer's markers."""
    ids = {"bos_token": tokenizer.bos_id, "eos_token": tokenizer.eos_id}
    return {name: token_text(tokenizer, i) for name, i in ids.items() if i is not None}


def chat_stop_tokens(tokenizer: Tokenizer) -> list[int]:
    """The ids that end an answer: EOS, and Llama 3's end-of-turn tokens where the vocabulary has them.

    A Llama 3 tokenizer read from Meta's ``tokenizer.model`` has ``<|end_of_text|>`` as its EOS, the end of
    a document, which an instruct model never writes at the end of an answer: it writes ``<|eot_id|>``.
    Stopping at EOS alone would let the answer run on into a turn the model invents for the user.
    """
    special = tokenizer.special_tokens if isinstance(tokenizer, ByteLevelBPE) else {}
    ids = [tokenizer.eos_id, *(special.get(text) for text in LLAMA3_END_OF_TURN_TOKENS)]
    return list(dict.fromkeys(i for i in ids if i is not None))  # in order, each once


def encode_chat(tokenizer: Tokenizer, text: str) -> list[int]:
    """The token ids of a rendered conversation: BOS and EOS written in the text become their ids.

    A byte-level BPE tokenizer matches its special tokens itself; a SentencePiece one would spell
    ``<s>`` as three characters, so the text is cut at those markers and each piece between them is
    encoded alone, which is how Meta's code encodes the turns of a Llama 2 conversation.
    """
    markers = {token_text(tokenizer, i): i for i in (tokenizer.bos_id, tokenizer.eos_id) if i is not None}
    if not markers or not any(m in text for m in markers):
        return tokenizer.encode(text)
    ids: list[int] = []
    for piece in re.split("(" + "|".join(re.escape(m) for m in markers) + ")", text):
        if piece in markers:
            ids.append(markers[piece])
        elif piece:
            ids.extend(tokenizer.encode(piece))
    return ids


def chat_prompt(tokenizer: Tokenizer, template: str, messages: list[dict[str, str]]) -> list[int]:
    """The token ids a chat model answers: ``messages`` rendered in ``template`` with the generation prompt."""
    return encode_chat(tokenizer, render_chat(template, messages, **special_texts(tokenizer)))


class StreamDecoder:
    """Generated ids to text, one id at a time, never splitting a character (the push form of :func:`decode_stream`).

    ``push(token)`` returns the new, complete text, or None while the last character is incomplete: one
    character may span several tokens (an emoji is four bytes, often four byte tokens), so it decodes
    everything generated so far and hands out only what is new. ``context``: the tokens before the stream
    (the prompt). The last of them is decoded along with the new ones and its text removed again, because a
    SentencePiece decoder drops the space at the start of a text: without it, a continuation "▁foul" would
    print as "foul". A server, which receives tokens from its engine rather than pulling them, uses this.
    """

    def __init__(self, tokenizer: Tokenizer, context: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.ids: list[int] = list(context[-1:])
        self.shown = tokenizer.decode(self.ids)

    def push(self, token: int) -> str | None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return None  # an incomplete UTF-8 character: wait for its remaining bytes
        piece, self.shown = text[len(self.shown) :], text
        return piece


def decode_stream(tokenizer: Tokenizer, tokens: Iterable[int], context: Sequence[int] = ()) -> Iterator[str]:
    """Turn a stream of token ids into a stream of text pieces, never splitting a character (:class:`StreamDecoder`)."""
    decoder = StreamDecoder(tokenizer, context)
    for token in tokens:
        piece = decoder.push(token)
        if piece is not None:
            yield piece


CHAT_ANSWER = GenerationConfig(max_new_tokens=256)  # :func:`chat`'s default: greedy answers of up to 256 tokens


class ChatModel(Protocol):
    """What :func:`chat` talks to: a model, its tokenizer and its chat template, as ``load_pretrained`` gives them."""

    model: Llama
    tokenizer: Tokenizer
    chat_template: str | None


def chat(
    pretrained: ChatModel,
    read: Callable[[], str | None],
    write: Callable[[str], None],
    config: GenerationConfig = CHAT_ANSWER,
    compile: bool = False,
) -> list[dict[str, str]]:
    """A conversation: read a user turn, stream the answer, repeat until ``read`` returns None or "".

    The whole conversation is re-rendered through the template at every turn,
    so the model sees every earlier question and answer. Each answer is decoded by ``config``, up to the
    room left in the context and to the chat's stop tokens (:func:`chat_stop_tokens`). ``compile=True``
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
        prompt = chat_prompt(tokenizer, pretrained.chat_template, messages)
        if not prompt:
            source = getattr(pretrained.chat_template, "source", "")
            raise ValueError(f"{source + ': ' if source else ''}the chat template renders the conversation as nothing")
        room = model.config.max_seq_len - len(prompt)
        if room <= 0:
            raise ValueError(
                f"the conversation ({len(prompt)} tokens) has filled the context of {model.config.max_seq_len} tokens"
            )
        turn = replace(
            config,
            max_new_tokens=min(config.max_new_tokens, room),
            stop_tokens=config.stop_tokens | set(chat_stop_tokens(tokenizer)),
        )
        stream = generate_stream(model, prompt, turn, compile=compile)
        answer = ""
        for piece in decode_stream(tokenizer, stream, context=prompt):
            answer += piece
            write(piece)
        write("\n")
        messages.append({"role": "assistant", "content": answer})
