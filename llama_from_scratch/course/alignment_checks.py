"""Chapter 13's exercises (RLHF): the reward model's ranking loss, GRPO's group advantages, PPO's clipped loss.

Each check calls the learner's function through the skeleton of :mod:`.feedback`
(:func:`~.feedback.check_cases`, which enforces the exercise's forbidden calls), compares with the package
(``alignment.losses``) and raises :class:`~.feedback.CheckFailed` naming the case, what differed and, when
the answer matches a common mistake listed here, its likely cause. Every message line fits what
``nbgrader validate`` shows.

The cases are module constants (:data:`BT_CASES`, :data:`GROUP_CASES`, :data:`PPO_CASES`) that the hidden
tests of the solution notebook compute by hand, so that a ✓ here means full marks there. PPO's loss is checked
with its gradient: a loss that forgets to detach the old log-probabilities has the right value and a gradient
of zero, which only the gradient shows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from ..alignment.losses import bradley_terry_loss, group_advantages, ppo_clip_loss
from .feedback import Case, Mistake, check_cases, close, diagnose, fail, refuses, tensor_difference

# --- the common wrong answers: the Bradley-Terry loss --------------------------------------------


def _bt(r_chosen, r_rejected, margin=0.0, *, z="right", form="softplus", reduce="mean"):
    """The ranking loss, or one of its common mistakes: ``z`` says how the margin and the sign enter."""
    gap = r_chosen - r_rejected
    z = {
        "right": gap - margin,
        "margin added": gap + margin,
        "no margin": gap,
        "swapped": -gap - margin,  # -log σ(r_rejected - r_chosen - m)
    }[z]
    if form == "softplus":
        losses = F.softplus(-z)  # -log σ(z)
    elif form == "naive":
        losses = -torch.log(torch.sigmoid(z))
    else:  # "no minus": log σ(z)
        losses = -F.softplus(-z)
    return losses.sum() if reduce == "sum" else losses.mean()


BRADLEY_TERRY = [
    Mistake(
        "looks like the sign of the difference is flipped (chosen and rejected\n"
        "swapped): the loss must be small when the CHOSEN answer scores higher,\n"
        "-log σ(r_c - r_r - m)",
        lambda c, r, m=0.0: _bt(c, r, m, z="swapped"),
    ),
    Mistake(
        "looks like the minus sign is missing: log σ(z) is a log-likelihood (<= 0),\n"
        "to be maximised; the LOSS is its negative, -log σ(r_c - r_r - m)",
        lambda c, r, m=0.0: _bt(c, r, m, form="no minus"),
    ),
    Mistake(
        "looks like the margin is added: it is SUBTRACTED, -log σ(r_c - r_r - m),\n"
        "so the chosen answer must win by at least m before the loss gets small",
        lambda c, r, m=0.0: _bt(c, r, m, z="margin added"),
    ),
    Mistake(
        "looks like the margin is ignored: -log σ(r_c - r_r - m)",
        lambda c, r, m=0.0: _bt(c, r, m, z="no margin"),
    ),
    Mistake(
        "looks like the losses of the pairs are summed: take their MEAN, so that\n"
        "the learning rate does not depend on the batch size",
        lambda c, r, m=0.0: _bt(c, r, m, reduce="sum"),
    ),
    Mistake(
        "looks like -log(sigmoid(z)): sigmoid(z) rounds to 0 for z below about -745\n"
        "(float64) and the loss becomes inf; -log σ(z) = softplus(-z) = -logsigmoid(z)\n"
        "is exact for every z (F.softplus or F.logsigmoid)",
        lambda c, r, m=0.0: _bt(c, r, m, form="naive"),
    ),
]

# --- the common wrong answers: the group advantages ----------------------------------------------


def _advantages(rewards, scale=True, eps=1e-6, *, mean_over="group", std="sample", with_eps=True, sign=1.0,
                always_scale=None):  # fmt: skip
    """GRPO's advantages, or one of the common mistakes (``mean_over``: ``"group"``, ``"all"``, ``"column"``;
    ``std``: ``"sample"``, ``"population"``, ``"all"``)."""
    if mean_over == "group":
        mean = rewards.mean(dim=1, keepdim=True)
    elif mean_over == "column":
        mean = rewards.mean(dim=0, keepdim=True)
    else:
        mean = rewards.mean()
    centered = sign * (rewards - mean)
    if not (scale if always_scale is None else always_scale):
        return centered
    spread = {
        "sample": lambda: rewards.std(dim=1, keepdim=True),
        "population": lambda: rewards.std(dim=1, keepdim=True, unbiased=False),
        "all": lambda: rewards.std(),
    }[std]()
    return centered / (spread + eps if with_eps else spread)


GROUP_ADVANTAGES = [
    Mistake(
        "looks like the mean of ALL rewards is subtracted: the baseline is the mean of\n"
        "each question's own group, rewards.mean(dim=1, keepdim=True)",
        lambda r, scale=True, eps=1e-6: _advantages(r, scale, eps, mean_over="all"),
    ),
    Mistake(
        "looks like the mean is taken over dim=0 (across questions): a row holds the G\n"
        "answers to one question; average along the row, dim=1",
        lambda r, scale=True, eps=1e-6: _advantages(r, scale, eps, mean_over="column"),
    ),
    Mistake(
        "looks like the advantages are mean - reward: an answer better than its\n"
        "siblings gets a POSITIVE advantage, reward - mean",
        lambda r, scale=True, eps=1e-6: _advantages(r, scale, eps, sign=-1.0),
    ),
    Mistake(
        "looks like the population standard deviation (divided by G): use the\n"
        "sample one, divided by G - 1 (torch's std default, as GRPO's TRL code)",
        lambda r, scale=True, eps=1e-6: _advantages(r, scale, eps, std="population"),
    ),
    Mistake(
        "looks like the standard deviation of ALL rewards: divide by each group's own,\n"
        "rewards.std(dim=1, keepdim=True)",
        lambda r, scale=True, eps=1e-6: _advantages(r, scale, eps, std="all"),
    ),
    Mistake(
        "looks like eps is missing: a group whose answers all got the same reward has\n"
        "std 0, and 0 / 0 is NaN; divide by std + eps (its advantages are then 0)",
        lambda r, scale=True, eps=1e-6: _advantages(r, scale, eps, with_eps=False),
    ),
    Mistake(
        "looks like scale is ignored, the differences left undivided: with\n"
        "scale=True divide them by the group's standard deviation + eps",
        lambda r, scale=True, eps=1e-6: _advantages(r, scale, eps, always_scale=False),
    ),
    Mistake(
        "looks like scale is ignored, the differences always divided: with\n"
        "scale=False (Dr. GRPO) return reward - mean as it is",
        lambda r, scale=True, eps=1e-6: _advantages(r, scale, eps, always_scale=True),
    ),
]

# --- the common wrong answers: PPO's clipped loss ------------------------------------------------


def _ppo(logprobs, old_logprobs, advantages, mask, clip=0.2, *, ratio="right", combine="min", count="mask",
         sign=-1.0, detach=True, expand=True):  # fmt: skip
    """PPO's clipped loss, or one of its common mistakes (see :data:`PPO_CLIP_LOSS`)."""
    if advantages.ndim == logprobs.ndim - 1:
        advantages = advantages[..., None] if expand else advantages[None, :]
    old = old_logprobs.detach() if detach else old_logprobs
    if ratio == "quotient":
        rho = logprobs / old
    elif ratio == "reversed":
        rho = torch.exp(old - logprobs)
    else:
        rho = torch.exp(logprobs - old)
    if ratio == "log clipped":
        clipped = torch.exp((logprobs - old).clamp(-clip, clip)) * advantages
    else:
        clipped = rho.clamp(1.0 - clip, 1.0 + clip) * advantages
    term = {
        "min": lambda: torch.minimum(rho * advantages, clipped),
        "max": lambda: torch.maximum(rho * advantages, clipped),
        "clip only": lambda: clipped,
    }[combine]()
    weights = mask.to(logprobs.dtype)
    if count == "all":  # no mask at all
        return sign * term.mean()
    if count == "numel":  # masked sum over every position, padding counted
        return sign * (term * weights).sum() / weights.numel()
    if count == "per answer":
        return sign * ((term * weights).sum(-1) / weights.sum(-1)).mean()
    return sign * (term * weights).sum() / weights.sum()


