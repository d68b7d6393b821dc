"""Chapter 12's evaluation package: likelihood scoring, multiple choice, statistics, pass@k, few-shot prompts,
generation tasks and the contamination check."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch
from helpers import float32_rounding, random_llama

from llama_from_scratch import GenerationConfig, LlamaConfig, generate_batch
from llama_from_scratch.evaluation import (
    GenerationItem,
    MultipleChoiceItem,
    Request,
    Task,
    TaskCard,
    answer_choices,
    compare,
    draw_examples,
    encode_pair,
    exact_match,
    generate_until,
    generate_until_batch,
    majority_vote,
    mcnemar,
    mean_with_stderr,
    normalize_answer,
    pass_at_k,
    prompts,
    rolling_requests,
    score,
)
from llama_from_scratch.evaluation.contamination import NgramIndex, contamination
from llama_from_scratch.tokenization.byte_bpe import ByteLevelBPE, bytes_to_unicode

BOS = 256


def byte_tokenizer() -> ByteLevelBPE:
    """One token per byte, and a BOS token: every text has a tokenization, and a tiny model reads it."""
    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    return ByteLevelBPE(vocab, [], special_tokens={"<s>": BOS, "</s>": BOS + 1}, bos_id=BOS, eos_id=BOS + 1)


def tiny_model(dtype=torch.float64, seed: int = 0):
    return random_llama(LlamaConfig.from_preset("tiny", vocab_size=BOS + 2), seed).to(dtype)


# float64 rounding is ~1e-16 relative; a log-probability here is a sum of a few dozen terms of size <= 20 taken
# through softmaxes of 258 logits, so two orders of summation differ by far less than 1e-10. A wrong position,
# token or off-by-one moves a log-probability by more than 1e-3 (the random model's logits spread by ~1).
FLOAT64_TOLERANCE = 1e-10

REQUESTS = [
    Request((BOS, 10, 11, 12, 13), ((20,), (21, 22, 23), (24, 25))),
    Request((BOS, 30), ((31, 32, 33, 34), (35,))),
    Request((BOS, 40, 41, 42, 43, 44, 45, 46), ((47, 48), (49, 50), (51, 52), (53,))),
]


def reference_logprobs(model, context, continuation) -> torch.Tensor:
    """Each continuation token's log-probability from one plain forward pass over context + continuation."""
    tokens = list(context) + list(continuation)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([tokens[:-1]]))[0].double(), dim=-1)  # (seq - 1, vocab)
    positions = range(len(context) - 1, len(tokens) - 1)  # position t predicts token t + 1
    return torch.stack([logprobs[t, tokens[t + 1]] for t in positions])


def test_scores_are_the_token_logprobs_of_one_full_forward_pass():
    model = tiny_model()
    for request in REQUESTS:  # one at a time: no padding, so every token sits where the full pass has it
        for continuation, s in zip(request.continuations, score(model, [request])[0]):
            expected = reference_logprobs(model, request.context, continuation)
            assert s.token_logprobs.shape == (len(continuation),)
            assert torch.allclose(s.token_logprobs, expected, rtol=0, atol=FLOAT64_TOLERANCE)
            assert s.logprob == pytest.approx(float(expected.sum()), abs=FLOAT64_TOLERANCE)


def test_one_token_continuations_need_no_second_pass():
    model = tiny_model()
    request = Request((BOS, 5, 6), ((7,), (8,), (9,)))
    for continuation, s in zip(request.continuations, score(model, [request])[0]):
        expected = reference_logprobs(model, request.context, continuation)
        assert torch.allclose(s.token_logprobs, expected, rtol=0, atol=FLOAT64_TOLERANCE)


def assert_same_scores(got, expected, tolerance):
    for got_item, expected_item in zip(got, expected, strict=True):
        for a, b in zip(got_item, expected_item, strict=True):
            assert torch.allclose(a.token_logprobs, b.token_logprobs, rtol=0, atol=tolerance)


