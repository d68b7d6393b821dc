"""Supervised fine-tuning data: conversations turned into tokens, with the loss on the assistant's tokens only.

An instruction-tuned model is trained on conversations written in its chat template (:mod:`..chat`).
The model should learn to *answer*, not to write questions, so only the assistant's tokens are
targets; every other target is ``-100``, the ``ignore_index`` that :meth:`Llama.loss` skips::

    <|im_start|>user\\nWhich play?...<|im_end|>\\n<|im_start|>assistant\\n Hamlet <|im_end|> \\n
    -100 -100 ...                                          -100         Hamlet <|im_end|> -100

The end-of-turn marker carries loss too: that is how the model learns to stop.

How the tokens are cut: for each assistant message the conversation before it is rendered with the
generation prompt (exactly the prompt a chat would give the model) and the text the answer adds is
encoded after it. The prompt tokens are therefore those the model sees at inference, and the answer
tokens those it would have to generate.

Batches are padded on the right. For a causal model that needs no attention mask: position ``t``
attends only to positions ``<= t``, so a real token never sees the padding after it, its RoPE positions
are those of the sequence alone, and the padded positions' targets are ``-100``. (Packing several
conversations into one row would need a block-diagonal mask, which the model's attention does not take.)
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..chat import render_chat
from ..checkpoints.atomic import atomic_write
from ..cross_entropy import linear_cross_entropy
from ..files import regular_file
from ..model import Llama
from ..tokenization.chat import chat_stop_tokens, encode_chat, special_texts
from ..tokenization.tokenizer import Tokenizer
from ..training.train import TrainConfig

IGNORE_INDEX = -100  # the target that carries no loss (PyTorch's and Llama.loss's default)


@dataclass
class Example:
    """One conversation as tokens: ``labels[i]`` is ``tokens[i]`` where the assistant wrote it, else -100."""

    tokens: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.tokens)


def check_messages(messages: object, where: str = "conversation") -> list[dict[str, str]]:
    """``messages`` if it is a list of ``{"role": ..., "content": str}`` ending with an assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: expected a non-empty list of messages, got {type(messages).__name__}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError(f"{where}: message {i} must be an object with a string 'content'")
        if message.get("role") not in ("system", "user", "assistant"):
            raise ValueError(
                f"{where}: message {i} has role {message.get('role')!r}; expected system, user or assistant"
            )
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the last message must be the assistant's (the answer to learn)")
    return messages


def mask_labels(context: list[int], answer: list[int], stop_tokens: Collection[int]) -> list[int]:
    """The labels of one turn's tokens, ``context + answer``: which of them the model learns to write.

    ``-100`` for the ``context`` (the conversation so far and the assistant's header: given, not learnt),
    the ``answer``'s own ids up to and including its first end-of-turn token of ``stop_tokens`` (that is
    how the model learns to stop), and ``-100`` for what the template writes after that token.
    Returns ``len(context) + len(answer)`` ids.
    """
    end = next((j + 1 for j, token in enumerate(answer) if token in stop_tokens), len(answer))
    return [IGNORE_INDEX] * len(context) + answer[:end] + [IGNORE_INDEX] * (len(answer) - end)


def tokenize_conversation(tokenizer: Tokenizer, template: str, messages: list[dict[str, str]]) -> Example:
    """Render ``messages`` with ``template`` and encode them, labelling the assistant's tokens only."""
    check_messages(messages)
    variables = special_texts(tokenizer)
    stops = chat_stop_tokens(tokenizer)  # EOS, or Llama 3's <|eot_id|>: where an answer ends
    tokens: list[int] = []
    labels: list[int] = []
    done = ""  # the text encoded so far
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render_chat(template, messages[:i], add_generation_prompt=True, **variables)
        full = render_chat(template, messages[: i + 1], add_generation_prompt=False, **variables)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise ValueError(
                f"the chat template does not render message {i} after the conversation before it; "
                "loss masking needs a template that only appends"
            )
        context = encode_chat(tokenizer, prompt[len(done) :])
        answer = encode_chat(tokenizer, full[len(prompt) :])
        tokens += context + answer
        labels += mask_labels(context, answer, stops)
        done = full
    return Example(tokens, labels)


def padding_id(tokenizer: Tokenizer) -> int:
    """The input id of padding: the tokenizer's pad token, else its end of sequence, else 0 (any valid id
    would do, see :func:`pad_batch`; a real one reads better when a batch is printed)."""
    return next((i for i in (tokenizer.pad_id, tokenizer.eos_id) if i is not None), 0)