def _ppo_mistake(**kwargs) -> Callable:
    return lambda lp, old, adv, mask, clip=0.2: _ppo(lp, old, adv, mask, clip, **kwargs)


PPO_CLIP_LOSS = [
    Mistake(
        "looks like the sign is missing: the surrogate min(ρA, clip(ρ)A) is to be\n"
        "MAXIMISED; the loss is its negative, -Σ mask·min(...) / Σ mask",
        _ppo_mistake(sign=1.0),
    ),
    Mistake(
        "looks like the ratio is clipped without the min: -clip(ρ)·A alone has zero\n"
        "gradient wherever ρ left [1-ε, 1+ε], also where the step went the WRONG way;\n"
        "take min(ρA, clip(ρ, 1-ε, 1+ε)·A), the pessimistic of the two",
        _ppo_mistake(combine="clip only"),
    ),
    Mistake(
        "looks like max instead of min: PPO takes the pessimistic (smaller) of\n"
        "ρA and clip(ρ)A, so the policy gains nothing from moving ρ past 1 ± ε",
        _ppo_mistake(combine="max"),
    ),
    Mistake(
        "looks like the padding is counted: divide by the number of answer tokens,\n"
        "mask.sum(), not by every position (mask.numel(), or .mean() over all)",
        _ppo_mistake(count="numel"),
    ),
    Mistake(
        "looks like the mask is not applied: prompt and padding positions hold no\n"
        "answer token; sum min(...) * mask and divide by mask.sum()",
        _ppo_mistake(count="all"),
    ),
    Mistake(
        "looks like each answer is averaged over its own tokens first: the loss is\n"
        "ONE mean over all answer tokens, Σ mask·min(...) / Σ mask (a long answer\n"
        "counts with all its tokens)",
        _ppo_mistake(count="per answer"),
    ),
    Mistake(
        "looks like old_logprobs are not detached: when they come from the same\n"
        "forward pass ρ = exp(lp - lp) = 1 has no gradient and nothing is learned;\n"
        "the old policy's log-probabilities are data: old_logprobs.detach()",
        _ppo_mistake(detach=False),
    ),
    Mistake(
        "looks like ρ = logprobs / old_logprobs: the ratio of the PROBABILITIES is\n"
        "π/π_old = exp(logprobs - old_logprobs)",
        _ppo_mistake(ratio="quotient"),
    ),
    Mistake(
        "looks like the ratio is upside down, exp(old_logprobs - logprobs):\n"
        "ρ = π_θ / π_old = exp(logprobs - old_logprobs)",
        _ppo_mistake(ratio="reversed"),
    ),
    Mistake(
        "looks like the log-ratio is clipped to ±ε: clip the ratio itself,\n"
        "ρ.clamp(1 - ε, 1 + ε) (e^0.2 = 1.22 is not 1.2)",
        _ppo_mistake(ratio="log clipped"),
    ),
    Mistake(
        "looks like advantages of shape (batch,) are not expanded per token:\n"
        "advantages[:, None] gives each answer's advantage to all its tokens",
        _ppo_mistake(expand=False),
    ),
]

