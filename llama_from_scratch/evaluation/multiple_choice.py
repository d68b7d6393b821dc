"""Multiple choice by likelihood: the choice the model finds most probable after the question is its answer.

No text is generated. Each choice is scored by :mod:`.likelihood` as a continuation of the item's context,
and the highest score wins (Brown et al. 2020; the LLaMA paper, section 3). A raw sum of log-probabilities
favours short choices (every extra token can only lower it), so the score is normalised:

* ``"none"``: log P(choice | context), the sum;
* ``"token"``: divided by the choice's number of tokens (the mean per token);
* ``"char"``: divided by its number of characters (Gao et al. 2021; lm-evaluation-harness's ``acc_norm``,
  which LLaMA uses for most multiple-choice tasks; characters do not depend on the tokenizer), not counting
  the spaces that separate it from the context, as lm-evaluation-harness counts them;
* ``"answer"``: log P(choice | context) - log P(choice | "Answer:"): how much more probable the question
  makes the choice than it is anyway (Brown et al. 2020; LLaMA's OpenBookQA and BoolQ).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..model import Llama
from ..tokenization.tokenizer import Tokenizer
from .likelihood import Request, Scored, encode_pair, fit_context, score

NORMALIZATIONS = ("none", "token", "char", "answer")
BASELINE_CONTEXT = "Answer:"  # the context of the "answer" normalisation's baseline (Brown et al. 2020)


@dataclass(frozen=True)
class MultipleChoiceItem:
    """A question (``context``, ending where a choice goes on), its ``choices`` (each starting with the space
    that separates it from the context) and the index of the right one."""

    context: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class ChoiceResult:
    """One item answered: the score of each choice (normalised), the index picked, the token log-probabilities."""

    scores: tuple[float, ...]
    predicted: int
    correct: bool
    scored: tuple[Scored, ...]


def choice_scores(
    scored: Sequence[Scored], choices: Sequence[str], normalization: str, baseline: Sequence[Scored] | None = None
) -> list[float]:
    """The normalised score of each choice from its :class:`Scored` (and, for ``"answer"``, its baseline's)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}")
    if normalization == "none":
        return [s.logprob for s in scored]
    if normalization == "token":
        return [s.logprob / len(s.token_logprobs) for s in scored]
    if normalization == "char":
        return [s.logprob / max(1, len(choice.lstrip(" "))) for s, choice in zip(scored, choices)]
    if baseline is None:
        raise ValueError('the "answer" normalization needs the baseline scores of the choices after "Answer:"')
    return [s.logprob - b.logprob for s, b in zip(scored, baseline)]


def argmax(scores: Sequence[float]) -> int:
    """The index of the highest score; the first on a tie."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def answer_choices(
    model: Llama,
    tokenizer: Tokenizer,
    items: Sequence[MultipleChoiceItem],
    contexts: Sequence[str] | None = None,
    normalization: str = "char",
    batch_size: int = 8,
    bos: bool = True,
) -> list[ChoiceResult]:
    """Each item answered by likelihood. ``contexts``: the prompts to score the choices after (with few-shot
    examples in front, :mod:`.few_shot`), by default the items' own contexts."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}")
    contexts = [item.context for item in items] if contexts is None else list(contexts)
    limit = model.config.max_seq_len
    requests = [_request(tokenizer, context, item.choices, bos, limit) for context, item in zip(contexts, items)]
    scored = score(model, requests, batch_size)
    baselines = [None] * len(items)
    if normalization == "answer":
        baseline_requests = [_request(tokenizer, BASELINE_CONTEXT, item.choices, bos, limit) for item in items]
        baselines = score(model, baseline_requests, batch_size)
    results = []
    for item, item_scored, baseline in zip(items, scored, baselines):
        scores = choice_scores(item_scored, item.choices, normalization, baseline)
        predicted = argmax(scores)
        results.append(ChoiceResult(tuple(scores), predicted, predicted == item.answer, tuple(item_scored)))
    return results


def _request(tokenizer: Tokenizer, context: str, choices: Sequence[str], bos: bool, max_seq_len: int) -> Request:
    """The item's request; a context too long for the model keeps its end (:func:`.likelihood.fit_context`)."""
    pairs = [encode_pair(tokenizer, context, choice, bos) for choice in choices]
    contexts = {tuple(c) for c, _ in pairs}
    if len(contexts) != 1:  # a choice without its leading space can merge with the context's last token
        raise ValueError(f"the choices {list(choices)} tokenize the context differently: start each with a space")
    longest = max((c for _, c in pairs), key=len)
    return Request(fit_context(pairs[0][0], longest, max_seq_len), tuple(tuple(c) for _, c in pairs))
