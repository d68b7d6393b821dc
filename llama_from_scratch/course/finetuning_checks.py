"""Chapter 10's exercises (fine-tuning): a LoRA layer (forward and merge), and the loss mask of a conversation.

Each check calls the learner's code through :func:`~.feedback.answer` (the mask through the skeleton,
:func:`~.feedback.check_cases`), compares with the arithmetic of :mod:`llama_from_scratch.finetuning`
(``LoRALinear``, ``tokenize_conversation``), and raises :class:`~.feedback.CheckFailed` naming the case,
what differed and, when the answer matches a common mistake listed here, its likely cause. Every
message line fits what ``nbgrader validate`` shows (:data:`.feedback.LINE_WIDTH`).

The LoRA check is given a class, not a function: it builds the learner's layer around a known
``nn.Linear``, looks at its initial state, then writes known values into ``lora_A`` and ``lora_B`` so
that the forward pass and the merge can be compared number for number. A catalogued mistake is a
class too (a factory ``(base, rank, alpha) -> layer``), built and filled the same way.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..finetuning.lora import LoRALinear
from ..finetuning.sft import IGNORE_INDEX, mask_labels
from .feedback import (
    Case,
    Mistake,
    answer,
    as_list,
    check_cases,
    close,
    diagnose,
    fail,
    passed,
    tensor_difference,
)

# --- the common wrong answers: a LoRA layer --------------------------------------------------------


class _LoRA(nn.Module):
    """A LoRA layer as the chapter writes it, or with one of the common mistakes (the keyword arguments)."""

    def __init__(self, base, rank, alpha, *, b_init="zero", a_init="random", scale="alpha/rank", freeze=True,
                 merge="right", base_path=True, forward_scale=True):  # fmt: skip
        super().__init__()
        self.base = base.requires_grad_(not freeze)
        out_features, in_features = base.weight.shape
        generator = torch.Generator().manual_seed(rank)
        a = torch.zeros(rank, in_features) if a_init == "zero" else torch.randn(rank, in_features, generator=generator)
        b = torch.zeros(out_features, rank)
        if b_init == "random":
            b = torch.randn(out_features, rank, generator=generator)
        self.lora_A, self.lora_B = nn.Parameter(a), nn.Parameter(b)
        self.scaling = {"alpha/rank": alpha / rank, "alpha": alpha, "rank/alpha": rank / alpha}[scale]
        self.merge_kind, self.base_path, self.forward_scale = merge, base_path, forward_scale

    def forward(self, x):
        low = (x @ self.lora_A.T) @ self.lora_B.T * (self.scaling if self.forward_scale else 1)  # (..., out_features)
        return self.base(x) + low if self.base_path else low

    @torch.no_grad()
    def merge(self):
        weight, delta = self.base.weight, self.lora_B @ self.lora_A  # (out, in)
        if self.merge_kind == "no scale":
            merged = weight + delta
        elif self.merge_kind == "transposed":  # fits a square layer only
            merged = weight + self.scaling * delta.T
        elif self.merge_kind == "delta only":
            merged = self.scaling * delta
        else:
            merged = weight + self.scaling * delta
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        layer.weight = nn.Parameter(merged.clone(), requires_grad=False)
        return layer


def _variant(**mistake) -> Callable[[nn.Linear, int, float], nn.Module]:
    return lambda base, rank, alpha: _LoRA(base, rank, alpha, **mistake)


B_RANDOM = (
    "looks like lora_B starts random:\n"
    "B must start at zero, so that the wrapped layer IS the base layer at step 0\n"
    "(torch.zeros(out_features, rank)); A starts random"
)
A_ZERO = (
    "looks like lora_A starts at zero as well:\n"
    "with A = 0 and B = 0 neither gets a gradient and nothing ever trains;\n"
    "start A random (torch.randn(rank, in_features) / math.sqrt(in_features), say)"
)
NOT_FROZEN = (
    "looks like the base layer's weight still trains:\n"
    "freeze it (base.requires_grad_(False)); only lora_A and lora_B are trained"
)
LORA_LINEAR = [
    Mistake(B_RANDOM, _variant(b_init="random")),
    Mistake(A_ZERO, _variant(a_init="zero")),
    Mistake(NOT_FROZEN, _variant(freeze=False)),
    Mistake(
        "looks like the update is scaled by alpha:\n"
        "the scale is alpha / rank, so that the update's size does not grow with the rank",
        _variant(scale="alpha"),
    ),
    Mistake(
        "looks like the update is scaled by rank / alpha:\nthe scale is alpha / rank", _variant(scale="rank/alpha")
    ),
    Mistake(
        "looks like forward() leaves out the scale:\n"
        "y = base(x) + (alpha / rank) * (x @ A.T) @ B.T: scale the low-rank path\n"
        "in forward() as in merge()",
        _variant(forward_scale=False),
    ),
    Mistake(
        "looks like only the low-rank path is returned:\n"
        "y = base(x) + (alpha / rank) * (x @ A.T) @ B.T: add the frozen layer's output",
        _variant(base_path=False),
    ),
    Mistake(
        "looks like merge() forgets the scale:\nthe merged weight is W + (alpha / rank) * B @ A",
        _variant(merge="no scale"),
    ),
    Mistake(
        "looks like merge() adds (B @ A).T:\n"
        "nn.Linear's weight is (out_features, in_features), and so is B @ A: add it as it is",
        _variant(merge="transposed"),
    ),
    Mistake(
        "looks like merge() returns the update alone:\nthe merged weight is W + (alpha / rank) * B @ A, W included",
        _variant(merge="delta only"),
    ),
]

# --- the checks: a LoRA layer ----------------------------------------------------------------------


def _lora_cases() -> list[tuple[str, int, int, int, float]]:
    """``(label, out_features, in_features, rank, alpha)``; a square layer first, where a transposed update
    still fits and so is found by its values, and alpha != rank everywhere, so each wrong scale shows."""
    return [
        ("8 x 8 layer, rank 2, alpha 16", 8, 8, 2, 16.0),
        ("12 x 16 layer, rank 4, alpha 8", 12, 16, 4, 8.0),
        ("6 x 20 layer, rank 8, alpha 4", 6, 20, 8, 4.0),
    ]


def _filled(layer: nn.Module, a: torch.Tensor, b: torch.Tensor) -> nn.Module:
    with torch.no_grad():
        layer.lora_A.copy_(a)
        layer.lora_B.copy_(b)
    return layer


def _lora_diagnosis(got: torch.Tensor, base: nn.Linear, rank: int, alpha: float, run: Callable) -> str | None:
    """The cause of the first catalogued LoRA mistake whose layer, built on a copy of ``base`` and given to
    ``run(layer)``, gives ``got``. A float32 matmul of at most 20 terms: rounding stays far below 1e-5."""
    mistakes = [Mistake(m.cause, functools.partial(lambda m: run(m.answer(copy.deepcopy(base), rank, alpha)), m))
                for m in LORA_LINEAR]  # fmt: skip
    return diagnose(got, (), mistakes, close(1e-5, 1e-5))


def _parameter(layer: nn.Module, name: str, shape: tuple[int, int], label: str) -> nn.Parameter:
    value = getattr(layer, name, None)
    if not isinstance(value, nn.Parameter):
        kind = type(value).__name__ if value is not None else "nothing"
        raise fail(label, f"  self.{name}: expected an nn.Parameter, got {kind}")
    if tuple(value.shape) != shape:
        raise fail(
            label,
            f"  self.{name}: shape {tuple(value.shape)}, expected {shape}",
            "lora_A is (rank, in_features) and lora_B (out_features, rank): PEFT's shapes",
        )
    return value


def check_lora_linear(cls: Callable[..., nn.Module]) -> None:
    """``cls(base, rank, alpha)`` wraps a bias-free ``nn.Linear`` as the package's ``LoRALinear`` does:
    ``lora_A`` / ``lora_B`` parameters, B zero at first, the base frozen, ``forward`` and ``merge()``."""
    cases = _lora_cases()
    for seed, (label, out_features, in_features, rank, alpha) in enumerate(cases):
        generator = torch.Generator().manual_seed(seed)
        base = nn.Linear(in_features, out_features, bias=False)
        with torch.no_grad():
            base.weight.copy_(torch.randn(out_features, in_features, generator=generator) / math.sqrt(in_features))
        weight = base.weight.detach().clone()
        x = torch.randn(2, 3, in_features, generator=generator)  # (batch, seq, in): leading dimensions pass through
        name = f"MyLoRALinear({label})"
        layer = answer("MyLoRALinear", cls, base, rank, alpha, forbidden=[LoRALinear])
        if not isinstance(layer, nn.Module):
            raise fail(name, f"  expected an nn.Module, got {type(layer).__name__}")
        lora_a = _parameter(layer, "lora_A", (rank, in_features), name)
        lora_b = _parameter(layer, "lora_B", (out_features, rank), name)

        # the initial state: B zero, A not, only the adapters trainable, the base layer's output unchanged
        if bool((lora_b != 0).any()):
            raise fail(name, f"  lora_B has {int((lora_b != 0).sum())} nonzero entries before training", B_RANDOM)
        if not bool((lora_a != 0).any()):
            raise fail(name, "  lora_A is all zeros before training", A_ZERO)
        trainable = {id(p) for p in layer.parameters() if p.requires_grad}
        if base.weight.requires_grad or trainable != {id(lora_a), id(lora_b)}:
            extra = len(trainable - {id(lora_a), id(lora_b)}) + base.weight.requires_grad
            raise fail(name, f"  {extra} parameter(s) besides lora_A and lora_B require a gradient", NOT_FROZEN)
        with torch.no_grad():
            got = answer("MyLoRALinear.forward", layer, x, forbidden=[LoRALinear])
        # B = 0: the low-rank path adds zeros, so the output is the base layer's (up to the rounding of
        # another correct order of the same float32 sum of at most 20 terms, far below 1e-6)
        difference = tensor_difference(got, x @ weight.T, atol=1e-6, rtol=1e-6)
        if difference is not None:
            run = lambda m: _filled(m, lora_a.detach(), lora_b.detach())(x)  # noqa: E731
            raise fail(f"{name}, before training (B = 0)", difference, _lora_diagnosis(got, base, rank, alpha, run))

        # known adapters: the forward pass, the gradients, the merge
        a = torch.randn(rank, in_features, generator=generator)
        b = torch.randn(out_features, rank, generator=generator)
        _filled(layer, a, b)
        scaling = alpha / rank
        expected = x @ weight.T + scaling * (x @ a.T) @ b.T  # (2, 3, out)
        got = answer("MyLoRALinear.forward", layer, x, forbidden=[LoRALinear])
        # float32 sums of at most 20 terms of size ~1 each way: rounding stays below 1e-5 (feedback.compare_tensors)
        difference = tensor_difference(got, expected, atol=1e-5, rtol=1e-5)
        if difference is not None:
            run = lambda m: _filled(m, a, b)(x)  # noqa: E731
            raise fail(f"{name}, with given A and B", difference, _lora_diagnosis(got, base, rank, alpha, run))
        got.square().sum().backward()
        if lora_a.grad is None or lora_b.grad is None or not bool((lora_b.grad != 0).any()):
            raise fail(
                name,
                "  lora_A or lora_B got no gradient from forward()",
                "compute the low-rank path from the parameters themselves\n"
                "(no .data, .detach() or torch.no_grad() inside forward)",
            )
        merged = answer("MyLoRALinear.merge", layer.merge, forbidden=[LoRALinear])
        if not isinstance(merged, nn.Linear):
            raise fail(f"{name}.merge()", f"  expected an nn.Linear, got {type(merged).__name__}")
        difference = tensor_difference(merged.weight, weight + scaling * b @ a, atol=1e-5, rtol=1e-5)
        if difference is not None:
            run = lambda m: _filled(m, a, b).merge().weight  # noqa: E731
            cause = _lora_diagnosis(merged.weight, base, rank, alpha, run)
            raise fail(f"{name}.merge(), the weight", difference, cause)
        if not torch.equal(base.weight, weight):
            raise fail(
                f"{name}.merge()",
                "  the base layer's weight changed",
                "build a new nn.Linear for the merged weight; leave the wrapped layer as it was",
            )
    passed("LoRA layer", len(cases))


# --- the common wrong answers: the loss mask -------------------------------------------------------


def _mask(tokens, header, end_id, *, shift=True, shift_mask=True, train_end=True, train_header=False,
          everything=False, last_only=False, drop_last=False):  # fmt: skip
    """The targets of ``tokens[:-1]``, right or with one of the common mistakes (the keyword arguments)."""
    tokens, header = [int(t) for t in tokens], [int(t) for t in header]
    n, h = len(tokens), len(header)
    turns = []  # (first, stop) of every span that carries loss
    i = 0
    while i <= n - h:
        if tokens[i : i + h] != header:
            i += 1
            continue
        start = end = i + h
        while end < n and tokens[end] != end_id:
            end += 1
        stop = min(end + 1, n) if train_end else end  # the end-of-turn token belongs to the answer
        turns.append((i if train_header else start, stop))
        i = max(stop, start)
    if last_only:
        turns = turns[-1:]
    trained = [everything] * n
    for first, stop in turns:
        trained[first:stop] = [True] * (stop - first)
    if not shift:  # the targets of every position, or (drop_last) of tokens[:-1] but not shifted: token t itself
        kept = [t if keep else IGNORE_INDEX for t, keep in zip(tokens, trained)]
        return kept[:-1] if drop_last else kept
    keep = trained[:-1] if not shift_mask else trained[1:]  # the target of position t is token t + 1
    return [t if k else IGNORE_INDEX for t, k in zip(tokens[1:], keep)]


def _mistake(**kind) -> Callable:
    return lambda tokens, header, end_id: _mask(tokens, header, end_id, **kind)


MASK_LABELS = [
    Mistake(
        "looks like the labels are not shifted:\n"
        "the target of position t is token t + 1, so there are len(tokens) - 1 targets",
        _mistake(shift=False),
    ),
    Mistake(
        "looks like the labels are not shifted (the last one dropped instead of the first):\n"
        "the target of position t is token t + 1: labels come from tokens[1:],\n"
        "with the mask of tokens[1:]",
        _mistake(shift=False, drop_last=True),
    ),
    Mistake(
        "looks like the mask is one position off:\n"
        "the target of position t is tokens[t + 1]; keep it when tokens[t + 1], the token\n"
        "to be predicted, is in an answer (not when tokens[t] is)",
        _mistake(shift_mask=False),
    ),
    Mistake(
        "looks like the end-of-turn token carries no loss:\n"
        "train it with the answer (up to and including end_id):\n"
        "that is how the model learns to stop",
        _mistake(train_end=False),
    ),
    Mistake(
        "looks like the assistant's header carries loss:\n"
        "the header is the template's, part of the prompt; train from the token after it",
        _mistake(train_header=True),
    ),
    Mistake(
        "looks like every token carries loss (the system's and user's too):\n"
        "only the assistant's answers are targets; every other target is -100",
        _mistake(everything=True),
    ),
    Mistake(
        "looks like only the last answer is trained:\nevery assistant turn of the conversation carries loss",
        _mistake(last_only=True),
    ),
]

# --- the checks: the loss mask ---------------------------------------------------------------------

# Token ids made up for the synthetic cases, ChatML-like: <|im_start|> 1, <|im_end|> 2, "\n" 10,
# "system" 20, "user" 21, "assistant" 22; every other number is a word.
START, END, NEWLINE, SYSTEM, USER, ASSISTANT = 1, 2, 10, 20, 21, 22
HEADER = [START, ASSISTANT, NEWLINE]


# Llama 2's format, made-up ids: "[/INST]" (733, 28748, 28793) opens an answer, EOS (2) ends it
INST = [733, 28748, 28793]


def _turn(role: int, *words: int) -> list[int]:
    return [START, role, NEWLINE, *words, END, NEWLINE]


@functools.cache
def _smollm2_conversation() -> tuple[list[int], list[int], int, list[int]] | None:
    """A real conversation on SmolLM2's tokenizer: tokens, header, end id and the package's labels (read once)."""
    from ..chat import CHATML_TEMPLATE
    from ..tokenization.chat import encode_chat
    from ..checkpoints.gguf import read_gguf_tokenizer
    from ..checkpoints.offline import smollm2_path
    from ..finetuning.sft import tokenize_conversation

    path = smollm2_path()
    if path is None:
        return None
    tokenizer = read_gguf_tokenizer(path)
    messages = [
        {"role": "system", "content": "You answer in one line."},
        {"role": "user", "content": "Who wrote Hamlet?"},
        {"role": "assistant", "content": "Shakespeare."},
        {"role": "user", "content": "And Macbeth?"},
        {"role": "assistant", "content": "Shakespeare, too."},
    ]
    example = tokenize_conversation(tokenizer, CHATML_TEMPLATE, messages)
    header = encode_chat(tokenizer, "<|im_start|>assistant\n")
    return example.tokens, header, tokenizer.eos_id, example.labels


def _mask_cases() -> list[tuple[str, list[int], list[int], int, list[int] | None]]:
    """``(label, tokens, header, end_id, expected or None)``: None means :func:`_mask`'s right answer."""
    cases = [
        ("one question, one answer", _turn(USER, 30, 31, 32) + _turn(ASSISTANT, 40, 41), HEADER, END, None),
        (
            "a system prompt and two answers",
            _turn(SYSTEM, 50, 51) + _turn(USER, 30, 31) + _turn(ASSISTANT, 40) + _turn(USER, 33)
            + _turn(ASSISTANT, 41, 42, 43),
            HEADER, END, None,
        ),  # fmt: skip
        ("the answer ends the tokens", _turn(USER, 30) + _turn(ASSISTANT, 40, 41)[:-1], HEADER, END, None),
        ("no answer yet (a prompt)", _turn(USER, 30, 31) + HEADER, HEADER, END, None),
        ("no header at all", [5, 6, 7], HEADER, END, None),
        ("Llama 2's format, two answers", [1, 733, 60, 61, *INST, 70, 71, 2, 1, 733, 62, *INST, 72, 2], INST, 2, None),
        ("an answer without its end", [1, 22, 10, 40, 41], [1, 22, 10], 2, None),
    ]
    real = _smollm2_conversation()
    if real is not None:
        tokens, header, end_id, labels = real
        cases.append(("SmolLM2's tokens, ChatML, two answers", tokens, header, end_id, labels[1:]))
    return cases


def check_mask_labels(fn: Callable[[list[int], list[int], int], Sequence[int]]) -> None:
    """``fn(tokens, header, end_id)`` -> the ``len(tokens) - 1`` targets of ``tokens[:-1]``: the next token where
    it belongs to an assistant's answer (the tokens after each ``header`` up to and including ``end_id``), else -100."""
    cases = [
        Case(
            f"my_mask_labels({label})",
            (tokens, header, end_id),
            _mask(tokens, header, end_id) if expected is None else expected,
        )
        for label, tokens, header, end_id, expected in _mask_cases()
    ]

    def ints(case, given, got):
        if not isinstance(got, list) or not all(isinstance(t, int) for t in got):
            raise fail(case.label, f"  expected a list of ints (or a 1-D tensor), got {type(got).__name__}")

    check_cases(
        "loss mask", "my_mask_labels", fn, cases, mistakes=MASK_LABELS, before=ints, forbidden=[mask_labels],
        convert=lambda got: as_list(got.tolist() if isinstance(got, torch.Tensor) else got),
    )
