"""Batched generation with left padding, and speculative decoding: faster, and the same tokens."""

import pytest
import torch

from helpers import assert_same_logits, float32_rounding, random_llama
from llama_from_scratch import GenerationConfig, LlamaConfig, generate
from llama_from_scratch.attention import padded_causal_mask
from llama_from_scratch.generate import generate_batch, left_pad
from llama_from_scratch.speculative import layer_skip_draft, prompt_lookup, speculative_generate

CONFIG = LlamaConfig(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=101, hidden_dim=144, max_seq_len=96)
PROMPTS = [[5, 17, 3, 99, 42], [1, 2], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]]


@pytest.fixture(scope="module")
def model():
    return random_llama(CONFIG)


def test_left_pad_puts_every_prompt_at_the_end():
    tokens, mask = left_pad(PROMPTS, pad_id=0)
    assert tokens.shape == mask.shape == (3, 13)
    assert tokens[1].tolist() == [0] * 11 + [1, 2]
    assert mask[1].tolist() == [False] * 11 + [True, True]
    assert mask.sum(dim=1).tolist() == [5, 2, 13]
    with pytest.raises(ValueError, match="no empty prompt"):
        left_pad([[1], []])


def test_padded_mask_hides_padding_and_lets_padding_see_itself():
    _, mask = left_pad([[4, 5, 6], [7]])
    allowed = padded_causal_mask(mask, seq=3)[:, 0]  # (batch, seq, kv_seq)
    assert allowed[0].tolist() == torch.tril(torch.ones(3, 3, dtype=torch.bool)).tolist()  # no padding: causal
    assert allowed[1].tolist() == [[True, False, False], [False, True, False], [False, False, True]]


def test_left_padded_batch_gives_each_prompts_logits(model):
    tokens, mask = left_pad(PROMPTS, pad_id=0)
    with torch.no_grad():
        batched = model(tokens, 0, None, mask)
    for row, prompt in enumerate(PROMPTS):
        pad = tokens.shape[1] - len(prompt)
        alone = torch.tensor([prompt])
        with torch.no_grad():
            # The row's text sits at positions pad, pad + 1, ...: run it alone at those positions, so that both
            # sides use the same RoPE tables (the shift itself is chapter 03's relative-offset invariance).
            expected = model(alone, pad)[0]
        # Two float32 computations of one function (a batch of 3 with masked columns, and one row alone)
        # differ by rounding only: assert_same_logits allows 4x the measured float32 rounding.
        assert_same_logits(batched[row, pad:], expected, float32_rounding(model, alone))
        assert torch.isfinite(batched[row]).all()  # padding queries see themselves: no NaN anywhere


def test_left_padded_decoding_with_the_cache_equals_each_prompt_alone():
    # In float64 (relative rounding 1.1e-16 on logits below 100, through three layers): 1e-10 is far above it.
    # Each prompt alone runs at the positions its row has in the batch (after its padding): RoPE's cos/sin
    # tables are float32 even in a float64 model, so other positions would differ by float32 rounding.
    model = random_llama(CONFIG).double()
    tokens, mask = left_pad(PROMPTS)
    continuation = torch.randint(0, CONFIG.vocab_size, (3, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        caches = model.new_kv_caches(3, 19)
        steps = [model(tokens, 0, caches, mask)[:, -1:]]
        for i in range(6):
            mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.bool)], dim=1)
            steps.append(model(continuation[:, i : i + 1], 13 + i, caches, mask))
        batched = torch.cat(steps, dim=1)  # (3, 7, vocab): after the prompt and after each new token
        for row, prompt in enumerate(PROMPTS):
            pad = 13 - len(prompt)
            alone = model(torch.cat([torch.tensor([prompt]), continuation[row : row + 1]], dim=1), pad)[0]
            assert (batched[row] - alone[len(prompt) - 1 :]).abs().max() <= 1e-10


def test_padding_values_do_not_matter(model):
    with torch.no_grad():
        results = [model(*left_pad(PROMPTS, pad_id=pad)[:1], 0, None, left_pad(PROMPTS)[1]) for pad in (0, 57)]
    _, mask = left_pad(PROMPTS)
    # A masked key gets weight exactly 0, so the real positions are computed from the same numbers, bit for bit.
    assert torch.equal(results[0][mask], results[1][mask])


def test_attention_mask_of_the_wrong_shape_is_a_clear_error(model):
    tokens, mask = left_pad(PROMPTS)
    with pytest.raises(ValueError, match=r"attention_mask must be a boolean tensor of shape \(batch, start_pos"):
        model(tokens, 0, None, mask[:, 1:])
    with pytest.raises(ValueError, match="attention_mask must be a boolean"):
        model(tokens, 0, None, mask.long())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_generate_batch_gives_generates_tokens(dtype):
    model = random_llama(CONFIG).to(dtype)
    stop = generate(model, PROMPTS[0], GenerationConfig(12))[4]  # ends the first prompt early, not the others (checked below)
    batched = generate_batch(model, PROMPTS, GenerationConfig(12, stop_tokens={stop}))
    alone = [generate(model, prompt, GenerationConfig(12, stop_tokens={stop})) for prompt in PROMPTS]
    assert batched == alone
    assert len(batched[0]) < 12 and any(len(b) == 12 for b in batched[1:])


