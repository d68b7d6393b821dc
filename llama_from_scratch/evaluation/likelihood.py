"""Log-likelihood scoring: how probable does the model find a continuation after a context?

The score of a continuation ``c_1 ... c_m`` after a context is the sum of its tokens' log-probabilities,

    log P(c | context) = sum_j log softmax(logits after context, c_1 ... c_{j-1})[c_j],

one number per token read from one forward pass: the logits after the context predict ``c_1``, those after
``c_1`` predict ``c_2``, and so on. Multiple-choice benchmarks (:mod:`.multiple_choice`) score every choice
this way; lm-evaluation-harness's ``loglikelihood`` requests are exactly these numbers.

A multiple-choice item asks for the same context with four or five continuations. :func:`score` runs each
context once, keeps its keys and values in the KV cache (chapter 06), copies them to one cache row per
continuation and then runs all the continuations of a batch of items as one ``(rows, longest)`` forward
pass. Contexts of different lengths are left-padded to one length and masked (:func:`~llama_from_scratch.
generate.left_pad`); continuations are right-padded, which a causal model needs no mask for: a real token
never looks at a later padding token. ``use_cache=False`` runs every context + continuation in full instead,
for comparison: both give the same numbers up to float rounding (padding shifts a row's positions, which
RoPE ignores up to rounding).

The log-probabilities are taken from the model's logits (float32, or float64 for a float64 model) and
returned in float64, so sums and normalisations add no rounding of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..generate import left_pad
from ..model import Llama
from ..tokenization.tokenizer import Tokenizer


@dataclass(frozen=True)
class Request:
    """One context and the continuations to score after it, as token ids (none of them empty)."""

    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Scored:
    """A scored continuation: ``token_logprobs`` ``(m,)`` float64, one per token; ``greedy`` is True when every
    token was the model's most probable one (lm-evaluation-harness's ``is_greedy``)."""

    token_logprobs: torch.Tensor
    greedy: bool

    @property
    def logprob(self) -> float:
        """log P(continuation | context): the sum of the token log-probabilities."""
        return float(self.token_logprobs.sum())


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str, bos: bool = True) -> tuple[list[int], list[int]]:
    """A context and a continuation as token ids, tokenized as the model would read them together.

    The two are encoded as one text and cut where the context's own tokens end, so a word split across the
    boundary is tokenized as in running text. Whitespace at the end of the context is moved to the start of
    the continuation first (``"Answer: " + "Paris"`` -> ``"Answer:" + " Paris"``): byte-level BPE glues a
    space to the word after it, so this is where the model expects it; a final newline is moved too, and
    scored with the continuation, as lm-evaluation-harness does. ``bos``: the tokenizer's beginning-of-sequence
    token in front, when it has one; an empty context is always the BOS token (or, without one, the
    end-of-text token), as in lm-evaluation-harness. Raises ValueError when the continuation is empty.
    """
    stripped = context.rstrip()
    continuation = context[len(stripped) :] + continuation
    if not continuation:
        raise ValueError(f"empty continuation after context {context[-40:]!r}: there is nothing to score")
    prefix = [tokenizer.bos_id] if bos and tokenizer.bos_id is not None else []
    if not stripped and not prefix:  # nothing to predict from: the BOS, else the end-of-text token, starts it
        prefix = [t for t in (tokenizer.bos_id, tokenizer.eos_id) if t is not None][:1]
    context_ids = prefix + tokenizer.encode(stripped)
    whole = prefix + tokenizer.encode(stripped + continuation)
    if whole[: len(context_ids)] != context_ids:  # the boundary falls inside a token: encode the parts apart
        whole = context_ids + tokenizer.encode(continuation)
    if not context_ids:
        raise ValueError("the context is empty and the tokenizer has neither a BOS nor an end-of-text token")
    return context_ids, whole[len(context_ids) :]


def fit_context(context: Sequence[int], continuation: Sequence[int], max_seq_len: int) -> tuple[int, ...]:
    """The end of ``context`` that fits before ``continuation`` in ``max_seq_len`` positions (a long few-shot
    prompt loses its first examples, as in lm-evaluation-harness); ValueError if the continuation alone is
    too long."""
    room = max_seq_len - len(continuation) + 1  # context + continuation[:-1] are fed in
    if room < 1:
        raise ValueError(f"a continuation of {len(continuation)} tokens does not fit max_seq_len={max_seq_len}")
    return tuple(context[-room:])


def _check(model: Llama, requests: Sequence[Request]) -> None:
    for i, request in enumerate(requests):
        if not request.context or not request.continuations or not all(request.continuations):
            raise ValueError(f"request {i}: needs a non-empty context and non-empty continuations")
        longest = len(request.context) + max(len(c) for c in request.continuations) - 1  # the last token is not fed
        if longest > model.config.max_seq_len:
            raise ValueError(
                f"request {i}: context ({len(request.context)} tokens) + continuation needs {longest} positions, "
                f"more than the model's max_seq_len={model.config.max_seq_len}; shorten the context"
            )


@torch.inference_mode()
def score(model: Llama, requests: Sequence[Request], batch_size: int = 8, use_cache: bool = True) -> list[list[Scored]]:
    """Every continuation of every request scored: ``result[i][j]`` for ``requests[i].continuations[j]``.

    ``batch_size`` requests (items) go through the model together. ``use_cache=True``: each context once,
    its KV cache shared by its continuations; ``use_cache=False``: each context + continuation in full.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    _check(model, requests)
    was_training = model.training
    model.eval()
    try:
        scorer = _score_cached if use_cache else _score_full
        results: list[list[Scored]] = []
        for batch in _batches(requests, batch_size, model.config.max_seq_len, use_cache):
            results += scorer(model, batch)
        return results
    finally:
        model.train(was_training)