# --- the cases (the hidden tests of the solution notebook compute them by hand) -------------------


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bt_random(seed: int, pairs: int, margin) -> tuple:
    g = _generator(seed)
    chosen, rejected = (torch.randn(pairs, generator=g, dtype=torch.float64) * 2 for _ in range(2))
    if margin == "per pair":
        margin = torch.rand(pairs, generator=g, dtype=torch.float64)
    return chosen, rejected, margin


# (r_chosen, r_rejected, margin): by hand, random, a margin per pair (Llama 2's "significantly better" pairs),
# and gaps of ±800, where -log(sigmoid(z)) is inf in float64 but softplus(800) = 800 exactly
BT_CASES = [
    (torch.tensor([2.0, 0.5, -1.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), 0.0),
    (torch.tensor([2.0, 0.5, -1.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), 0.5),
    _bt_random(1, 8, 0.0),
    _bt_random(2, 16, 1.0),
    _bt_random(3, 16, "per pair"),
    (torch.tensor([0.0, 400.0], dtype=torch.float64), torch.tensor([800.0, -400.0], dtype=torch.float64), 0.0),
]


def _bt_label(case: tuple) -> str:
    chosen, _, margin = case
    shown = "a margin per pair" if isinstance(margin, torch.Tensor) else f"margin={margin}"
    return f"my_bradley_terry_loss({len(chosen)} pairs, {shown})"


def _rewards(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# (rewards (groups, G), scale): right/wrong rewards with a group all right and one all wrong (their std is 0),
# rewards in [0, 1] (a learned reward), two answers per group
GROUP_CASES = [
    (_rewards([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 1]]), True),
    (_rewards([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 1]]), False),
    ((torch.rand(3, 8, generator=_generator(4), dtype=torch.float64) < 0.4).double(), True),
    (torch.rand(4, 5, generator=_generator(5), dtype=torch.float64), True),
    (torch.rand(4, 5, generator=_generator(5), dtype=torch.float64), False),
    (_rewards([[0, 1], [0.25, 0.75], [0, 0]]), True),
]


def _ppo_case(seed: int, batch: int, seq: int, per_token: bool, clip: float, same: bool = False) -> tuple:
    """Random log-probabilities, ratios between about 0.5 and 2 (so both sides of the clip are met), answers
    of different lengths after a prompt, right padding; ``same``: ``old_logprobs`` None, meaning "the very
    tensor ``logprobs``" (computed in the same forward pass, with gradient)."""
    g = _generator(seed)
    logprobs = -torch.rand(batch, seq, generator=g, dtype=torch.float64) * 3 - 0.05
    old = logprobs + (torch.rand(batch, seq, generator=g, dtype=torch.float64) - 0.5) * 1.4
    shape = (batch, seq) if per_token else (batch,)
    advantages = torch.randn(*shape, generator=g, dtype=torch.float64)
    mask = torch.zeros(batch, seq, dtype=torch.bool)
    for row in range(batch):
        start = int(torch.randint(0, 2, (1,), generator=g))
        end = int(torch.randint(start + 1, seq + 1, (1,), generator=g))
        mask[row, start:end] = True
    mask[0, :] = True  # one full row: the lengths differ
    return logprobs, None if same else old, advantages, mask, clip


# (logprobs, old_logprobs or None for "the same tensor", advantages, mask, clip)
PPO_CASES = [
    (
        torch.tensor([[-1.0, -0.5, -2.0, -0.3]], dtype=torch.float64),
        torch.tensor([[-1.0, -1.0, -1.0, -0.3]], dtype=torch.float64),  # ρ = 1, e^0.5, e^-1 (clipped), padding
        torch.tensor([[1.0, 1.0, -2.0, 5.0]], dtype=torch.float64),
        torch.tensor([[True, True, True, False]]),
        0.2,
    ),
    _ppo_case(7, 4, 4, per_token=False, clip=0.2),  # batch = seq: advantages[None, :] broadcasts silently
    _ppo_case(6, 3, 7, per_token=False, clip=0.2),
    _ppo_case(8, 3, 6, per_token=True, clip=0.1),
    _ppo_case(9, 2, 5, per_token=False, clip=0.2, same=True),  # μ = 1: old_logprobs from the same pass
]


def _ppo_label(case: tuple) -> str:
    logprobs, old, advantages, _, clip = case
    per = "per token" if advantages.ndim == 2 else "per answer"
    same = ", old_logprobs the same tensor" if old is None else ""
    return f"my_ppo_clip_loss(batch {logprobs.shape[0]}, seq {logprobs.shape[1]}, advantages {per}, clip={clip}{same})"


def loss_and_gradient(fn: Callable, case: tuple) -> tuple[object, torch.Tensor | None]:
    """``fn``'s loss on a :data:`PPO_CASES` case and its gradient with respect to ``logprobs`` (None when the loss
    is not a tensor with a graph). ``old_logprobs`` is None in a case: the same tensor as ``logprobs``."""
    logprobs, old, advantages, mask, clip = case
    logprobs = logprobs.clone().requires_grad_(True)
    old = logprobs if old is None else old.clone()
    loss = fn(logprobs, old, advantages.clone(), mask.clone(), clip)
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        return loss, None
    (gradient,) = torch.autograd.grad(loss, logprobs, allow_unused=True)
    return loss.detach(), torch.zeros_like(logprobs) if gradient is None else gradient


# --- the checks ------------------------------------------------------------------------------------

# float64 inputs, a few dozen terms: any correct order of the arithmetic is some 1e-15 off; every catalogued
# mistake moves the result by 1e-3 or more
ATOL, RTOL = 1e-10, 1e-8


def _scalar_loss(label: str, got: object, expected: torch.Tensor, args: tuple, mistakes: Iterable[Mistake]) -> None:
    """A ``compare`` of :func:`~.feedback.check_cases` for a loss: a 0-d tensor equal to the expected one."""
    if not isinstance(got, torch.Tensor) or got.ndim != 0:
        shown = type(got).__name__ if not isinstance(got, torch.Tensor) else f"a tensor of shape {tuple(got.shape)}"
        raise fail(label, f"  expected a 0-d torch.Tensor (the mean loss), got {shown}")
    difference = tensor_difference(got, expected, ATOL, RTOL)
    if difference is not None:
        raise fail(label, difference, diagnose(got, args, mistakes, close(ATOL, RTOL)))


def check_bradley_terry_loss(fn: Callable) -> None:
    """``fn(r_chosen, r_rejected, margin=0.0)``: ``mean(-log σ(r_chosen - r_rejected - margin))``, a 0-d tensor
    with gradient, as :func:`~..alignment.losses.bradley_terry_loss`; different shapes refused."""
    cases = [Case(_bt_label(c), c, bradley_terry_loss(*c)) for c in BT_CASES]

    def with_grad(r_chosen, r_rejected, margin):  # the rewards as a reward model gives them: with gradient
        return fn(r_chosen.clone().requires_grad_(True), r_rejected.clone().requires_grad_(True), margin)

    def graph(case: Case, given: tuple, got: object) -> None:
        if isinstance(got, torch.Tensor) and not got.requires_grad:
            raise fail(case.label, "  the loss has no gradient: keep it a tensor (no .item(), float() or\n"
                       "  torch.tensor(...) of a number), so that backward() reaches the reward model")  # fmt: skip

    check_cases(
        None, "my_bradley_terry_loss", with_grad, cases, compare=_scalar_loss, mistakes=BRADLEY_TERRY,
        forbidden=[bradley_terry_loss], before=graph,
    )  # fmt: skip
    refuses(
        "my_bradley_terry_loss(3 chosen rewards, 2 rejected)",
        "my_bradley_terry_loss",
        fn,
        (torch.zeros(3, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)),
        ["shape"],
        "one rejected reward per chosen one: refuse other shapes with a ValueError\nnaming the shapes",
        [bradley_terry_loss],
    )
    print(f"✓ the Bradley-Terry loss: correct on {len(cases) + 1} test cases")


def check_group_advantages(fn: Callable) -> None:
    """``fn(rewards, scale=True, eps=1e-6)``: ``(groups, G)`` rewards to advantages, as
    :func:`~..alignment.losses.group_advantages`; rewards that are not ``(groups, G >= 2)`` refused."""

    def label(rewards: torch.Tensor, scale: bool) -> str:
        return f"my_group_advantages(rewards of shape {tuple(rewards.shape)}, scale={scale})"

    cases = [Case(label(r, s), (r, s), group_advantages(r, s)) for r, s in GROUP_CASES]
    # (groups, G) rewards in [0, 1]: a correct order is some 1e-16 off, std + eps against sqrt(var + eps) some
    # 1e-5 relative; every catalogued mistake moves an advantage by 1e-2 or more
    compare = _tensors(1e-4, 1e-4)
    check_cases(
        None, "my_group_advantages", fn, cases, compare=compare, mistakes=GROUP_ADVANTAGES, forbidden=[group_advantages]
    )
    refuses(
        "my_group_advantages(rewards of shape (8,), a single group not as a row)",
        "my_group_advantages",
        fn,
        (torch.ones(8, dtype=torch.float64), True),
        ["shape"],
        "rewards must be (groups, G): refuse other shapes with a ValueError naming\nthe shape",
        [group_advantages],
    )
    print(f"✓ GRPO's group advantages: correct on {len(cases) + 1} test cases")


def _tensors(atol: float, rtol: float) -> Callable[..., None]:
    def compare(label: str, got: object, expected: torch.Tensor, args: tuple, mistakes: Iterable[Mistake]) -> None:
        difference = tensor_difference(got, expected, atol, rtol)
        if difference is not None:
            raise fail(label, difference, diagnose(got, args, mistakes, close(atol, rtol)))

    return compare


def _same_loss_and_gradient(got: object, wrong: object) -> bool:
    same = close(ATOL, RTOL)
    return (
        isinstance(got, tuple) and isinstance(wrong, tuple) and got[1] is not None and wrong[1] is not None
        and same(got[0], wrong[0]) and same(got[1], wrong[1])
    )  # fmt: skip


def check_ppo_clip_loss(fn: Callable) -> None:
    """``fn(logprobs, old_logprobs, advantages, mask, clip=0.2)``: PPO's clipped loss, as
    :func:`~..alignment.losses.ppo_clip_loss`, its value and its gradient with respect to ``logprobs``."""
    cases = [Case(_ppo_label(c), c, loss_and_gradient(ppo_clip_loss, c)) for c in PPO_CASES]
    wrong = [Mistake(m.cause, lambda *case, m=m: loss_and_gradient(m.answer, case)) for m in PPO_CLIP_LOSS]

    def compare(label: str, got: object, expected: tuple, args: tuple, mistakes: Iterable[Mistake]) -> None:
        loss, gradient = got
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0 or gradient is None:
            shown = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
            no_graph = isinstance(loss, torch.Tensor) and loss.ndim == 0
            raise fail(label, "  the loss has no gradient: keep it a tensor (no .item() or float())" if no_graph
                       else f"  expected a 0-d torch.Tensor (the mean loss), got {shown}")  # fmt: skip
        for what, g, e in (("the loss", loss, expected[0]), ("its gradient d loss / d logprobs", gradient, expected[1])):
            difference = tensor_difference(g, e, ATOL, RTOL)
            if difference is not None:
                cause = diagnose(got, args, mistakes, _same_loss_and_gradient)
                raise fail(f"{label}, {what}", difference, cause)

    check_cases(
        None, "my_ppo_clip_loss", lambda *case: loss_and_gradient(fn, case), cases, compare=compare, mistakes=wrong,
        forbidden=[ppo_clip_loss],
    )  # fmt: skip
    print(f"✓ PPO's clipped loss: correct on {len(cases)} test cases (value and gradient)")
