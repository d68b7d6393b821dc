"""Chapter 11's experiments, the package's side: the longer context and its fine-tune, the passkey prompt,
and a Llama 3 chat that ends at ``<|eot_id|>``.

The experiments themselves (perplexity against length, passkey accuracy, attention memory) are benchmark
scripts (``benchmarks/long_context_perplexity.py``, ``passkey_smollm2.py``, ``attention_memory.py``);
these tests check the pieces they are built from, on tiny models.
"""

import numpy as np
import pytest
import torch

from helpers import random_llama
from llama_from_scratch import LlamaConfig
from llama_from_scratch.chat import LLAMA3_TEMPLATE
from llama_from_scratch.checkpoints import Pretrained, load_tokenizer
from llama_from_scratch.generate import GenerationConfig
from llama_from_scratch.long_context import passkey_prompt, read_passkey
from llama_from_scratch.long_context.finetune import extend_context, finetune_long_context
from llama_from_scratch.long_context.passkey import FILLER, INTRO, KEY_LINE, QUESTION
from llama_from_scratch.rope_scaling import RopeScaling
from llama_from_scratch.tokenization.chat import chat, chat_stop_tokens
from llama_from_scratch.tokenization.tiktoken_file import write_tiktoken_file
from llama_from_scratch.training.dataset import TokenData
from llama_from_scratch.training.train import TrainConfig

TINY = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=16, max_seq_len=16)


# -- a longer context ------------------------------------------------------------------------------------------------


def test_extend_context_keeps_the_weights_and_reaches_further():
    model = random_llama(TINY)
    tokens = torch.randint(0, TINY.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    before = model(tokens[:, :16])
    with pytest.raises(ValueError, match="max_seq_len=16"):
        model(tokens)
    weights = [p.data_ptr() for p in model.parameters()]
    assert extend_context(model, 32, None) is model
    assert [p.data_ptr() for p in model.parameters()] == weights
    # Plain RoPE computes the same angles for positions 0..15 whatever the context: the same operations on
    # the same numbers, so the same bits.
    assert torch.equal(model(tokens[:, :16]), before)
    assert model(tokens).shape == (1, 32, TINY.vocab_size)


def test_extend_context_scales_rope_from_the_config():
    model = random_llama(TINY)
    tokens = torch.randint(0, TINY.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    plain = model(tokens)
    extend_context(model, 32, RopeScaling("linear", factor=2.0))
    assert model.config.rope_scaling == RopeScaling("linear", factor=2.0) and model.config.max_seq_len == 32
    assert not torch.allclose(model(tokens), plain)  # the positions now turn half as fast
    with pytest.raises(ValueError, match="max_seq_len"):
        extend_context(model, 0, None)


def periodic_data(period: int, length: int, vocab_size: int) -> TokenData:
    """Random tokens repeating every ``period``: only a context longer than ``period`` can predict them."""
    pattern = np.random.default_rng(0).integers(0, vocab_size, period)
    return TokenData(np.resize(pattern, length).astype(np.uint16), n_bytes=length)


def test_finetune_long_context_trains_past_the_original_context():
    # The period (24) exceeds the original context (16): the model must read the longer windows to learn it.
    data = periodic_data(24, 4000, TINY.vocab_size)
    model = random_llama(TINY)
    scaling = RopeScaling("linear", factor=2.0)
    config = TrainConfig(
        steps=40, batch_size=4, seq_len=32, lr=1e-2, min_lr=1e-3, warmup_steps=4, eval_every=40, eval_batches=2
    )
    history = finetune_long_context(model, data, data, scaling, config)
    assert model.config.max_seq_len == 32 and model.config.rope_scaling == scaling
    assert len(history) == 40 and "val_loss" in history[-1]
    # From about ln(64) = 4.2 nats for random weights to well below: the repeats are learnt. (Copying needs
    # attention over more than 16 positions; a model limited to 16 could not train on these windows at all.)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]


# -- the passkey prompt ----------------------------------------------------------------------------------------------


def encode(text: str) -> list[int]:
    """A byte tokenizer: one token per UTF-8 byte (enough to count and place tokens exactly)."""
    return list(text.encode())


@pytest.mark.parametrize("n_tokens", [1000, 2048])
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 1.0])
def test_passkey_prompt_hides_the_key_at_the_depth(n_tokens, depth):
    prompt = passkey_prompt(encode, n_tokens, depth, "71432")
    text = bytes(prompt.tokens).decode()
    filler, key = len(encode(FILLER)), encode(KEY_LINE.format(key="71432"))
    assert n_tokens - filler < len(prompt.tokens) <= n_tokens
    assert text.startswith(INTRO) and text.endswith(QUESTION) and text.count("71432") == 2
    assert prompt.tokens[prompt.key_position : prompt.key_position + len(key)] == key
    before = (prompt.key_position - len(encode(INTRO))) // filler
    after = (len(prompt.tokens) - prompt.key_position - len(key) - len(encode(QUESTION))) // filler
    assert before == round(depth * (before + after))
    assert text == INTRO + FILLER * before + KEY_LINE.format(key="71432") + FILLER * after + QUESTION