def pad_batch(examples: list[Example], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)``, both ``(batch, longest - 1)``, padded on the right.

    ``inputs`` are each example's tokens but the last; ``targets`` its labels shifted by one (the target
    of position ``t`` is the label of token ``t + 1``). Padding gets ``pad_id`` as input (any valid id:
    nothing real attends to it) and -100 as target.
    """
    length = max(len(e) for e in examples) - 1
    inputs = torch.full((len(examples), length), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example) - 1
        inputs[row, :n] = torch.tensor(example.tokens[:-1])
        targets[row, :n] = torch.tensor(example.labels[1:])
    return inputs, targets


def sft_loss(model: Llama, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """:meth:`Llama.loss` computed on the labelled positions only: the same mean over the assistant's tokens.

    In a conversation most targets are -100 (the question is long, the answer short), and the output
    head is the largest matrix product of a small model (SmolLM2: 49,152 x 576). Only the rows that carry
    loss go through it. ``inputs``, ``targets``: ``(batch, seq)``.
    """
    hidden = model.hidden_states(inputs)  # (batch, seq, dim)
    kept = targets != IGNORE_INDEX  # (batch, seq)
    return linear_cross_entropy(hidden[kept], model.output.weight, targets[kept])  # hidden[kept]: (n, dim)


def sample_indices(
    n: int, step: int, batch_size: int, seed: int, stream: int = 0, rank: int = 0, world_size: int = 1
) -> list[int]:
    """Which of ``n`` examples make the batch of ``step``: a pure function of ``(seed, stream, step)``, so a
    resumed run draws what the uninterrupted one would have (as
    :func:`~llama_from_scratch.training.dataset.get_batch` does). Of a global batch of
    ``batch_size * world_size`` examples, process ``rank`` takes its ``batch_size``."""
    rows = np.random.default_rng([seed, stream, step]).integers(0, n, size=batch_size * world_size)
    return rows[rank * batch_size : (rank + 1) * batch_size].tolist()


@torch.no_grad()
def sft_validation(model: Llama, examples: list[Example], batch_size: int, pad_id: int) -> dict[str, float]:
    """The loss on every held-out example's assistant tokens, in nats per token."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        inputs, targets = pad_batch(examples[start : start + batch_size], pad_id)
        n = int((targets != IGNORE_INDEX).sum())
        total += sft_loss(model, inputs.to(model.device), targets.to(model.device)).item() * n
        count += n
    model.train()
    return {"loss": total / count}


@dataclass
class SFTData:
    """Supervised fine-tuning's data as the training loop reads it (a
    :class:`~llama_from_scratch.training.train.TrainingData`): padded batches of ``train`` conversations
    drawn as a pure function of the step (:func:`sample_indices`), the loss on the assistant's tokens
    (:func:`sft_loss`), and the held-out loss on ``validation`` plus whatever ``measure(model)`` adds (the
    task's accuracy, say)."""

    train: list[Example]
    validation: list[Example]
    pad_id: int = 0
    measure: Callable[[Llama], dict[str, float]] | None = None

    def batch(self, index: int, config: TrainConfig, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, ...]:
        rows = sample_indices(len(self.train), index, config.batch_size, config.seed, rank=rank, world_size=world_size)
        return pad_batch([self.train[i] for i in rows], self.pad_id)

    def loss(self, model: Llama, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return sft_loss(model, inputs, targets)

    def validate(self, model: Llama, config: TrainConfig) -> dict[str, float]:
        figures = sft_validation(model, self.validation, config.batch_size, self.pad_id)
        return {**figures, **(self.measure(model) if self.measure is not None else {})}


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """A hash of what the tokenizer does: its class, every token's text and its special ids."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    for i in range(tokenizer.vocab_size):
        digest.update(tokenizer.decode([i]).encode("utf-8", "surrogatepass") + b"\0")
    digest.update(repr((tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)).encode())
    return digest.hexdigest()


def read_cache(path: Path, count: int, vocab_size: int) -> list[Example] | None:
    """The ``count`` examples of the cache file ``path``, or None if it does not hold exactly them.

    The file is read like any untrusted file (a regular file, no pickles: ``np.load``'s default), and its
    three arrays checked against each other: ``offsets`` rising from 0 to the length of ``tokens`` and
    ``labels``, with ``count + 1`` entries, every token id below ``vocab_size``.
    """
    try:
        with np.load(regular_file(path)) as saved:
            bounds, tokens, labels = saved["offsets"], saved["tokens"], saved["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if bounds.shape != (count + 1,) or tokens.shape != labels.shape or tokens.ndim != 1:
        return None
    if bounds[0] != 0 or bounds[-1] != len(tokens) or (np.diff(bounds) < 0).any():
        return None
    if len(tokens) and (tokens.min() < 0 or max(tokens.max(), labels.max()) >= vocab_size):
        return None
    if ((labels != IGNORE_INDEX) & (labels < 0)).any():
        return None
    tokens, labels = tokens.tolist(), labels.tolist()
    return [Example(tokens[a:b], labels[a:b]) for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]


def tokenize_dataset(
    conversations: list[list[dict[str, str]]],
    tokenizer: Tokenizer,
    template: str,
    cache_dir: str | Path | None = None,
) -> list[Example]:
    """Every conversation as an :class:`Example`, read from ``cache_dir`` when it was tokenized before.

    The cache file is named after a hash of the conversations, the template and the tokenizer
    (:func:`tokenizer_fingerprint`), so a change to any of them tokenizes afresh; it is written atomically.
    A cache file that cannot be read back (truncated, damaged, not ours) is only a cache: it is rebuilt.
    """
    path = None
    if cache_dir is not None:
        key = hashlib.sha256(json.dumps([conversations, template], sort_keys=True).encode())
        key.update(tokenizer_fingerprint(tokenizer).encode())
        path = Path(cache_dir) / f"sft-{key.hexdigest()[:20]}.npz"
        cached = read_cache(path, len(conversations), tokenizer.vocab_size) if path.exists() else None
        if cached is not None:
            return cached
    examples = [tokenize_conversation(tokenizer, template, c) for c in conversations]
    if path is not None:
        offsets = np.cumsum([0] + [len(e) for e in examples])
        with atomic_write(path) as tmp, open(tmp, "wb") as file:
            np.savez(
                file,
                tokens=np.array([t for e in examples for t in e.tokens], dtype=np.int64),
                labels=np.array([t for e in examples for t in e.labels], dtype=np.int64),
                offsets=offsets,
            )
    return examples
