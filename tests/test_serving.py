"""Chapter 15's engine: the paged KV cache, prefix caching, continuous batching, preemption, cancellation.

The model is the tiny preset in float64, so that batching, paging and recomputing, which only change the
order of sums, move logits by ~1e-15 and never flip a greedy token; a wrong position, slot or mask moves
them by ~0.1 and changes the tokens.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import random_llama

from llama_from_scratch import LlamaConfig
from llama_from_scratch.generate import GenerationConfig, generate
from llama_from_scratch.quantization import dequantize, quantize, quantized_layers
from llama_from_scratch.serving import LLMEngine, PagedKVCache, SamplingParams, StepBatch, paged_forward
from llama_from_scratch.serving import use_paged_attention

# float64 rounding is ~1e-16 relative; the logits (size ~1) are sums of a few hundred products in two orders
# (gathered blocks and masks versus a contiguous cache), so they differ by far less than 1e-10. A wrong slot,
# position or mask moves them by ~0.1.
FLOAT64_TOLERANCE = 1e-10


@pytest.fixture(scope="module")
def model():
    return random_llama(LlamaConfig.from_preset("tiny")).double()


def prompts(count: int, seed: int = 1) -> list[list[int]]:
    """``count`` prompts of different lengths (3 to 40 tokens, across block boundaries)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [3 + (11 * i) % 38 for i in range(count)]
    return [torch.randint(0, 256, (n,), generator=generator).tolist() for n in lengths]


def test_paged_attention_gives_the_contiguous_caches_logits(model):
    paged = use_paged_attention(copy.deepcopy(model))
    cache = PagedKVCache.for_model(paged, num_blocks=16)
    rows = prompts(3)
    contiguous = []
    for row in rows:  # the reference: each prompt alone, with the preallocated KVCache
        kv = model.new_kv_caches(1, len(row) + 3)
        contiguous.append([model(torch.tensor([row]), 0, kv)[0, -1]])
        for i, token in enumerate([5, 6]):
            contiguous[-1].append(model(torch.tensor([[token]]), len(row) + i, kv)[0, -1])
    for i, row in enumerate(rows):
        cache.allocate(i, row)
    got = [paged_forward(paged, cache, StepBatch.build(paged, cache, [(i, r, 0) for i, r in enumerate(rows)]))]
    for step, token in enumerate([5, 6]):  # one decode step of all three together
        work = []
        for i, row in enumerate(rows):
            tokens = row + [5, 6][: step + 1]
            cache.append_slot(i, len(tokens))
            work.append((i, tokens, len(tokens) - 1))
        got.append(paged_forward(paged, cache, StepBatch.build(paged, cache, work)))
    for step in range(3):
        expected = torch.stack([contiguous[i][step] for i in range(len(rows))])
        assert (got[step] - expected).abs().max() < FLOAT64_TOLERANCE


def test_a_prefix_cache_hit_gives_the_logits_of_a_miss(model):
    paged = use_paged_attention(copy.deepcopy(model))
    cache = PagedKVCache.for_model(paged, num_blocks=8)
    system = list(range(100, 140))  # 40 tokens: two full blocks and a half
    first, second = system + [1, 2, 3], system + [7, 8]
    assert cache.allocate("first", first) == 0
    paged_forward(paged, cache, StepBatch.build(paged, cache, [("first", first, 0)]))
    cache.commit("first", first)
    cache.free("first")  # finished: its full blocks stay cached, named by their prefix
    assert cache.allocator.num_cached == 2
    assert cache.allocate("second", second) == 32  # two blocks found: only the last 10 tokens are computed
    hit = paged_forward(paged, cache, StepBatch.build(paged, cache, [("second", second, 32)]))[0]
    miss = model(torch.tensor([second]))[0, -1]
    assert (hit - miss).abs().max() < FLOAT64_TOLERANCE
    assert cache.allocate("third", system[:16] + [9]) == 16  # shared while in use: reference counts
    assert cache.allocator.ref_count[cache.block_tables["third"][0]] == 2


def test_eviction_takes_the_least_recently_used_cached_block():
    cache = PagedKVCache(4, n_layers=1, n_kv_heads=1, head_dim=2)
    for name, start in (("old", 0), ("new", 100)):
        tokens = list(range(start, start + 17))
        cache.allocate(name, tokens)
        cache.commit(name, tokens)
        cache.free(name)
    assert cache.allocator.num_cached == 2 and len(cache.allocator.free) == 2
    cache.allocate("big", list(range(500, 548)))  # three blocks: both free ones, then the older cached one
    cache.free("big")
    assert cache.allocate("again", list(range(100, 117))) == 16  # "new" survived
    assert cache.allocate("old again", list(range(0, 17))) == 0  # "old" was evicted


