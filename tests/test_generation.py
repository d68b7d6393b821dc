"""KV cache and decoding: the cached path gives the full-forward logits and the same tokens."""

import pytest
import torch

from helpers import random_llama
from llama_from_scratch import (
    GenerationConfig,
    KVCache,
    Llama,
    LlamaConfig,
    decode_one_token,
    generate,
    generate_stream,
    next_token_probabilities,
    prefill,
    sample_next_token,
)

CONFIG = LlamaConfig(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=101, hidden_dim=144, max_seq_len=64)


@pytest.fixture(scope="module")
def model() -> Llama:
    return random_llama(CONFIG)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_prefill_then_decode_equals_full_forward(n_kv_heads):
    # In float64: the cached and the full pass add up attention in different orders, and float64 rounding
    # (2.2e-16 relative, on logits below 100 and sums of at most a few hundred terms) stays far below 1e-10.
    model = random_llama(CONFIG.replace(n_kv_heads=n_kv_heads)).double()
    tokens = torch.randint(0, 101, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(tokens)
        caches = model.new_kv_caches(batch_size=2, max_seq_len=40)
        steps = [model(tokens[:, :17], 0, caches)]  # prefill the prompt
        steps.append(model(tokens[:, 17:20], 17, caches))  # a chunk of three
        steps += [model(tokens[:, i : i + 1], i, caches) for i in range(20, 40)]  # then one token at a time
    assert (torch.cat(steps, dim=1) - full).abs().max() <= 1e-10


def test_cache_holds_key_value_heads_only(model):
    caches = model.new_kv_caches(batch_size=3, max_seq_len=20)
    assert len(caches) == CONFIG.n_layers
    assert caches[0].k.shape == (3, CONFIG.n_kv_heads, 20, CONFIG.head_dim)  # 2 kv heads, not 4 query heads
    assert caches[0].v.shape == caches[0].k.shape


def test_cache_overflow_is_a_clear_error():
    cache = KVCache(batch_size=1, max_seq_len=4, n_kv_heads=1, head_dim=2)
    with pytest.raises(ValueError, match="holds 4 positions"):
        cache.update(3, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


def test_greedy_generation_is_identical_with_and_without_cache(model):
    prompt = [5, 17, 3, 99, 42]
    with_cache = generate(model, prompt, GenerationConfig(30))
    without = generate(model, prompt, GenerationConfig(30), use_cache=False)
    assert len(with_cache) == 30
    assert with_cache == without


@pytest.mark.slow
def test_compiled_decoding_gives_the_eager_tokens_without_recompiling():
    """torch.compile'd decode steps: same greedy tokens, and one compiled graph serves every cache length."""
    torch._dynamo.reset()  # forgets compiled code, but not the counters: an earlier compile in this process
    torch._dynamo.utils.counters.clear()  # (another test file on the same pytest worker) would be counted too
    model = random_llama(CONFIG)
    prompts = ([5, 17, 3, 99, 42], [8, 1, 64], [2, 30, 30, 7, 1, 9, 77])
    eager = [generate(model, prompt, GenerationConfig(n)) for prompt, n in zip(prompts, (30, 12, 21))]
    compiled = [generate(model, prompt, GenerationConfig(n), compile=True) for prompt, n in zip(prompts, (30, 12, 21))]
    assert compiled == eager
    # Three calls with three cache lengths and many positions: a recompile would count a second frame.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    with pytest.raises(ValueError, match="use_cache=True"):
        generate(model, [1, 2], GenerationConfig(4), compile=True, use_cache=False)


def test_generation_continues_the_models_own_argmax(model):
    prompt = [1, 2, 3]
    tokens = generate(model, prompt, GenerationConfig(5))
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens[:-1]]))[0]
    assert logits[len(prompt) - 1 :].argmax(-1).tolist() == tokens


