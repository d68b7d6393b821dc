"""Generation tasks: the model writes an answer, which is compared with the reference after normalisation.

Closed-book question answering (the LLaMA paper's NaturalQuestions and TriviaQA) and maths word problems
(GSM8k) are scored this way. The answer is generated greedily, or sampled, up to a *stop sequence*: text
such as ``"\\n\\n"`` that ends an answer in the prompt's format (a stop *token* such as end-of-text ends it
too). Stop sequences are text, not tokens: a tokenizer may put ``"\\n\\n"`` inside a longer token, so the
decoded text is searched after every new token and cut where the first stop sequence begins.

One answer at a time (:func:`generate_until`) reads the model's weights once per token of one answer;
:func:`generate_until_batch` writes the answers of many prompts together (the package's
:func:`~llama_from_scratch.generate.generate_batch`), reading the weights once per token for all of them, and
gives the same greedy answers. A row that meets a stop sequence is finished there and extended no further.

*Exact match* compares answers after the usual normalisation (SQuAD's, Rajpurkar et al. 2016): lower case,
no punctuation, no articles (a, an, the), single spaces. *maj@k* (Wang et al. 2022, self-consistency; the
LLaMA paper's GSM8k and MATH columns) samples ``k`` answers and keeps the most frequent one.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from ..generate import GenerationConfig, generate_batch, generate_stream
from ..model import Llama
from ..tokenization.tokenizer import Tokenizer

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def generate_until(
    model: Llama,
    tokenizer: Tokenizer,
    prompt: Sequence[int],
    stop: Sequence[str] = (),
    max_new_tokens: int = 64,
    stop_tokens: Iterable[int] = (),
    **sampling,
) -> str:
    """The text the model writes after ``prompt`` (token ids), cut before the first of the ``stop`` sequences.

    Ends at a stop sequence, a token of ``stop_tokens`` (the tokenizer's end-of-sequence token is always
    one) or after ``max_new_tokens`` tokens. ``sampling``: ``temperature``, ``top_k``, ``top_p``, ``seed``,
    the fields of :class:`~llama_from_scratch.generate.GenerationConfig` (greedy by default).
    """
    config = _config(tokenizer, stop, max_new_tokens, stop_tokens, sampling)
    new: list[int] = []
    text = ""
    for token in generate_stream(model, prompt, config):
        new.append(token)
        text = tokenizer.decode(new)
        if (answer := cut_at_stop(text, stop)) is not None:
            return answer
    return text


def generate_until_batch(
    model: Llama,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    stop: Sequence[str] = (),
    max_new_tokens: int = 64,
    stop_tokens: Iterable[int] = (),
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    **sampling,
) -> list[str]:
    """:func:`generate_until` for many ``prompts`` (token ids, of any lengths), ``batch_size`` at a time.

    The prompts are sorted by length first, so that a batch holds prompts of about one length and little
    padding is computed; the answers come back in the prompts' order. Each batch is one
    :func:`~llama_from_scratch.generate.generate_batch` call: a row ends at a stop token, or as soon as its
    decoded text holds a stop sequence (checked on the text, after every token, as lm-evaluation-harness's
    ``until``), and is cut there. Greedy answers are :func:`generate_until`'s (up to float rounding: a batch
    sums in another order). Sampled answers are reproducible with ``seed``: the ``j``-th batch draws from a
    generator seeded with ``seed + j``, so they depend on which prompts share a batch (the samples of one
    prompt: ``[prompt] * n``). ``progress(n)`` is called as each batch of ``n`` prompts is done.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    config = _config(tokenizer, stop, max_new_tokens, stop_tokens, sampling)

    def finished(tokens: list[int]) -> bool:
        return cut_at_stop(tokenizer.decode(tokens), stop) is not None

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers = [""] * len(prompts)
    for j, start in enumerate(range(0, len(order), batch_size)):
        rows = order[start : start + batch_size]
        seeded = config if config.seed is None else replace(config, seed=config.seed + j)
        new = generate_batch(model, [prompts[i] for i in rows], seeded, finished=finished if stop else None)
        for i, tokens in zip(rows, new):
            text = tokenizer.decode(tokens)
            answer = cut_at_stop(text, stop)
            answers[i] = text if answer is None else answer
        if progress:
            progress(len(rows))
    return answers


def cut_at_stop(text: str, stop: Sequence[str]) -> str | None:
    """``text`` up to where the first of the ``stop`` sequences begins; None when none of them is in it."""
    cut = min((text.find(s) for s in stop if s in text), default=-1)
    return text[:cut] if cut >= 0 else None


def _config(
    tokenizer: Tokenizer, stop: Sequence[str], max_new_tokens: int, stop_tokens: Iterable[int], sampling: dict
) -> GenerationConfig:
    """The settings of an answer: its stop tokens and the tokenizer's end-of-sequence token; ``sampling``'s."""
    if any(not s for s in stop):
        raise ValueError(f"stop sequences must not be empty, got {list(stop)!r}")
    stop_tokens = set(stop_tokens) | ({tokenizer.eos_id} if tokenizer.eos_id is not None else set())
    return GenerationConfig(max_new_tokens, stop_tokens=stop_tokens, **sampling)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation and articles removed, whitespace collapsed."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, references: Sequence[str]) -> bool:
    """True when the normalised prediction equals one of the normalised references."""
    return normalize_answer(prediction) in {normalize_answer(r) for r in references}


def majority_vote(answers: Sequence[str]) -> str:
    """The most frequent answer after normalisation (the earliest of the tied ones), as first written."""
    if not answers:
        raise ValueError("majority_vote needs at least one answer")
    counts = Counter(normalize_answer(a) for a in answers)
    best = max(counts.values())
    return next(a for a in answers if counts[normalize_answer(a)] == best)