def test_eight_concurrent_requests_get_the_greedy_tokens_they_get_alone(model):
    rows = prompts(8)
    alone = [generate(model, row, GenerationConfig(6 + i)) for i, row in enumerate(rows)]
    engine = LLMEngine(copy.deepcopy(model), max_num_seqs=8)
    ids = [f"r{i}" for i in range(8)]
    for i, row in enumerate(rows):
        engine.add_request(ids[i], row, SamplingParams(max_tokens=6 + i, temperature=0.0))
    got, widest = {i: [] for i in ids}, 0
    while engine.has_unfinished_requests():
        outputs = engine.step()
        widest = max(widest, len(outputs))
        for out in outputs:
            got[out.request_id] += out.token_ids
    assert [got[i] for i in ids] == alone
    assert widest == 8  # all eight shared steps


def test_an_int8_model_serves_the_greedy_tokens_of_its_dequantized_twin(model):
    # The served int8 layers multiply by their codes tile by tile and scale the outputs (Int8Linear.matmul_tile);
    # the twin multiplies by the dequantized weight (the earlier int8 path). With float64 scales both form the
    # same products q * scale up to float64 rounding: logits ~1e-15 apart, no greedy token can flip.
    int8 = quantize(copy.deepcopy(model), "int8", include_output=True).double()
    twin = dequantize(copy.deepcopy(int8))
    for layer in quantized_layers(int8).values():
        layer.tile_weights = 50 * layer.in_features + 1  # 50 output rows a tile: several, and a short last one
    rows = prompts(4)
    alone = [generate(twin, row, GenerationConfig(4)) for row in rows]
    assert LLMEngine(int8, max_num_seqs=4).generate(rows, SamplingParams(max_tokens=4, temperature=0.0)) == alone


def test_the_engine_counts_its_forward_passes_and_computed_tokens(model):
    rows, lengths = prompts(4), [5, 9, 2, 7]  # prompts of 3, 14, 25 and 36 tokens: all fit one step's budget

    def work(max_num_seqs: int, prompts: list[list[int]]) -> tuple[int, int]:
        engine = LLMEngine(copy.deepcopy(model), max_num_seqs=max_num_seqs)
        for i, (row, n) in enumerate(zip(prompts, lengths)):
            engine.add_request(i, row, SamplingParams(max_tokens=n, temperature=0.0))
        while engine.has_unfinished_requests():
            engine.step()
        return engine.num_steps, engine.num_computed_tokens

    # Each prompt token is computed once, then each new token but the last (sampled, never fed back).
    computed = sum(map(len, rows)) + sum(n - 1 for n in lengths)
    assert work(1, rows) == (sum(lengths), computed)  # one at a time: a forward pass per token
    assert work(4, rows) == (max(lengths), computed)  # together: a forward pass per token of the longest
    # The same prompts after a shared 40-token prefix, one at a time: the first computes all of it; the later
    # ones find its two full blocks (32 tokens) in the prefix cache.
    shared = [list(range(100, 140)) + row for row in rows]
    assert work(1, shared) == (sum(lengths), computed + 40 + 3 * (40 - 32))


def test_static_batching_admits_a_batch_only_when_the_last_has_finished(model):
    rows = prompts(6)
    alone = [generate(model, row, GenerationConfig(3 + 2 * i)) for i, row in enumerate(rows)]
    engine = LLMEngine(copy.deepcopy(model), max_num_seqs=4, batching="static")
    for i, row in enumerate(rows):
        engine.add_request(f"r{i}", row, SamplingParams(max_tokens=3 + 2 * i, temperature=0.0))
    got, widths = {f"r{i}": [] for i in range(6)}, []
    while engine.has_unfinished_requests():
        outputs = engine.step()
        widths.append(len(outputs))
        for out in outputs:
            got[out.request_id] += out.token_ids
    assert list(got.values()) == alone
    # the first four run 3, 5, 7, 9 steps: 4, 4, 4, 3, 3, 2, 2, 1, 1 wide; then r4 and r5 (11 and 13 tokens) start
    assert widths == [4, 4, 4, 3, 3, 2, 2, 1, 1] + [2] * 11 + [1] * 2