def test_cached_context_equals_uncached_and_batched_equals_one_by_one():
    # Contexts of one length: the batch needs no padding, so float64 rounding is the only difference.
    model = tiny_model()
    same_length = [Request((BOS, 1 + i, 2, 3), r.continuations) for i, r in enumerate(REQUESTS)]
    one_by_one = [score(model, [r], batch_size=1)[0] for r in same_length]
    assert_same_scores(score(model, same_length, batch_size=3), one_by_one, FLOAT64_TOLERANCE)
    assert_same_scores(score(model, same_length, batch_size=3, use_cache=False), one_by_one, FLOAT64_TOLERANCE)
    assert_same_scores([score(model, [r], use_cache=False)[0] for r in same_length], one_by_one, FLOAT64_TOLERANCE)


def test_padded_batches_equal_one_by_one_within_float32_rounding():
    # Left-padding shifts a row's positions, and RoPE's cos/sin tables are float32 even in a float64 model: the
    # shift is invisible only up to float32 rounding. So compare a float32 model with the measured bound:
    # logits within 4x the model's float32 rounding (helpers.assert_same_logits), and a log-softmax moves by at
    # most twice its logits' largest change (the logit itself, and the log-sum-exp by no more than that).
    model = tiny_model(torch.float32)
    longest = max(len(r.context) + max(map(len, r.continuations)) for r in REQUESTS)
    tokens = torch.tensor([[BOS] + list(range(60, 60 + longest - 1))])
    bound = 2 * 4 * float32_rounding(model, tokens)
    one_by_one = [score(model, [r])[0] for r in REQUESTS]
    assert_same_scores(score(model, REQUESTS, batch_size=3), one_by_one, bound)
    assert_same_scores(score(model, REQUESTS, batch_size=2, use_cache=False), one_by_one, bound)


def test_greedy_means_every_token_is_the_argmax():
    model = tiny_model()
    context = (BOS, 70, 71)
    with torch.no_grad():
        best = [int(model(torch.tensor([context]))[0, -1].argmax())]
        best.append(int(model(torch.tensor([context + (best[0],)]))[0, -1].argmax()))
    other = (best[0], (best[1] + 1) % BOS)
    scored = score(model, [Request(context, (tuple(best), other))])[0]
    assert scored[0].greedy and not scored[1].greedy


def test_rolling_requests_score_every_token_once_within_the_window():
    tokens = [BOS, *range(1, 40)]
    requests = rolling_requests(tokens, max_seq_len=8)
    predicted = [t for r in requests for t in r.continuations[0]]
    assert predicted == tokens[1:]
    for r in requests:
        fed = len(r.context) + len(r.continuations[0]) - 1
        end = tokens.index(r.continuations[0][0])
        assert list(r.context) == tokens[end - len(r.context) : end]  # the tokens just before the chunk
        assert fed == 8 or r is requests[-1] or r is requests[0]  # the window is filled when it can be
    model = random_llama(LlamaConfig.from_preset("tiny", vocab_size=BOS + 2, max_seq_len=8)).double()
    first = score(model, requests)[0][0]
    assert first.logprob == pytest.approx(float(reference_logprobs(model, tokens[:1], tokens[1:9]).sum()), abs=1e-10)


def test_encode_pair_moves_the_space_to_the_continuation():
    tokenizer = byte_tokenizer()
    context, continuation = encode_pair(tokenizer, "Answer: ", "Paris")
    assert context == [BOS, *b"Answer:"] and continuation == list(b" Paris")
    with pytest.raises(ValueError, match="empty continuation"):
        encode_pair(tokenizer, "Answer:", "")
    assert encode_pair(tokenizer, "", " Hi", bos=False) == ([BOS], list(b" Hi"))  # nothing to predict from: BOS
    assert encode_pair(tokenizer, "Hi", " there", bos=False)[0] == list(b"Hi")


def test_too_long_or_empty_requests_fail_with_one_clear_line():
    model = tiny_model()
    with pytest.raises(ValueError, match="max_seq_len=128"):
        score(model, [Request(tuple(range(100)), (tuple(range(40)),))])
    with pytest.raises(ValueError, match="non-empty"):
        score(model, [Request((BOS,), ((),))])


ITEM = MultipleChoiceItem("Question: 2 + 2 =\nAnswer:", (" 4", " five", " 22"), 0)