def test_passkey_prompt_puts_the_prefix_first():
    prompt = passkey_prompt(encode, 500, 0.5, "12345", prefix=[255])
    assert prompt.tokens[0] == 255 and bytes(prompt.tokens[1:]).decode().startswith(INTRO)


@pytest.mark.parametrize(
    "args, message",
    [
        ((1000, 1.5, "12345"), "depth must be a number from 0 to 1"),
        ((1000, 0.5, "12a45"), "passkey must be a string of digits"),
        ((200, 0.5, "12345"), "needs at least"),
    ],
)
def test_passkey_prompt_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        passkey_prompt(encode, *args)


@pytest.mark.parametrize(
    "answer, expected",
    [(" 71432. Remember it.", "71432"), ("71432", "71432"), (" 714321.", None), (" 7143.", None), ("no key", None)],
)
def test_read_passkey(answer, expected):
    assert read_passkey(answer) == expected


# -- Llama 3's end of turn -------------------------------------------------------------------------------------------


@pytest.fixture
def llama3_tokenizer(tmp_path):
    """Meta's tokenizer format with the 256 single bytes as its only ranked tokens, then Llama 3's specials."""
    write_tiktoken_file({bytes([b]): b for b in range(256)}, tmp_path / "tokenizer.model")
    return load_tokenizer(tmp_path / "tokenizer.model")


def test_llama3_chat_stops_at_eot(llama3_tokenizer):
    tokenizer = llama3_tokenizer
    eot, eom = tokenizer.special_tokens["<|eot_id|>"], tokenizer.special_tokens["<|eom_id|>"]
    assert tokenizer.eos_id == tokenizer.special_tokens["<|end_of_text|>"]  # a base tokenizer's EOS
    assert chat_stop_tokens(tokenizer) == [tokenizer.eos_id, eot, eom]
    # A model that always answers <|eot_id|>: no attention or feed-forward output, every embedding along
    # the first axis, and an output head that scores only <|eot_id|> on that axis (positive after the norm).
    config = LlamaConfig(
        dim=16, n_layers=1, n_heads=2, vocab_size=tokenizer.vocab_size, multiple_of=16, max_seq_len=128
    )
    model = random_llama(config)
    with torch.no_grad():
        model.layers[0].attention.wo.weight.zero_()
        model.layers[0].feed_forward.w2.weight.zero_()
        model.tok_embeddings.weight.zero_()[:, 0] = 1.0
        model.norm.weight.fill_(1.0)
        model.output.weight.zero_()[eot, 0] = 1.0
    written = []
    questions = iter(["Hi!", None])
    messages = chat(Pretrained(model, tokenizer, LLAMA3_TEMPLATE), lambda: next(questions), written.append, GenerationConfig(8))
    assert messages == [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": ""}]
    assert written == ["\n"]  # stopping only at <|end_of_text|>, the answer would be "<|eot_id|>" eight times
