"""Chat templates, streamed text, the conversation loop, and the generate/chat command lines."""

import subprocess
import sys

import pytest

from helpers import random_llama
from llama_from_scratch import LlamaConfig, train_bpe
from llama_from_scratch.chat import render_chat
from llama_from_scratch.checkpoints import Pretrained, load_pretrained, save_checkpoint
from llama_from_scratch.generate import GenerationConfig
from llama_from_scratch.tokenization.chat import chat, decode_stream

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(TEXT + "héllo wörld ☃ 🦙", vocab_size=300)


def test_render_chat_fills_the_template():
    text = render_chat(CHATML, [{"role": "user", "content": "Hi"}])
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert not render_chat(CHATML, [{"role": "user", "content": "Hi"}], add_generation_prompt=False).endswith(
        "assistant\n"
    )


def test_render_chat_is_sandboxed():
    with pytest.raises(ValueError, match="SecurityError: access to attribute '__class__'"):
        render_chat("{{ messages.__class__.__mro__[1].__subclasses__() }}", [])


def test_decode_stream_never_splits_a_character(tokenizer):
    ids = tokenizer.encode("a 🐪 and a ✓")  # characters the tokenizer never saw
    assert any(tokenizer.id_to_piece(i).startswith("<0x") for i in ids)  # the emoji is spelled in byte tokens
    pieces = list(decode_stream(tokenizer, ids))
    assert "".join(pieces) == tokenizer.decode(ids)
    assert all("\ufffd" not in piece for piece in pieces)


def test_chat_keeps_the_conversation(tokenizer):
    config = LlamaConfig(dim=32, n_layers=1, n_heads=2, vocab_size=tokenizer.vocab_size, hidden_dim=64, max_seq_len=512)
    pretrained = Pretrained(random_llama(config), tokenizer, CHATML)
    questions = iter(["To be?", "Or not?", ""])
    written: list[str] = []
    messages = chat(pretrained, lambda: next(questions), written.append, GenerationConfig(5))
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert "".join(written).count("\n") >= 2  # each answer ends its line
    with pytest.raises(ValueError, match="no chat template"):
        chat(Pretrained(pretrained.model, tokenizer, None), lambda: "hi", written.append)


@pytest.mark.slow
def test_generate_command_on_a_training_checkpoint(tmp_path, tokenizer):
    config = LlamaConfig(dim=32, n_layers=1, n_heads=2, vocab_size=tokenizer.vocab_size, hidden_dim=64)
    save_checkpoint(random_llama(config), tokenizer, tmp_path / "step-0000001")
    (tmp_path / "latest").write_text("step-0000001\n")
    pretrained = load_pretrained(tmp_path)
    assert pretrained.tokenizer.vocab_size == tokenizer.vocab_size and pretrained.chat_template is None
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "llama_from_scratch",
            "generate",
            "--checkpoint",
            str(tmp_path),
            "--prompt",
            "To be",
            "--max-new-tokens",
            "8",
            "--seed",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("To be") and len(result.stdout) > len("To be\n")


@pytest.mark.slow
def test_commands_report_bad_input_without_a_traceback(tmp_path):
    for command in (
        ["generate", "--checkpoint", str(tmp_path / "nope"), "--prompt", "x"],
        ["chat", "--checkpoint", str(tmp_path / "nope")],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "llama_from_scratch", *command], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 1 and result.stderr.startswith("error:"), result.stderr


def test_decode_stream_keeps_the_space_before_a_continuation(tokenizer):
    prompt = tokenizer.encode("To be,")
    continuation = tokenizer.encode("To be, or not")[len(prompt) :]
    assert tokenizer.decode(continuation) == "or not"  # decoded alone, the leading space is dropped
    assert "".join(decode_stream(tokenizer, continuation, context=prompt)) == " or not"