def test_normalisations_are_their_formulas():
    model, tokenizer = tiny_model(), byte_tokenizer()
    results = {
        n: answer_choices(model, tokenizer, [ITEM], normalization=n)[0] for n in ("none", "token", "char", "answer")
    }
    sums = [s.logprob for s in results["none"].scored]
    assert list(results["none"].scores) == pytest.approx(sums)
    lengths = [len(choice.encode()) for choice in ITEM.choices]  # one token per byte
    assert list(results["token"].scores) == pytest.approx([s / n for s, n in zip(sums, lengths)])
    # per character, the separating space not counted: " 4" has one character
    assert list(results["char"].scores) == pytest.approx([s / n for s, n in zip(sums, (1, 4, 2))])
    baseline = [reference_logprobs(model, [BOS, *b"Answer:"], list(c.encode())).sum() for c in ITEM.choices]
    assert list(results["answer"].scores) == pytest.approx([s - float(b) for s, b in zip(sums, baseline)])
    for result in results.values():
        assert result.predicted == max(range(3), key=lambda i: result.scores[i])
        assert result.correct == (result.predicted == 0)


def test_unknown_normalisation_is_one_clear_line():
    with pytest.raises(ValueError, match="unknown normalization 'chars'"):
        answer_choices(tiny_model(), byte_tokenizer(), [ITEM], normalization="chars")


def test_pass_at_k_equals_enumeration_over_all_k_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                samples = [True] * c + [False] * (n - c)
                subsets = list(itertools.combinations(samples, k))
                exact = Fraction(sum(any(s) for s in subsets), len(subsets))
                closed_form = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
                assert exact == closed_form
                # the product of c factors rounds once per factor: c * 2^-53 relative at most
                assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=8 * 2**-53)


def test_pass_at_k_is_stable_for_many_samples():
    for c in (0, 1, 5, 100, 199, 200):
        for k in (1, 10, 100):
            exact = 1 - Fraction(math.comb(200 - c, k), math.comb(200, k))  # math.comb(200, 100) ~ 9e58
            assert pass_at_k(200, c, k) == pytest.approx(float(exact), abs=200 * 2**-52)
    assert pass_at_k(200, 1, 1) == pytest.approx(1 / 200)
    assert pass_at_k(200, 13, 100) > 1 - (1 - 13 / 200) ** 100  # the with-replacement formula is biased low
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(5, 6, 1)


def test_standard_error_and_mcnemar_are_their_formulas():
    estimate = mean_with_stderr([1.0, 0.0, 1.0, 1.0])
    assert estimate.mean == 0.75 and estimate.n == 4
    assert estimate.stderr == pytest.approx(math.sqrt(0.75 * 0.25 / 3))  # sqrt(p (1 - p) / (n - 1))
    # 10 disagreements split 9 : 1: P(X <= 1) = 11 / 1024 for X ~ Binomial(10, 1/2), two-sided
    assert mcnemar(9, 1) == pytest.approx(22 / 1024)
    assert mcnemar(3, 3) == 1.0 and mcnemar(0, 0) == 1.0
    a = [True] * 30 + [False] * 10 + [True] * 9 + [False] * 1
    b = [True] * 30 + [False] * 10 + [False] * 9 + [True] * 1
    result = compare(a, b)
    assert (result.a_only, result.b_only) == (9, 1) and result.significant()
    assert result.difference.mean == pytest.approx(8 / 50)


def test_generation_stops_at_a_stop_sequence_and_normalises():
    model, tokenizer = tiny_model(torch.float32), byte_tokenizer()
    prompt = tokenizer.encode("Q: say something\nA:", bos=True)
    free = generate_until(model, tokenizer, prompt, max_new_tokens=12)
    assert 0 < len(free) <= 12  # one byte per token: at most one character each
    # A stop sequence the greedy text contains (an ASCII one: a byte of an unfinished UTF-8 character decodes
    # to U+FFFD until the rest arrives): the text is cut before its first occurrence.
    stop = next(c for c in free[1:] if c.isascii() and c.isprintable())
    assert generate_until(model, tokenizer, prompt, stop=[stop], max_new_tokens=12) == free[: free.find(stop)]
    assert normalize_answer("  The Tempest!") == "tempest"
    assert exact_match("an Apple.", ["apple", "pear"]) and not exact_match("apples", ["apple"])
    assert majority_vote(["12", "The 13", "13.", "12 "]) == "12"  # 2 against 2: the earlier one


