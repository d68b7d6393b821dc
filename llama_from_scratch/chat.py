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
