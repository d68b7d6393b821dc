"""One request's sampling settings (vLLM's ``SamplingParams``): each request of a batch decodes its own way.

In :func:`~llama_from_scratch.generate.generate_batch` every row shares one temperature and one random
generator. A server mixes requests from different people in one step: one wants greedy answers, another
``temperature=0.7, top_p=0.9, seed=42``, a third stops at ``"\\n\\n"``. So the settings travel with the
request, and each request that gives a ``seed`` draws from its own generator: its tokens do not depend on
who else shares the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..generate import GenerationConfig, check_prompt
from ..model import Llama

MAX_STOP_STRINGS = 4  # OpenAI's limit


@dataclass(frozen=True)
class SamplingParams:
    """How to decode one request.

    ``max_tokens`` new tokens at most; ``temperature`` 0 is greedy; ``top_k``, ``top_p`` as in
    :func:`~llama_from_scratch.generate.next_token_probabilities`; ``seed`` for a reproducible draw; the
    answer ends at a token of ``stop_token_ids`` (not included) or at the first of the ``stop`` strings
    (cut before it).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()

    def generation_config(self) -> GenerationConfig:
        """These settings as the package's :class:`~llama_from_scratch.generate.GenerationConfig`, which checks
        them (a ``ValueError`` naming the setting) and samples by them."""
        return GenerationConfig(
            self.max_tokens, self.temperature, self.top_k, self.top_p, frozenset(self.stop_token_ids), self.seed
        )

    def check(self, model: Llama, prompt: Sequence[int]) -> None:
        """Raise a ``ValueError`` naming the setting if these settings cannot decode ``prompt`` with ``model``:
        :class:`~llama_from_scratch.generate.GenerationConfig`'s checks, the context's, and the stops'."""
        if isinstance(self.max_tokens, int) and not isinstance(self.max_tokens, bool) and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        self.generation_config()
        check_prompt(model, list(prompt), self.max_tokens)
        if len(self.stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be at most {MAX_STOP_STRINGS} non-empty strings, got {list(self.stop)!r}")
