"""The engine: requests in, a step of the model at a time, text out (vLLM's ``LLMEngine``).

Each :meth:`LLMEngine.step` asks the :class:`~.scheduler.Scheduler` which sequences run, computes them all in
one forward pass through the paged KV cache (:func:`~.paged_attention.paged_forward`), samples one token per
sequence with that request's own settings, and turns the tokens into text (:class:`StreamDecoder`: a
character may span several tokens). A request ends at a stop token, at a stop string (the text is cut
before it; a few characters are held back while they could still be the start of one), or after
``max_tokens``; its blocks go back at once, as do a cancelled request's (:meth:`LLMEngine.abort`).

The engine is single-threaded and knows nothing of HTTP: the server (:mod:`.server`) runs it in a thread of
its own.
"""

from __future__ import annotations

from collections.abc import Sequence as Sequence_
from dataclasses import dataclass

from ..model import Llama
from ..tokenization.chat import StreamDecoder
from ..tokenization.tokenizer import Tokenizer
from .paged_attention import StepBatch, paged_forward, use_paged_attention
from .paged_kv_cache import BLOCK_SIZE, PagedKVCache
from .sampling_params import SamplingParams
from .scheduler import Scheduler, Sequence


DEFAULT_CACHE_TOKENS = 16384  # 755 MB of float32 keys and values for SmolLM2-135M (46 kB per token)


@dataclass
class RequestOutput:
    """What one step produced for one request: the new tokens and text, and whether (and why) it ended.

    ``finish_reason`` is OpenAI's: ``"stop"`` (a stop token or string), ``"length"`` (``max_tokens``), or
    ``"abort"`` (cancelled).
    """

    request_id: str
    token_ids: list[int]
    text: str
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int


class _Text:
    """A request's answer as text so far, and how much of it has been handed out."""

    def __init__(self, tokenizer: Tokenizer | None, prompt: Sequence_[int]):
        self.decoder = StreamDecoder(tokenizer, prompt) if tokenizer is not None else None
        self.text, self.sent = "", 0


