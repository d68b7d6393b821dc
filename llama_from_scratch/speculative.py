"""Speculative decoding: a cheap draft guesses several tokens, the model checks them all in one pass.

Decoding one token at a time with a KV cache is limited by reading the weights, not by arithmetic: a
forward pass over 5 new tokens costs little more than over 1. Speculative decoding (Leviathan et al.,
2023; Chen et al., 2023) turns that spare arithmetic into tokens. Each *round*:

1. a **draft** proposes ``k`` next tokens (``d1 .. dk``) cheaply;
2. the **target** model runs once over the last accepted token followed by ``d1 .. dk`` and so gets its
   own greedy choice ``g0 .. gk`` after every prefix: ``g0`` after the text so far, ``g1`` after ``d1``, ...;
3. the proposals are **accepted** while they agree, ``d1 == g0``, ``d2 == g1``, ...; at the first
   disagreement the target's own token replaces the draft's and the round ends. So a round yields
   between 1 token (nothing accepted: ``g0``) and ``k + 1`` (all accepted, and ``gk`` as a bonus).

Every token kept is the target's greedy choice after the tokens before it, so the output is exactly
greedy decoding with the target alone (up to float rounding of logits computed ``k + 1`` at a time
rather than one at a time: only a near-tie between two tokens could flip). Only the speed changes:
a round costs ``k`` draft steps and one target pass and yields ``1 + accepted`` tokens. The paper's
sampling version accepts a proposal with probability ``min(1, p_target / p_draft)``; this module
implements the greedy version, where acceptance is equality.

The KV caches need a **rollback**: the target's pass wrote keys and values for all ``k`` proposals, and
the rejected ones must be forgotten. A :class:`KVCache` keeps no length of its own (every call passes
``start_pos``), so rolling back is just continuing from the shorter length: positions past it are never
read and are overwritten by the next round.

A draft is either a :class:`Llama` sharing the target's tokenizer (:class:`ModelDraft`: greedy, with its
own cache) or any function ``propose(tokens, k) -> list[int]``, such as :func:`prompt_lookup`, which
copies what followed the last few tokens when they appeared earlier in the text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .generate import GenerationConfig, check_prompt
from .model import Llama

Proposer = Callable[[list[int], int], list[int]]


@dataclass
class SpeculativeResult:
    """The new tokens of :func:`speculative_generate` and how the rounds went."""

    tokens: list[int]
    rounds: int = 0  # target forward passes
    proposed: int = 0  # draft tokens checked by the target
    accepted: int = 0  # of which the target agreed with
    accepted_per_round: list[int] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


class ModelDraft:
    """A smaller (cheaper) :class:`Llama` as the draft: it proposes its own greedy tokens.

    It keeps a KV cache of the tokens it has seen. Each call compares them with the text it is given:
    the common prefix stays cached, the rest (its own rejected proposals) is rolled back, and the new
    tokens are fed in one pass before ``k`` one-token steps.
    """

    def __init__(self, model: Llama, max_seq_len: int | None = None):
        self.model = model
        self.cache = model.new_kv_caches(1, max_seq_len)
        self.seen: list[int] = []  # the tokens whose keys and values are in self.cache, in order

    @torch.inference_mode()
    def __call__(self, tokens: list[int], k: int) -> list[int]:
        common = 0
        for a, b in zip(self.seen, tokens[:-1]):  # keep at least one token to feed: its logits are needed
            if a != b:
                break
            common += 1
        device = self.model.device
        new = torch.tensor([tokens[common:]], dtype=torch.long, device=device)  # (1, not yet cached)
        logits = self.model(new, common, self.cache)[0, -1]  # rollback: positions >= common are rewritten
        proposals, position = [], len(tokens)
        for i in range(k):
            proposals.append(int(logits.argmax()))
            if i == k - 1:
                break  # the last proposal is never fed to the draft: the target checks it
            logits = self.model(torch.tensor([[proposals[-1]]], device=device), position, self.cache)[0, -1]
            position += 1
        self.seen = tokens + proposals[:-1]
        return proposals


def prompt_lookup(ngram: int = 3) -> Proposer:
    """A draft without a model: find the last ``ngram`` tokens earlier in the text, propose what followed.

    (Saxena, 2023, "prompt lookup decoding".) Costs nothing and is right surprisingly often when the
    answer repeats the prompt (summaries, edits of code, quotations) or repeats itself. Tries shorter
    n-grams down to 1 when the long one does not occur; proposes nothing when no match is found.
    """

    def propose(tokens: list[int], k: int) -> list[int]:
        for n in range(min(ngram, len(tokens) - 1), 0, -1):
            tail = tokens[-n:]
            for start in range(len(tokens) - n - 1, -1, -1):  # the most recent earlier occurrence first
                if tokens[start : start + n] == tail:
                    return tokens[start + n : start + n + k]
        return []

    return propose


def layer_skip_draft(model: Llama, keep: Sequence[int]) -> Llama:
    """A draft that runs only the layers ``keep`` of ``model`` (then its final norm and head), sharing weights.

    Self-speculative decoding (Zhang et al., 2023; Elhoushi et al., 2024) uses a model's own early layers
    as the draft: no second model, no extra memory. Without training the model for it, the skipped
    layers' work is missing and the draft agrees with the full model rarely (chapter 06 measures it).
    """
    keep = list(keep)
    if not keep or any(not 0 <= i < len(model.layers) for i in keep):
        raise ValueError(f"keep must list layers of the model (0..{len(model.layers) - 1}), got {keep}")
    with torch.device("meta"):  # shapes only: every module is replaced by the model's own below
        draft = Llama(model.config.replace(n_layers=len(keep)))
    draft.tok_embeddings, draft.norm, draft.output = model.tok_embeddings, model.norm, model.output
    draft.layers = nn.ModuleList(model.layers[i] for i in keep)
    return draft.eval()


@torch.inference_mode()
def speculative_generate(
    target: Llama,
    draft: Llama | Proposer,
    prompt_tokens: Sequence[int],
    max_new_tokens: int,
    k: int = 4,
    stop_tokens: Iterable[int] = (),
) -> SpeculativeResult:
    """Greedy decoding of ``target`` sped up by a ``draft`` that proposes ``k`` tokens per round.

    Returns the same new tokens as ``generate(target, prompt_tokens, max_new_tokens,
    stop_tokens=stop_tokens)`` (see the module's docstring for why and for the one caveat, float
    rounding near a tie), with counts of the rounds and of the proposals accepted.
    """
    prompt = list(prompt_tokens)
    stop = GenerationConfig(max_new_tokens, stop_tokens=stop_tokens).stop_tokens  # greedy; checks the settings
    check_prompt(target, prompt, max_new_tokens)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (tokens proposed per round) must be an int >= 1, got {k!r}")
    if isinstance(draft, Llama):
        if draft.config.vocab_size != target.config.vocab_size:
            raise ValueError(
                f"the draft's vocabulary ({draft.config.vocab_size}) differs from the target's "
                f"({target.config.vocab_size}): they must share one tokenizer"
            )
        draft = ModelDraft(draft, len(prompt) + max_new_tokens)
    device = target.device
    cache = target.new_kv_caches(1, len(prompt) + max_new_tokens)
    tokens, cached = list(prompt), 0  # the target's cache holds tokens[:cached]
    result = SpeculativeResult([])
    while len(result.tokens) < max_new_tokens:
        room = min(k, max_new_tokens - len(result.tokens) - 1)  # all accepted gives len(proposals) + 1 tokens
        proposals = list(draft(tokens, room))[:room] if room > 0 else []
        fed = torch.tensor([tokens[cached:] + proposals], dtype=torch.long, device=device)  # (1, new + proposed)
        logits = target(fed, cached, cache)[0, -(len(proposals) + 1) :]  # (proposed + 1, vocab)
        choices = logits.argmax(dim=-1).tolist()  # the target's greedy token after each prefix
        accepted = 0
        while accepted < len(proposals) and proposals[accepted] == choices[accepted]:
            accepted += 1
        new = proposals[:accepted] + [choices[accepted]]
        result.rounds += 1
        result.proposed += len(proposals)
        result.accepted += accepted
        result.accepted_per_round.append(accepted)
        cached = len(tokens) + accepted  # rollback: the rejected proposals' keys and values are forgotten
        for token in new:
            if token in stop:
                return result
            result.tokens.append(token)
            tokens.append(token)
    return result
