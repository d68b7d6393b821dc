"""Chapter 05's exercises (SwiGLU and the model): SwiGLU, Meta's hidden size, and the parameter count.

Each check calls the learner's function through the skeleton of :mod:`.feedback`
(:func:`~.feedback.check_cases`), compares with the package (``SwiGLU``, ``ffn_hidden_dim``,
``count_parameters``) and, when the answer differs, names the catalogued mistake below that gives what
the learner got.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .feedback import Case, Mistake, check_cases, diagnose, fail, tensors

# --- the common wrong answers ---------------------------------------------------------------------


def _silu(a):
    return a * torch.sigmoid(a)


SWIGLU = [
    Mistake(
        "looks like silu is applied to w3 x instead of w1 x:\nthe gate is w1: w2 (silu(w1 x) * w3 x)",
        lambda x, w1, w2, w3: (_silu(x @ w3.T) * (x @ w1.T)) @ w2.T,
    ),
    Mistake(
        "looks like sigmoid(w1 x), not silu(w1 x):\nsilu(a) = a · sigmoid(a)",
        lambda x, w1, w2, w3: (torch.sigmoid(x @ w1.T) * (x @ w3.T)) @ w2.T,
    ),
    Mistake(
        "looks like ReLU, not SiLU:\nsilu(a) = a · sigmoid(a)",
        lambda x, w1, w2, w3: (F.relu(x @ w1.T) * (x @ w3.T)) @ w2.T,
    ),
    Mistake(
        "looks like the w3 x factor is missing:\nSwiGLU multiplies silu(w1 x) by w3 x before w2",
        lambda x, w1, w2, w3: _silu(x @ w1.T) @ w2.T,
    ),
    Mistake(
        "looks like silu is applied after the product:\nit is silu(w1 x) * w3 x, the gate alone goes through silu",
        lambda x, w1, w2, w3: _silu((x @ w1.T) * (x @ w3.T)) @ w2.T,
    ),
]


def _hidden_dim(dim, multiple_of, multiplier, fraction=2 * 4 / 3, rounding="up", apply_multiplier=True):
    hidden = int(fraction * dim)
    if multiplier is not None and apply_multiplier:
        hidden = int(multiplier * hidden)
    if rounding == "down":
        return multiple_of * (hidden // multiple_of)
    if rounding == "always up":
        return multiple_of * (hidden // multiple_of + 1)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


FFN_HIDDEN_DIM = [
    Mistake(
        "looks like it rounds down:\nround up to the next multiple of multiple_of",
        lambda d, m, f: _hidden_dim(d, m, f, rounding="down"),
    ),
    Mistake(
        "looks like a multiple of multiple_of is rounded up too:\na number that is one already stays as it is",
        lambda d, m, f: _hidden_dim(d, m, f, rounding="always up"),
    ),
    Mistake(
        "looks like ffn_dim_multiplier is ignored:\nmultiply by it (when it is not None) before rounding",
        lambda d, m, f: _hidden_dim(d, m, f, apply_multiplier=False),
    ),
    Mistake(
        "looks like two-thirds of dim, not of 4 · dim:\nstart from int(2 * 4 * dim / 3)",
        lambda d, m, f: _hidden_dim(d, m, f, fraction=2 / 3),
    ),
]


def _parameters(c, tied_twice=False, block_norms=True, final_norm=True, kv_heads=None, output=True):
    kv_heads = c.n_kv_heads if kv_heads is None else kv_heads
    attention = 2 * c.dim * c.n_heads * c.head_dim + 2 * c.dim * kv_heads * c.head_dim
    layer = attention + 3 * c.dim * c.hidden_dim + (2 * c.dim if block_norms else 0)
    heads = 2 if (not c.tie_embeddings or tied_twice) and output else 1
    return heads * c.vocab_size * c.dim + c.n_layers * layer + (c.dim if final_norm else 0)


COUNT_PARAMETERS = [
    Mistake(
        "looks like tied embeddings are counted twice:\nwith tie_embeddings the output head is the embedding itself",
        lambda c: _parameters(c, tied_twice=True),
    ),
    Mistake(
        "looks like wk and wv have n_heads heads:\nthey have n_kv_heads heads of head_dim",
        lambda c: _parameters(c, kv_heads=c.n_heads),
    ),
    Mistake(
        "looks like the two RMSNorm gains of each block are missing:\n2 · dim per block",
        lambda c: _parameters(c, block_norms=False),
    ),
    Mistake("looks like the final RMSNorm gain is missing:\ndim more", lambda c: _parameters(c, final_norm=False)),
    Mistake(
        "looks like the output head is missing:\nvocab_size × dim, unless the embeddings are tied",
        lambda c: _parameters(c, output=False),
    ),
]


# --- the checks -----------------------------------------------------------------------------------


def check_swiglu(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(x, w1, w2, w3)``: ``w2 (silu(w1 x) * w3 x)`` with weights stored as ``(out, in)``."""
    from ..feedforward import SwiGLU

    torch.manual_seed(0)
    cases = []
    for shape, hidden in [((3, 4), 8), ((2, 16), 40), ((2, 5, 24), 64)]:  # x (..., dim): leading dimensions pass
        x, dim = torch.randn(shape), shape[-1]
        w1, w3, w2 = torch.randn(hidden, dim), torch.randn(hidden, dim), torch.randn(dim, hidden) / hidden**0.5
        expected = (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T
        cases.append(Case(f"my_swiglu(x of shape {shape}, hidden={hidden})", (x, w1, w2, w3), expected))
    check_cases(
        "swiglu",
        "my_swiglu",
        fn,
        cases,
        compare=tensors(atol=1e-4),
        mistakes=SWIGLU,
        forbidden=[SwiGLU, F.silu, torch.nn.SiLU, torch._C._nn.silu],
    )


def check_ffn_hidden_dim(fn: Callable[[int, int, float | None], int]) -> None:
    """``fn(dim, multiple_of, ffn_dim_multiplier)``: Meta's rule for the SwiGLU hidden size."""
    from ..config import PRESETS, ffn_hidden_dim

    cases = [(4096, 256, None), (5120, 256, 1.5), (8192, 4096, 1.3)] + [
        (c.dim, c.multiple_of, c.ffn_dim_multiplier) for c in PRESETS.values()
    ]
    cases += [(768, 256, None), (3072, 1024, None), (5120, 256, 1.5), (24, 8, None), (4096, 1, 1.3), (384, 256, None)]
    # and a grid: dims 8 ... 2048, multiples 1, 32 and 256, multipliers below and above 1
    cases += [(d, m, f) for d in range(8, 2049, 40) for m in (1, 32, 256) for f in (None, 1.3, 2.0, 0.9)]
    cases = [Case(f"my_ffn_hidden_dim{args}", args, ffn_hidden_dim(*args)) for args in cases]
    check_cases("ffn hidden dim", "my_ffn_hidden_dim", fn, cases, mistakes=FFN_HIDDEN_DIM, forbidden=[ffn_hidden_dim])


def check_count_parameters(fn: Callable) -> None:
    """``fn(config)``: the number of learned parameters of a ``Llama`` with this config (tied counted once)."""
    from ..config import PRESETS, LlamaConfig
    from ..model import Llama, count_parameters, parameters_by_component

    configs = dict(PRESETS)
    configs["tiny, tied"] = PRESETS["tiny"].replace(tie_embeddings=True)
    configs["tiny, multi-query, head_dim 32"] = PRESETS["tiny"].replace(n_kv_heads=1, head_dim=32)
    rng = random.Random(0)  # small random configs: every field, tied or not, head_dim given or derived
    for _ in range(20):
        config = LlamaConfig(
            dim=rng.choice([32, 48, 64]), n_layers=rng.randint(1, 6), n_heads=4 * rng.choice([1, 2]),
            n_kv_heads=rng.choice([1, 2, 4]), vocab_size=rng.randint(10, 1000), hidden_dim=rng.randint(10, 300),
            head_dim=rng.choice([None, 6, 16]), tie_embeddings=rng.random() < 0.5,
        )  # fmt: skip
        configs[repr(config)] = config

    def compare(label, got, expected, args, mistakes):
        if got != expected:
            off = f" ({got - expected:+,} off)" if isinstance(got, int) else ""
            cause = diagnose(got, args, mistakes, lambda a, b: a == b)
            raise fail(label, f"  expected {expected:,}, got {got!r}{off}", cause)

    cases = [Case(f"my_count_parameters({name})", (c,), count_parameters(c)) for name, c in configs.items()]
    check_cases(
        "count parameters",
        "my_count_parameters",
        fn,
        cases,
        compare=compare,
        mistakes=COUNT_PARAMETERS,
        forbidden=[count_parameters, parameters_by_component, Llama],
    )
