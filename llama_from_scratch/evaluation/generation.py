"""Generation tasks: the model writes an answer, which is compared with the reference after normalisation.

Closed-book question answering (the LLaMA paper's NaturalQuestions and TriviaQA) and maths word problems
(GSM8k) are scored this way. The answer is generated greedily, or sampled, up to a *stop sequence*: text
such as ``"\\n\\n"`` that ends an answer in the prompt's format (a stop *token* such as end-of-text ends it
too). Stop sequences are text, not tokens: a tokenizer may put ``"\\n\\n"`` inside a longer token, so the
decoded text is searched after every new token and cut where the first stop sequence begins.

*Exact match* compares answers after the usual normalisation (SQuAD's, Rajpurkar et al. 2016): lower case,
no punctuation, no articles (a, an, the), single spaces. *maj@k* (Wang et al. 2022, self-consistency; the
LLaMA paper's GSM8k and MATH columns) samples ``k`` answers and keeps the most frequent one.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

from ..generate import GenerationConfig, generate_stream
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
    if any(not s for s in stop):
        raise ValueError(f"stop sequences must not be empty, got {list(stop)!r}")
    stop_tokens = set(stop_tokens) | ({tokenizer.eos_id} if tokenizer.eos_id is not None else set())
    new: list[int] = []
    text = ""
    config = GenerationConfig(max_new_tokens, stop_tokens=stop_tokens, **sampling)
    for token in generate_stream(model, prompt, config):
        new.append(token)
        text = tokenizer.decode(new)
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        if cut >= 0:
            return text[:cut]
    return text


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
