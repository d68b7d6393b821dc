"""Continuous batching: which sequences run in the next step (Orca's iteration-level scheduling, vLLM's preemption).

*Static batching* (:func:`~llama_from_scratch.generate.generate_batch`) starts a batch together and ends it
together: a request that finishes early leaves its row idle until the longest one is done, and a request
that arrives meanwhile waits for the whole batch. Orca (Yu et al., 2022) schedules at every *iteration*
(one forward pass) instead: at each step, finished requests leave, waiting requests join, and one step
runs the prompts of the new ones (their *prefill*) together with one decoding step of all the others.

Memory decides who may join. With a paged KV cache (:mod:`.paged_kv_cache`) a request needs blocks for its
prompt now and one more block every ``block_size`` tokens later, so the scheduler

1. makes room for one more token of every **running** sequence, oldest first; when no block is left it
   **preempts** the newest running sequence: frees its blocks and puts it back at the front of the queue,
   to be recomputed later from its prompt and the tokens it has produced (vLLM's *recompute* preemption:
   recomputing a prefix is one fast prefill, cheaper than copying its blocks out and back);
2. admits **waiting** sequences, first come first served, while blocks for their tokens, a sequence slot
   (``max_num_seqs``) and room in the step's token budget (``max_batched_tokens``) remain; the first that
   does not fit stops admission, so a long prompt is not overtaken for ever by short ones.

Every scheduled sequence then computes its tokens from ``num_computed`` on: the whole prompt (less what the
prefix cache held) for a new one, its last token for a running one.

``batching="static"`` keeps the same steps but admits only when nothing runs: a batch starts together and
the next one waits until its last sequence has finished, as with ``generate_batch``. It is here to be
measured against (``benchmarks/serving.py``, chapter 15's timeline), not to be served with.
"""

from __future__ import annotations

from collections import deque

import torch

from .paged_kv_cache import PagedKVCache
from .sampling_params import SamplingParams

BATCHING = ("continuous", "static")


class Sequence:
    """One request as the scheduler sees it: ``prompt`` and ``output`` token ids, and how far it is computed."""

    def __init__(self, request_id: str, prompt: list[int], params: SamplingParams, device: torch.device | str = "cpu"):
        self.request_id, self.prompt, self.params = request_id, list(prompt), params
        self.output: list[int] = []
        self.num_computed = 0  # leading tokens whose keys and values are in the cache
        self.decoding = params.generation_config()  # how each next token is picked
        self.generator = self.decoding.generator(torch.device(device))  # its own, so company does not change its draw

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output


class Scheduler:
    """The waiting queue and the running list, and each step's choice (see the module's text)."""

    def __init__(self, cache: PagedKVCache, max_num_seqs: int, max_batched_tokens: int, batching: str = "continuous"):
        if batching not in BATCHING:
            raise ValueError(f"batching must be one of {', '.join(BATCHING)}, got {batching!r}")
        if not 1 <= max_num_seqs <= max_batched_tokens:
            raise ValueError(
                f"need 1 <= max_num_seqs <= max_batched_tokens (each running sequence adds a token to every step), "
                f"got max_num_seqs={max_num_seqs}, max_batched_tokens={max_batched_tokens}"
            )
        self.cache, self.max_num_seqs, self.max_batched_tokens = cache, max_num_seqs, max_batched_tokens
        self.batching = batching
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # oldest first
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, request_id: str) -> Sequence | None:
        """Take the request out of either queue and free its blocks at once (finished or cancelled)."""
        for seq in self.running:
            if seq.request_id == request_id:
                self.running.remove(seq)
                break
        else:
            seq = next((s for s in self.waiting if s.request_id == request_id), None)
            if seq is not None:
                self.waiting.remove(seq)
        self.cache.free(request_id)
        return seq

    def preempt(self, seq: Sequence) -> None:
        """Free ``seq``'s blocks and queue it first, to recompute its tokens when memory allows."""
        self.cache.free(seq.request_id)
        seq.num_computed = 0
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def schedule(self) -> list[Sequence]:
        """The sequences that run in the next step, each computing ``tokens[num_computed:]``."""
        # 1. one more token for each running sequence; preempt from the newest end when blocks run out
        queue, kept = deque(self.running), []
        while queue:
            seq = queue.popleft()
            while not self.cache.can_append(seq.request_id, len(seq.tokens)) and queue:
                self.preempt(queue.pop())
            if self.cache.can_append(seq.request_id, len(seq.tokens)):
                self.cache.append_slot(seq.request_id, len(seq.tokens))
                kept.append(seq)
            else:
                self.preempt(seq)
        self.running = kept
        if self.batching == "static" and kept:
            return list(kept)  # static batching: the next batch waits until this one has finished
        self.admit(self.max_batched_tokens - len(kept))
        return list(self.running)

    def admit(self, budget: int) -> None:
        """Step 2: move waiting sequences to running, first come first served, while blocks, a sequence slot and
        ``budget`` (the step's tokens left) allow; the first that does not fit stops admission."""
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self.cache.can_allocate(seq.tokens):
                break
            cached = self.cache.allocate(seq.request_id, seq.tokens)
            if len(seq.tokens) - cached > budget:
                self.cache.free(seq.request_id)
                break
            seq.num_computed = cached
            budget -= len(seq.tokens) - cached
            self.running.append(self.waiting.popleft())