def test_a_repeated_prompt_is_prefilled_once_and_continues_as_alone():
    """Samples of one prompt share its prefill (copied keys and values): greedy, each row is generate's tokens
    (float64: no argmax can flip on rounding); sampled, the copies draw their own tokens."""
    model = random_llama(CONFIG).double()
    prompts = [PROMPTS[1], PROMPTS[0], PROMPTS[1], PROMPTS[1]]
    calls = []
    hook = model.layers[0].register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    batched = generate_batch(model, prompts, GenerationConfig(6))
    hook.remove()
    assert calls[0][:2] == (2, 5)  # the prefill: the two distinct prompts, left-padded to 5 tokens
    assert batched == [generate(model, prompt, GenerationConfig(6)) for prompt in prompts]
    sampled = generate_batch(model, prompts, GenerationConfig(6, temperature=1.0, seed=0))
    assert len({tuple(sampled[i]) for i in (0, 2, 3)}) > 1


def test_generate_batch_sampling_is_reproducible(model):
    a = generate_batch(model, PROMPTS, GenerationConfig(8, temperature=1.0, top_k=20, seed=3))
    assert a == generate_batch(model, PROMPTS, GenerationConfig(8, temperature=1.0, top_k=20, seed=3))
    assert a != generate_batch(model, PROMPTS, GenerationConfig(8, temperature=1.0, top_k=20, seed=4))


def drafts(model):
    other = random_llama(CONFIG.replace(n_layers=1), seed=1).to(model.tok_embeddings.weight.dtype)
    return {
        "the target itself": model,  # agrees always
        "an unrelated model": other,  # agrees almost never: every round rolls back
        "the first two layers": layer_skip_draft(model, [0, 1]),
        "prompt lookup": prompt_lookup(2),
    }


@pytest.mark.parametrize("k", [1, 3, 5])
def test_speculative_greedy_is_plain_greedy_in_float64(k):
    # float64: the verify pass (k + 1 tokens) and the plain decode step (1 token) differ by ~1e-15, so no
    # argmax can flip and the tokens must be identical.
    model = random_llama(CONFIG).double()
    for name, draft in drafts(model).items():
        for prompt in PROMPTS:
            expected = generate(model, prompt, GenerationConfig(30))
            result = speculative_generate(model, draft, prompt, 30, k=k)
            assert result.tokens == expected, (name, prompt)
            assert result.rounds == len(result.accepted_per_round) and result.accepted <= result.proposed


def test_speculative_greedy_is_plain_greedy_in_float32(model):
    for prompt in PROMPTS:
        expected = generate(model, prompt, GenerationConfig(30))
        tokens = torch.tensor([prompt + expected])
        with torch.no_grad():
            top2 = model(tokens)[0, len(prompt) - 1 : -1].topk(2).values
        # Why equality is guaranteed here: each logit of the verify pass is off the plain pass's by at most
        # 4 * the model's float32 rounding (assert_same_logits), so a gap above twice that cannot flip.
        assert (top2[:, 0] - top2[:, 1]).min() > 8 * float32_rounding(model, tokens), "a near-tie: pick another prompt"
        for name, draft in drafts(model).items():
            assert speculative_generate(model, draft, prompt, 30, k=4).tokens == expected, (name, prompt)


def test_a_perfect_draft_yields_k_plus_one_tokens_per_round(model):
    result = speculative_generate(model, model, PROMPTS[0], 30, k=4)
    assert result.acceptance_rate == 1.0
    assert result.rounds == 6  # 30 tokens, 5 per round


def test_a_useless_draft_costs_rounds_not_correctness(model):
    def wrong(tokens, k):  # never the target's choice
        return [(generate(model, tokens, GenerationConfig(1))[0] + 1) % CONFIG.vocab_size] * k

    result = speculative_generate(model, wrong, PROMPTS[0], 10, k=3)
    assert result.tokens == generate(model, PROMPTS[0], GenerationConfig(10))
    assert result.accepted == 0 and result.rounds == 10


def test_speculative_stops_at_a_stop_token(model):
    plain = generate(model, PROMPTS[2], GenerationConfig(20))
    stop = plain[7]
    result = speculative_generate(model, model, PROMPTS[2], 20, k=4, stop_tokens={stop})
    assert result.tokens == plain[: plain.index(stop)]


def test_speculative_arguments_are_checked(model):
    with pytest.raises(ValueError, match="k .* must be an int >= 1"):
        speculative_generate(model, model, PROMPTS[0], 5, k=0)
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_generate(model, random_llama(CONFIG.replace(vocab_size=50)), PROMPTS[0], 5)
    with pytest.raises(ValueError, match="keep must list layers"):
        layer_skip_draft(model, [0, 7])