def test_streaming_yields_the_same_tokens(model):
    stream = generate_stream(model, [7, 8, 9], GenerationConfig(12, temperature=0.8, top_k=20, seed=3))
    assert list(stream) == generate(model, [7, 8, 9], GenerationConfig(12, temperature=0.8, top_k=20, seed=3))


def test_seeded_sampling_is_reproducible_and_seeds_differ(model):
    runs = [generate(model, [4, 5], GenerationConfig(20, temperature=1.0, top_p=0.95, seed=s)) for s in (0, 0, 1)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_stop_token_ends_generation_and_is_not_returned(model):
    free = generate(model, [10, 11], GenerationConfig(20))
    stop = free[5]
    stopped = generate(model, [10, 11], GenerationConfig(20, stop_tokens=[stop]))
    assert stopped == free[: free.index(stop)]


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]))
    top2 = next_token_probabilities(logits, top_k=2)
    torch.testing.assert_close(top2, torch.tensor([5 / 7, 2 / 7, 0, 0, 0]))
    # top-p 0.8: 0.5 + 0.2 = 0.7 < 0.8, so 0.15 is needed too; 0.1 is not.
    nucleus = next_token_probabilities(logits, top_p=0.8)
    torch.testing.assert_close(nucleus, torch.tensor([0.5, 0.2, 0.15, 0, 0]) / 0.85)
    hot = next_token_probabilities(logits, temperature=2.0)
    assert hot[0] < 0.5 and hot[-1] > 0.05  # a higher temperature flattens the distribution
    assert sample_next_token(logits) == 0  # temperature 0 is greedy


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"max_new_tokens": 2.0}, "max_new_tokens"),
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_invalid_generation_settings_raise_when_the_config_is_made(settings, message):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(**{"max_new_tokens": 4, **settings})


@pytest.mark.parametrize(
    ("prompt", "max_new_tokens", "message"),
    [([], 4, "empty"), ([1, 500], 4, r"\[0, 101\)"), ([1, 2], 100, "max_seq_len=64")],
)
def test_invalid_prompt_raises_at_the_call(model, prompt, max_new_tokens, message):
    with pytest.raises(ValueError, match=message):
        generate_stream(model, prompt, GenerationConfig(max_new_tokens))  # raises before the first token is asked for


@pytest.mark.parametrize(
    ("tokens", "start_pos", "message"),
    [
        (torch.zeros(1, 65, dtype=torch.long), 0, "max_seq_len=64"),
        (torch.zeros(1, 2, dtype=torch.long), 63, "max_seq_len=64"),
        (torch.zeros(5, dtype=torch.long), 0, r"\(batch, seq\)"),
        (torch.zeros(1, 3), 0, "int64"),
        (torch.full((1, 3), 101), 0, "token ids"),
        (torch.zeros(1, 0, dtype=torch.long), 0, "empty"),
    ],
)
def test_bad_model_input_is_a_clear_error(model, tokens, start_pos, message):
    with pytest.raises(ValueError, match=message):
        model(tokens, start_pos)


def test_prefill_and_decode_one_token_are_the_steps_of_generate(model):
    prompt = torch.tensor([[5, 17, 3, 99, 42]])
    tokens = generate(model, prompt[0], GenerationConfig(6))
    with torch.no_grad():
        cache = model.new_kv_caches(1, 11)
        logits = prefill(model, prompt, cache)
        by_steps = [int(logits.argmax())]
        for pos in range(5, 10):
            logits = decode_one_token(model, torch.tensor([[by_steps[-1]]]), pos, cache)
            by_steps.append(int(logits.argmax()))
    assert by_steps == tokens


def test_forward_reads_no_token_values_off_the_cpu():
    """On an accelerator, reading the ids back to check their range would stall every step: the check runs on
    the CPU only. The meta device (shapes, no values) stands in for a GPU here: any value read would fail."""
    with torch.device("meta"):
        model = Llama(CONFIG)
        logits = model(torch.zeros(2, 7, dtype=torch.long))
    assert logits.shape == (2, 7, CONFIG.vocab_size) and logits.device.type == "meta"
