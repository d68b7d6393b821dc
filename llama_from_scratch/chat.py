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

import re
from collections.abc import Callable, Iterable, Iterator, Sequence

from .checkpoints.load import Pretrained
from .generate import generate_stream
from .tokenization.byte_bpe import ByteLevelBPE
from .tokenization.load import Tokenizer, token_text
from .tokenization.tiktoken_file import LLAMA3_END_OF_TURN_TOKENS


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
        prompt = encode_chat(tokenizer, render_chat(pretrained.chat_template, messages, **special_texts(tokenizer)))
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
            stop_tokens=chat_stop_tokens(tokenizer),
            seed=seed,
            compile=compile,
        )
        answer = ""
        for piece in decode_stream(tokenizer, stream, context=prompt):
            answer += piece
            write(piece)
        write("\n")
        messages.append({"role": "assistant", "content": answer})