def test_preemption_and_recompute_give_the_uninterrupted_tokens(model):
    rows = prompts(4)
    alone = [generate(model, row, GenerationConfig(20)) for row in rows]
    # 6 blocks (96 tokens) for four requests that grow to 23, 34, 45 and 56 tokens (12 blocks): some are preempted.
    engine = LLMEngine(copy.deepcopy(model), num_blocks=6, max_num_seqs=4)
    assert engine.generate(rows, SamplingParams(max_tokens=20, temperature=0.0)) == alone
    assert engine.scheduler.num_preemptions > 0
    assert engine.cache.allocator.num_in_use == 0


def test_blocks_are_held_only_for_stored_tokens_and_freed_when_a_sequence_ends(model):
    # After every step each running sequence has stored num_computed tokens and holds exactly the blocks they
    # fill, ceil(num_computed / 16): none allocated ahead of need, none kept by a finished or preempted one.
    # 7 blocks (112 tokens) for eight requests that store up to 46 tokens each: some are preempted on the way.
    engine = LLMEngine(copy.deepcopy(model), num_blocks=7, max_num_seqs=8, enable_prefix_caching=False)
    for i, row in enumerate(prompts(8)):
        engine.add_request(f"r{i}", row, SamplingParams(max_tokens=4 + 2 * i, temperature=0.0))
    while engine.has_unfinished_requests():
        engine.step()
        running = engine.scheduler.running
        assert engine.cache.allocator.num_in_use == sum(engine.cache.blocks_for(s.num_computed) for s in running)
        assert set(engine.cache.block_tables) == {s.request_id for s in running}
    assert engine.scheduler.num_preemptions > 0 and engine.cache.allocator.num_in_use == 0


def test_a_seeded_request_samples_the_same_tokens_whoever_shares_its_steps(model):
    params = SamplingParams(max_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    alone = LLMEngine(copy.deepcopy(model)).generate(prompts(1), params)[0]
    together = LLMEngine(copy.deepcopy(model)).generate(prompts(3), params)[0]
    assert together == alone


def test_cancellation_returns_every_block(model):
    engine = LLMEngine(copy.deepcopy(model), num_blocks=20, max_num_seqs=4)
    rows = prompts(6)
    for i, row in enumerate(rows):
        engine.add_request(f"r{i}", row, SamplingParams(max_tokens=40, temperature=0.0))
    for _ in range(3):
        engine.step()
    assert engine.cache.allocator.num_in_use > 0 and len(engine.scheduler.running) == 4
    for i in range(6):
        engine.abort(f"r{i}")  # running ones and waiting ones
    allocator = engine.cache.allocator
    assert not engine.has_unfinished_requests() and allocator.num_in_use == 0
    assert sorted([*allocator.free, *allocator.evictable]) == list(range(20)) and set(allocator.ref_count) == {0}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"temperature": -1.0}, "temperature must be a finite number >= 0"),
        ({"top_p": 2.0}, "top_p must be None or a number in (0, 1]"),
        ({"max_tokens": 10**9}, "prompt (5 tokens) + max_new_tokens (1000000000) exceeds the model's context"),
        ({"max_tokens": 0}, "max_tokens must be >= 1"),
        ({"stop": ("",)}, "stop must be at most 4 non-empty strings"),
    ],
)
def test_bad_settings_are_refused_when_the_request_arrives(model, settings, message):
    engine = LLMEngine(copy.deepcopy(model), num_blocks=8)
    with pytest.raises(ValueError) as raised:
        engine.add_request("x", [1, 2, 3, 4, 5], SamplingParams(**settings))
    assert message in str(raised.value)
    assert not engine.has_unfinished_requests()


def test_a_stop_string_cuts_the_text_before_it_even_across_pieces():
    from test_evaluation import byte_tokenizer, tiny_model

    from llama_from_scratch.tokenization.chat import decode_stream

    tokenizer, model = byte_tokenizer(), tiny_model(torch.float64)
    prompt = tokenizer.encode("ROMEO:", bos=True)
    full = "".join(decode_stream(tokenizer, generate(model, prompt, GenerationConfig(20)), prompt))  # greedy, no stop
    stop = full[6:9]  # three characters, so pieces of one byte each must be held back until they rule it out
    engine = LLMEngine(model, tokenizer)
    engine.add_request("r", prompt, SamplingParams(max_tokens=20, temperature=0.0, stop=(stop,)))
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    assert "".join(o.text for o in outputs) == full[: full.find(stop)]
    assert outputs[-1].finish_reason == "stop" and engine.cache.allocator.num_in_use == 0


def test_a_second_engine_refuses_a_model_the_first_owns(model):
    owned = copy.deepcopy(model)
    LLMEngine(owned)
    with pytest.raises(ValueError, match="paged already"):
        LLMEngine(owned)