def _batches(requests: Sequence[Request], size: int, max_seq_len: int, use_cache: bool) -> list[list[Request]]:
    """Consecutive requests, up to ``size`` per batch, in order. With the cache, contexts are left-padded to the
    longest and every continuation follows it, so a batch also ends where the two would not fit the model."""
    batches: list[list[Request]] = []
    for request in requests:
        batch = batches[-1] if batches else None
        if batch is not None and len(batch) < size:
            longest_context = max(len(r.context) for r in [*batch, request])
            longest_fed = max(len(c) - 1 for r in [*batch, request] for c in r.continuations)
            if not use_cache or longest_context + longest_fed <= max_seq_len:
                batch.append(request)
                continue
        batches.append([request])
    return batches


def _token_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, m, vocab)`` logits and ``(rows, m)`` targets -> float64 log-probabilities and is-argmax, ``(rows, m)``.

    log softmax(z)[t] = z[t] - logsumexp(z), each side in the logits' own precision (no float64 copy of the
    ``(rows, m, vocab)`` logits), their difference in float64.
    """
    picked = logits.gather(-1, targets[..., None])[..., 0]
    logprobs = picked.double() - torch.logsumexp(logits, dim=-1).double()
    return logprobs, logits.argmax(-1) == targets


def _score_cached(model: Llama, requests: Sequence[Request]) -> list[list[Scored]]:
    device = model.device
    tokens, mask = left_pad([r.context for r in requests])  # (items, L), True for real tokens
    owner = [i for i, r in enumerate(requests) for _ in r.continuations]  # row -> its item
    continuations = [c for r in requests for c in r.continuations]
    rows, length = len(continuations), tokens.shape[1]
    fed = max(len(c) for c in continuations) - 1  # every continuation token but the last is fed in
    cache = model.new_kv_caches(rows, length + fed)
    after_context = model(tokens.to(device), 0, cache, mask.to(device))[:, -1]  # (items, vocab): predicts c_1
    index = torch.tensor(owner, device=device)
    for layer in cache:  # row r starts from its item's context: copy the cached keys and values
        layer.k[:rows, :, :length] = layer.k[index, :, :length]
        layer.v[:rows, :, :length] = layer.v[index, :, :length]
    first = after_context[index][:, None]  # (rows, 1, vocab)
    if fed:
        inputs = torch.zeros(rows, fed, dtype=torch.long)  # right-padded with id 0: never looked at by real tokens
        for r, c in enumerate(continuations):
            inputs[r, : len(c) - 1] = torch.tensor(c[:-1])
        full_mask = torch.cat([mask[owner], torch.ones(rows, fed, dtype=torch.bool)], dim=1)  # (rows, L + fed)
        later = model(inputs.to(device), length, cache, full_mask.to(device))  # (rows, fed, vocab)
        logits = torch.cat([first, later], dim=1)  # (rows, fed + 1, vocab): position j predicts c_{j+1}
    else:
        logits = first
    targets = torch.zeros(rows, fed + 1, dtype=torch.long)
    for r, c in enumerate(continuations):
        targets[r, : len(c)] = torch.tensor(c)
    logprobs, best = _token_scores(logits, targets.to(device))
    return _regroup(requests, continuations, logprobs, best)


def _score_full(model: Llama, requests: Sequence[Request]) -> list[list[Scored]]:
    device = model.device
    sequences = [(r.context, c) for r in requests for c in r.continuations]
    longest = max(len(x) + len(c) - 1 for x, c in sequences)
    inputs = torch.zeros(len(sequences), longest, dtype=torch.long)  # right-padded, no mask needed
    targets = torch.zeros(len(sequences), longest, dtype=torch.long)
    for r, (x, c) in enumerate(sequences):
        whole = torch.tensor(x + c)
        inputs[r, : len(whole) - 1] = whole[:-1]
        targets[r, len(x) - 1 : len(whole) - 1] = whole[len(x) :]  # position t predicts token t + 1
    logprobs, best = _token_scores(model(inputs.to(device)), targets.to(device))  # (rows, longest) each
    width = max(len(c) for _, c in sequences)
    front = torch.zeros(len(sequences), width, dtype=torch.long)  # row r: its continuation's positions, first
    for r, (x, c) in enumerate(sequences):
        front[r, : len(c)] = torch.arange(len(x) - 1, len(x) + len(c) - 1)
    front = front.to(device)
    return _regroup(requests, [c for _, c in sequences], logprobs.gather(1, front), best.gather(1, front))


def _regroup(
    requests: Sequence[Request], continuations: list[tuple[int, ...]], logprobs: torch.Tensor, best: torch.Tensor
) -> list[list[Scored]]:
    """Rows ``(rows, width)`` (continuation tokens first) back into one list of :class:`Scored` per request."""
    scored = [Scored(logprobs[r, : len(c)].cpu(), bool(best[r, : len(c)].all())) for r, c in enumerate(continuations)]
    grouped, row = [], 0
    for request in requests:
        grouped.append(scored[row : row + len(request.continuations)])
        row += len(request.continuations)
    return grouped


def rolling_requests(tokens: Sequence[int], max_seq_len: int) -> list[Request]:
    """A whole text's log-likelihood as requests that fit the model: ``tokens[0]`` (a BOS or end-of-text token)
    starts it and is not scored; every later token is scored exactly once.

    The text is cut into chunks of up to ``max_seq_len`` predicted tokens; each chunk's context is the tokens
    just before it, as many as fill the model's window (the first chunk has only ``tokens[0]``). The sum of
    the chunks' scores is the text's log-likelihood (lm-evaluation-harness's ``loglikelihood_rolling``).
    """
    if len(tokens) < 2:
        raise ValueError("a rolling log-likelihood needs a start token and at least one token of text")
    tokens, requests, start = tuple(tokens), [], 1
    while start < len(tokens):
        end = min(len(tokens), start + max_seq_len)
        first_fed = max(0, end - 1 - max_seq_len)  # context + chunk[:-1] fill at most max_seq_len positions
        requests.append(Request(tokens[first_fed:start], (tokens[start:end],)))
        start = end
    return requests