QUESTIONS = ["Q: say something\nA:", "Hi", "A longer question, padded less than the others?", "x\n", "Why?"]


def test_batched_answers_are_the_one_at_a_time_answers():
    # float64: a batch sums in another order than one row alone (and the left padding shifts each row's
    # positions, which RoPE ignores up to rounding): ~1e-16 relative, far below the gaps between the random
    # model's logits (~1e-3 and more), so every greedy token, and so every answer, is the same.
    model, tokenizer = tiny_model(), byte_tokenizer()
    prompts = [tokenizer.encode(text, bos=True) for text in QUESTIONS]
    free = [generate_until(model, tokenizer, p, max_new_tokens=12) for p in prompts]
    # Two stop sequences found in some answers (ASCII, so decoded as soon as written), not in all of them.
    stop = sorted({c for text in free for c in text[1:] if c.isascii() and c.isalnum()})[:2]
    alone = [generate_until(model, tokenizer, p, stop, max_new_tokens=12) for p in prompts]
    assert any(len(a) < len(f) for a, f in zip(alone, free)) and any(a == f for a, f in zip(alone, free))
    for batch_size in (2, 8):  # rows of different prompt lengths side by side, and the order restored
        assert generate_until_batch(model, tokenizer, prompts, stop, 12, batch_size=batch_size) == alone
    # A row that meets a stop sequence is extended no further: its tokens end with the one that completed it.
    config = GenerationConfig(12, stop_tokens={tokenizer.eos_id})
    tokens = generate_batch(model, prompts, config, finished=lambda new: any(s in tokenizer.decode(new) for s in stop))
    for new, text, answer in zip(tokens, free, alone):
        assert tokenizer.decode(new) == (text if answer == text else text[: len(answer) + 1])
    assert generate_until_batch(model, tokenizer, [], stop) == []


POOL = [GenerationItem(f"Q{i}:", f" A{i}", (f"A{i}",)) for i in range(5)]
TASK = Task(TaskCard("toy", "made here", 3, "test", None, "exact match"), "generation", POOL[:3], POOL)


def test_few_shot_examples_are_seeded_distinct_and_never_the_item():
    for index, item in enumerate(POOL):
        examples = draw_examples(POOL, 4, seed=1, index=index, item=item)
        assert item not in examples and len(set(examples)) == 4
        assert examples == draw_examples(POOL, 4, seed=1, index=index, item=item)
    assert prompts(TASK, POOL[:1], 2, seed=0)[0].endswith("\n\nQ0:")
    assert prompts(TASK, POOL[:1], 0)[0] == "Q0:"
    shown = {tuple(draw_examples(POOL, 2, seed=s, index=0)) for s in range(10)}
    assert len(shown) > 1  # the seed changes the examples


def test_more_shots_than_the_pool_holds_is_one_clear_line():
    with pytest.raises(ValueError, match="6 few-shot examples asked for, its pool holds 5"):
        prompts(TASK, POOL[:1], 6)
    with pytest.raises(ValueError, match="pool holds 4"):
        draw_examples(POOL, 5, seed=0, index=0, item=POOL[0])


def test_contamination_finds_a_leaked_item_and_not_a_fresh_one():
    corpus = "to be or not to be that is the question whether tis nobler in the mind to suffer " * 3
    index = NgramIndex(corpus, n=4)
    leaked = "that is the question whether tis nobler in the mind"
    fresh = "the quick brown fox jumps over the lazy dog again and again"
    half = "whether tis nobler in the quick brown fox jumps"  # 2 of its 6 four-grams are in the corpus
    assert index.share_found(leaked) == 1.0 and index.share_found(fresh) == 0.0
    assert index.share_found(half) == pytest.approx(2 / 6)
    report = contamination(index, [leaked, fresh, half])
    assert report.contaminated == 1 and report.mean.mean == pytest.approx((1 + 0 + 2 / 6) / 3)