class LLMEngine:
    """Continuous batching over a paged KV cache for ``model`` (whose attention layers it swaps: it owns the model).

    ``num_blocks`` of :data:`BLOCK_SIZE` tokens hold every running request's keys and values (default:
    :data:`DEFAULT_CACHE_TOKENS` tokens' worth, or one full context if that is more: a preallocated cache
    would reserve ``max_num_seqs`` full contexts, 6 GB in float32 for SmolLM2's 8192 tokens times 16, where
    requests of a few hundred tokens use a tenth of it); ``max_num_seqs`` requests run at once;
    ``max_batched_tokens`` tokens at most per step (default: the model's context); ``batching``:
    ``"continuous"``, or ``"static"`` to measure against (see :mod:`.scheduler`).
    ``tokenizer`` turns tokens into text and is needed for stop strings; without it the text stays empty.

    Two counters say how much work the engine has done, which is what its speed follows and, unlike a time,
    the same on every machine: ``num_steps``, the forward passes run (each reads every weight once), and
    ``num_computed_tokens``, the tokens those passes computed (prompts less their prefix-cache hits, plus one
    per decoding sequence per step).
    """

    def __init__(
        self,
        model: Llama,
        tokenizer: Tokenizer | None = None,
        num_blocks: int | None = None,
        max_num_seqs: int = 16,
        max_batched_tokens: int | None = None,
        enable_prefix_caching: bool = True,
        batching: str = "continuous",
    ):
        context = model.config.max_seq_len
        max_batched_tokens = max_batched_tokens or context
        if max_batched_tokens > context:
            raise ValueError(f"max_batched_tokens ({max_batched_tokens}) exceeds the model's context of {context}")
        num_blocks = num_blocks or max(-(-context // BLOCK_SIZE), DEFAULT_CACHE_TOKENS // BLOCK_SIZE)
        self.model, self.tokenizer = use_paged_attention(model.eval()), tokenizer
        self.cache = PagedKVCache.for_model(model, num_blocks, enable_prefix_caching=enable_prefix_caching)
        self.scheduler = Scheduler(self.cache, max_num_seqs, max_batched_tokens, batching)
        self.texts: dict[str, _Text] = {}
        self.num_steps = self.num_computed_tokens = 0

    def check_request(self, prompt: Sequence_[int], params: SamplingParams) -> None:
        """Raise a ``ValueError`` naming what is wrong if this request can never run (it reads, changes nothing)."""
        params.check(self.model, prompt)
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need the engine's tokenizer")
        needed = self.cache.blocks_for(len(prompt) + params.max_tokens)
        if needed > self.cache.allocator.num_blocks:
            raise ValueError(
                f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) need {needed} KV blocks, "
                f"more than the {self.cache.allocator.num_blocks} of the whole cache"
            )

    def add_request(self, request_id: str, prompt: Sequence_[int], params: SamplingParams) -> None:
        """Queue a request; a ``ValueError`` names what is wrong with it (it is then not queued)."""
        self.check_request(prompt, params)
        if request_id in self.texts:
            raise ValueError(f"request id {request_id!r} is in use")
        self.scheduler.add(Sequence(request_id, list(prompt), params, self.model.device))
        self.texts[request_id] = _Text(self.tokenizer, prompt)

    def abort(self, request_id: str) -> None:
        """Cancel a request: out of the queues, its blocks freed now. Unknown or finished ids are ignored."""
        self.scheduler.remove(request_id)
        self.texts.pop(request_id, None)

    def has_unfinished_requests(self) -> bool:
        return bool(self.scheduler.waiting or self.scheduler.running)

    def step(self) -> list[RequestOutput]:
        """Run one iteration: every scheduled sequence gains one token (or ends)."""
        seqs = self.scheduler.schedule()
        if not seqs:
            return []
        batch = StepBatch.build(self.model, self.cache, [(s.request_id, s.tokens, s.num_computed) for s in seqs])
        logits = paged_forward(self.model, self.cache, batch)  # (len(seqs), vocab_size)
        self.num_steps += 1
        self.num_computed_tokens += batch.tokens.shape[1]
        outputs = []
        for seq, row in zip(seqs, logits):
            self.cache.commit(seq.request_id, seq.tokens)
            seq.num_computed = len(seq.tokens)
            token = seq.decoding.sample(row, seq.generator)
            outputs.append(self._advance(seq, token))
        return outputs

    def _advance(self, seq: Sequence, token: int) -> RequestOutput:
        """Append ``token`` to ``seq`` (unless it is a stop token), update its text, and end it if it is done."""
        p, state = seq.params, self.texts[seq.request_id]
        reason, new = None, []
        if token in p.stop_token_ids:
            reason = "stop"
        else:
            seq.output.append(token)
            new = [token]
            piece = state.decoder.push(token) if state.decoder is not None else None
            if piece:
                searched_from = max(0, len(state.text) - max((len(s) for s in p.stop), default=0))
                state.text += piece
                found = [i for i in (state.text.find(s, searched_from) for s in p.stop) if i >= 0]
                if found:
                    state.text, reason = state.text[: min(found)], "stop"
            if reason is None and len(seq.output) >= p.max_tokens:
                reason = "length"
        # While unfinished, hold back the characters that could still grow into a stop string.
        held = 0 if reason else max((len(s) - 1 for s in p.stop), default=0)
        end = max(state.sent, len(state.text) - held)
        text, state.sent = state.text[state.sent : end], end
        if reason is not None:
            self.abort(seq.request_id)
        return RequestOutput(seq.request_id, new, text, reason is not None, reason, len(seq.prompt), len(seq.output))

    def generate(self, prompts: Sequence_[Sequence_[int]], params: SamplingParams) -> list[list[int]]:
        """Run ``prompts`` together to the end: each one's new token ids (the offline use, and the tests')."""
        ids = [f"generate-{i}" for i in range(len(prompts))]
        for request_id, prompt in zip(ids, prompts):
            self.add_request(request_id, prompt, params)
        tokens: dict[str, list[int]] = {i: [] for i in ids}
        while self.has_unfinished_requests():
            for out in self.step():
                tokens[out.request_id] += out.token_ids
        return [tokens[i] for i in ids]
