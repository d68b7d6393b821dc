"""RoPE scaling: stretch a model's context by changing its rotation frequencies.

RoPE turns feature pair ``i`` of the token at position ``m`` by the angle
``m * f_i``, with the (inverse) frequencies ``f_i = theta ** (-2i / head_dim)``
of :func:`.rope.rope_frequencies` (``theta``: the base). A model trained on
``L`` tokens has seen these angles only for positions ``m < L``. Past ``L``
the slow pairs (small ``f_i``) reach angles they never had in training, and
quality collapses. Every method below fixes this by changing the frequencies
``f_i`` and nothing else: the weights, the attention and the rotation itself
stay as they are. Each is therefore a pure function
``inv_freq -> inv_freq`` applied from outside the model, as gpt-fast does.

The methods differ in *which* pairs they change. Think of pair ``i`` by its
wavelength ``2 pi / f_i``, the number of positions of one full turn:

* **linear** position interpolation (Chen et al., 2023): every pair is slowed
  down by ``factor``, so positions ``0 .. factor * L`` map onto the angles of
  ``0 .. L``. Simple, but the fast pairs, which tell neighbouring tokens
  apart, lose resolution too.
* **dynamic** NTK (bloc97 and emozilla, 2023; the ``dynamic`` type of
  ``transformers``): raise the base ``theta`` instead, more for longer
  sequences, only once the sequence passes ``L``. A larger base slows the slow
  pairs a lot and the fast pairs hardly at all.
* **YaRN** (Peng et al., 2023): by wavelength. Pairs that turn many times
  within ``L`` (more than ``beta_fast`` turns) are left alone: they have seen
  every angle already. Pairs that turn less than ``beta_slow`` times are
  interpolated (divided by ``factor``). In between, a linear ramp. And the
  attention logits are sharpened by a temperature: cos and sin are
  multiplied by ``mscale = 0.1 ln(factor) + 1``.
* **llama3** (Llama 3.1, Meta 2024): the same idea with fixed wavelength
  bounds ``L / high_freq_factor`` and ``L / low_freq_factor``: shorter
  wavelengths untouched, longer ones divided by ``factor``, a smooth blend
  between.

:class:`RopeScaling` holds a method and its parameters; :data:`ROPE_SCALING_FUNCTIONS`, one table
from the method's name to its function (as ``transformers`` keeps ``ROPE_INIT_FUNCTIONS``), is how
:func:`scaled_rope_frequencies` applies it. A model takes it from ``LlamaConfig.rope_scaling``: its
``_rope`` computes cos and sin through :func:`rope_cos_sin_scaled`, the one line where scaling meets the
model. RoPE scaling is part of the model, so it lives in the core; chapter 11 (``long_context/``) teaches
and fine-tunes with it. Each checkpoint format spells it its own way, read and written by that format's
module: Hugging Face's ``rope_scaling`` / ``rope_parameters`` (``checkpoints/hf.py``), llama.cpp's
metadata and per-pair divisors (``checkpoints/gguf.py``), Meta's ``use_scaled_rope`` flag
(``checkpoints/meta.py``, through :func:`meta_llama3_scaling`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from .errors import is_finite_number, is_float32
from .rope import rope_frequencies

# The parameters each type needs, and those it may take; any other parameter is an error.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "linear": ("factor",),
    "dynamic": ("factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings"),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}
OPTIONAL_FIELDS: dict[str, tuple[str, ...]] = {"yarn": ("beta_fast", "beta_slow", "attention_factor")}


@dataclass(frozen=True)
class RopeScaling:
    """One RoPE scaling method and its parameters (``None``: not given).

    ``type`` is ``"linear"``, ``"dynamic"``, ``"yarn"`` or ``"llama3"`` (plain
    RoPE is no scaling at all: ``None`` where a ``RopeScaling`` is expected).
    ``factor`` is how many times longer the new context is;
    ``original_max_position_embeddings`` the context the model was trained on.
    YaRN's ``beta_fast`` and ``beta_slow`` default to 32 and 1 turns, its
    ``attention_factor`` to ``0.1 ln(factor) + 1``. Validated on creation:
    ``ValueError`` naming the field, what was expected and what was given.
    """

    type: str
    factor: float | None = None
    original_max_position_embeddings: int | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    attention_factor: float | None = None

    def __post_init__(self) -> None:
        if self.type not in REQUIRED_FIELDS:
            types = ", ".join(map(repr, REQUIRED_FIELDS))
            raise ValueError(f"RopeScaling.type must be one of {types}, got {self.type!r}")
        allowed = REQUIRED_FIELDS[self.type] + OPTIONAL_FIELDS.get(self.type, ())
        for field in fields(self)[1:]:
            value = getattr(self, field.name)
            if value is None and field.name in REQUIRED_FIELDS[self.type]:
                raise ValueError(f"RopeScaling.{field.name} is required for {self.type!r} scaling, got None")
            if value is not None and field.name not in allowed:
                raise ValueError(
                    f"RopeScaling.{field.name} is not a parameter of {self.type!r} scaling "
                    f"(expected only {', '.join(allowed)}), got {value!r}"
                )
        context, factor, low, high = (
            self.original_max_position_embeddings,
            self.factor,
            self.low_freq_factor,
            self.high_freq_factor,
        )
        is_int = isinstance(context, int) and not isinstance(context, bool)
        self._check("original_max_position_embeddings", "a positive int", is_int and context > 0)
        self._check("factor", "a number >= 1, finite in float32", is_float32(factor) and factor >= 1)
        self._check("low_freq_factor", "a positive number", is_finite_number(low) and low > 0)
        self._check("high_freq_factor", f"a number > low_freq_factor ({low})", is_finite_number(high) and high > low)
        slow, fast = self.beta_slow, self.beta_fast
        self._check("beta_slow", "a positive number", is_finite_number(slow) and slow > 0)
        self._check("beta_fast", f"a number > beta_slow ({slow or 1})", is_finite_number(fast) and fast > (slow or 1))
        if fast is None and slow is not None and slow >= 32:
            raise ValueError(f"RopeScaling.beta_slow must be below beta_fast (32 when not given), got {slow}")
        attention = self.attention_factor
        self._check("attention_factor", "a positive number", is_finite_number(attention) and attention > 0)

    def _check(self, name: str, expected: str, ok: bool) -> None:
        value = getattr(self, name)
        if value is not None and not ok:
            raise ValueError(f"RopeScaling.{name} must be {expected}, got {value!r}")


# -- the methods, each a pure function on the inverse frequencies ----------------------------------------------------


def linear_scaling(inv_freq: torch.Tensor, factor: float) -> torch.Tensor:
    """Position interpolation (Chen et al., 2023): every pair turns ``factor`` times slower.

    ``angle = (m / factor) * f_i``: position ``m`` of the long context gets the angles that position
    ``m / factor`` had in training, so no angle is ever new. All pairs change, the fast ones too, which is
    why a short fine-tune on long texts is still needed. ``(head_dim // 2,) -> (head_dim // 2,)``.
    """
    return inv_freq / factor


def dynamic_ntk_theta(
    theta: float, head_dim: int, factor: float, original_max_position_embeddings: int, seq_len: int
) -> float:
    """Dynamic NTK-aware scaling (``transformers``' ``dynamic``): the base RoPE should use for ``seq_len`` tokens.

    Up to the original context ``L`` nothing changes. Beyond it the base grows to
    ``theta * g ** (head_dim / (head_dim - 2))`` with ``g = factor * seq_len / L - (factor - 1)``, which is 1
    at ``seq_len = L`` and grows linearly with the length. The exponent is chosen so that the slowest pair
    (``i = head_dim/2 - 1``, frequency ``theta ** -((head_dim - 2) / head_dim)``) is slowed by exactly ``g``,
    like interpolation, while the fastest pair (``i = 0``, frequency ``theta ** 0 = 1``) is not slowed at
    all: NTK theory says the high frequencies must be kept to tell neighbouring tokens apart. Needs no
    fine-tuning; the price is that the frequencies depend on the current length, so keys cached at a
    shorter length were rotated with other frequencies.
    """
    seq_len = max(seq_len, original_max_position_embeddings)
    growth = factor * seq_len / original_max_position_embeddings - (factor - 1)
    return theta * growth ** (head_dim / (head_dim - 2))


def yarn_scaling(
    inv_freq: torch.Tensor,
    theta: float,
    factor: float,
    original_max_position_embeddings: int,
    beta_fast: float = 32,
    beta_slow: float = 1,
) -> torch.Tensor:
    """YaRN's "NTK-by-parts" frequencies (Peng et al., 2023): interpolate only the pairs that need it.

    Pair ``i`` turns ``r_i = L * f_i / (2 pi)`` times over the original context ``L``. A pair with
    ``r_i > beta_fast`` has seen every angle many times: keep it (extrapolate). A pair with
    ``r_i < beta_slow`` has seen too few turns: divide it by ``factor`` (interpolate). With
    ``f_i = theta ** (-2i / head_dim)``, solving ``r_i = beta`` for the pair index gives
    ``i = head_dim * ln(L / (2 pi beta)) / (2 ln theta)``; the
    pairs between the two bounds (rounded outwards, as the reference code does) blend the two linearly
    in their index. ``(head_dim // 2,) -> (head_dim // 2,)``; see :func:`yarn_attention_factor` for the
    temperature that goes with it.
    """
    head_dim = 2 * inv_freq.shape[0]

    def pair_index(turns: float) -> float:
        return head_dim * math.log(original_max_position_embeddings / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(pair_index(beta_fast)), 0)
    high = min(math.ceil(pair_index(beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001  # one pair exactly at the bound: avoid dividing by zero
    index = torch.arange(inv_freq.shape[0], dtype=torch.float32, device=inv_freq.device)
    interpolated = ((index - low) / (high - low)).clamp(0, 1)  # 0: keep the pair, 1: divide it by factor
    return inv_freq / factor * interpolated + inv_freq * (1 - interpolated)


def yarn_attention_factor(factor: float) -> float:
    """YaRN's temperature ``0.1 ln(factor) + 1``, by which cos and sin (so queries and keys) are multiplied.

    Interpolated positions crowd together, which flattens the attention softmax over long contexts. Scaling
    both the rotated queries and keys by ``mscale`` multiplies every logit by ``mscale ** 2``, sharpening it
    back; Peng et al. fitted ``0.1 ln(factor) + 1`` on LLaMA models. 1 for ``factor <= 1``.
    """
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def llama3_scaling(
    inv_freq: torch.Tensor,
    factor: float,
    low_freq_factor: float,
    high_freq_factor: float,
    original_max_position_embeddings: int,
) -> torch.Tensor:
    """Llama 3.1's frequencies (Meta, 2024): by wavelength, with fixed bounds.

    A pair of wavelength ``w = 2 pi / f_i`` shorter than ``L / high_freq_factor`` (it turns more than
    ``high_freq_factor`` times within the original context ``L``) is untouched: it encodes local order,
    already well trained. One longer than ``L / low_freq_factor`` is divided by ``factor``, like linear
    interpolation. In between, ``smooth = (L / w - low_freq_factor) / (high_freq_factor - low_freq_factor)``
    blends the two, going from 0 (divided) to 1 (kept), so the frequencies change continuously with ``w``.
    ``(head_dim // 2,) -> (head_dim // 2,)``.
    """
    L = original_max_position_embeddings
    wavelength = 2 * math.pi / inv_freq
    smooth = (L / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)  # used between the bounds
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    kept = wavelength < L / high_freq_factor
    divided = wavelength > L / low_freq_factor
    return torch.where(kept, inv_freq, torch.where(divided, inv_freq / factor, blended))


# -- one table from the type's name to its frequencies ---------------------------------------------------------------

Frequencies = tuple[torch.Tensor, float]  # the inverse frequencies (head_dim // 2,) and the attention factor


def _linear(scaling: RopeScaling, head_dim: int, theta: float, seq_len: int | None, device) -> Frequencies:
    return linear_scaling(rope_frequencies(head_dim, theta, device), scaling.factor), 1.0


def _dynamic(scaling: RopeScaling, head_dim: int, theta: float, seq_len: int | None, device) -> Frequencies:
    L = scaling.original_max_position_embeddings
    theta = dynamic_ntk_theta(theta, head_dim, scaling.factor, L, L if seq_len is None else seq_len)
    return rope_frequencies(head_dim, theta, device), 1.0


def _yarn(scaling: RopeScaling, head_dim: int, theta: float, seq_len: int | None, device) -> Frequencies:
    inv_freq = rope_frequencies(head_dim, theta, device)
    L, beta_fast, beta_slow = scaling.original_max_position_embeddings, scaling.beta_fast or 32, scaling.beta_slow or 1
    inv_freq = yarn_scaling(inv_freq, theta, scaling.factor, L, beta_fast, beta_slow)
    attention_factor = scaling.attention_factor
    return inv_freq, yarn_attention_factor(scaling.factor) if attention_factor is None else attention_factor


def _llama3(scaling: RopeScaling, head_dim: int, theta: float, seq_len: int | None, device) -> Frequencies:
    inv_freq = rope_frequencies(head_dim, theta, device)
    low, high, L = scaling.low_freq_factor, scaling.high_freq_factor, scaling.original_max_position_embeddings
    return llama3_scaling(inv_freq, scaling.factor, low, high, L), 1.0


# Each type's ``(scaling, head_dim, theta, seq_len, device) -> (inv_freq, attention_factor)``. A new method is
# one function and one entry here (and its parameters in REQUIRED_FIELDS / OPTIONAL_FIELDS).
ROPE_SCALING_FUNCTIONS = {"linear": _linear, "dynamic": _dynamic, "yarn": _yarn, "llama3": _llama3}


def check_rope_scaling(scaling: RopeScaling, head_dim: int, theta: float, max_seq_len: int) -> None:
    """A ``ValueError`` unless ``scaling`` gives a model of this ``head_dim`` and ``theta`` usable frequencies.

    Each parameter can be valid alone and the combination not: dynamic NTK's exponent
    ``head_dim / (head_dim - 2)`` needs ``head_dim > 2``; YaRN's pair index divides by ``ln theta``, so it
    needs ``theta > 1``; a factor of ``1e308`` overflows the base. So the frequencies are computed once, at
    the longest length the model runs (``max_seq_len``, where dynamic scaling grows most), and must be
    finite float32 numbers, as must the attention factor.
    """
    if scaling.type == "dynamic" and head_dim <= 2:
        raise ValueError(f"dynamic scaling needs head_dim > 2 (its exponent is head_dim / (head_dim - 2)), got {head_dim}")
    if scaling.type == "yarn" and not theta > 1:
        raise ValueError(f"yarn scaling needs rope_theta > 1 (its pair index divides by ln theta), got {theta}")
    try:
        inv_freq, attention_factor = scaled_rope_frequencies(head_dim, theta, scaling, max_seq_len)
    except ArithmeticError as error:  # OverflowError, ZeroDivisionError
        raise ValueError(f"{scaling.type} scaling with factor {scaling.factor} cannot be computed ({error})") from None
    if not bool(torch.isfinite(inv_freq).all()) or not is_float32(attention_factor):
        raise ValueError(
            f"{scaling.type} scaling with factor {scaling.factor} gives frequencies or an attention factor that "
            f"float32 cannot hold (head_dim {head_dim}, rope_theta {theta}, max_seq_len {max_seq_len})"
        )


def scaled_rope_frequencies(
    head_dim: int,
    theta: float,
    scaling: RopeScaling | None,
    seq_len: int | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, float]:
    """The inverse frequencies ``(head_dim // 2,)`` float32 and the attention factor of ``scaling``.

    ``scaling=None`` is plain RoPE: :func:`.rope.rope_frequencies` and factor 1; otherwise the function of
    :data:`ROPE_SCALING_FUNCTIONS` for ``scaling.type``. ``seq_len``, the current sequence length (last
    position + 1), matters only to ``dynamic``; left out, it counts as the original context (no change).
    The attention factor multiplies cos and sin; it is 1 except for YaRN.
    """
    if scaling is None:
        return rope_frequencies(head_dim, theta, device), 1.0
    return ROPE_SCALING_FUNCTIONS[scaling.type](scaling, head_dim, theta, seq_len, device)


def rope_cos_sin_scaled(
    positions: torch.Tensor,
    head_dim: int,
    theta: float,
    scaling: RopeScaling | None = None,
    seq_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`.rope.rope_cos_sin` with RoPE scaling: the seam through which a model uses it.

    ``positions`` ``(seq,)`` integers; returns ``cos, sin``, each float32 ``(seq, head_dim // 2)``, both
    multiplied by the attention factor (YaRN's temperature; 1 otherwise). ``seq_len`` for ``dynamic``
    scaling: by default the last position + 1. With ``scaling=None`` the result equals ``rope_cos_sin``.
    """
    if seq_len is None and scaling is not None and scaling.type == "dynamic":
        seq_len = int(positions.max()) + 1
    inv_freq, attention_factor = scaled_rope_frequencies(head_dim, theta, scaling, seq_len, positions.device)
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos() * attention_factor, angles.sin() * attention_factor  # times 1.0 is exact


# -- Meta's Llama 3.1 scaling ---------------------------------------------------------------------------------------

# What Meta's reference code fixes for Llama 3.1 and 3.2 (only the factor varies: 8, or 32 for 3.2), and so
# what a params.json's ``use_scaled_rope`` or a GGUF file's ``rope_freqs`` stands for.
LLAMA3_LOW_FREQ_FACTOR, LLAMA3_HIGH_FREQ_FACTOR, LLAMA3_ORIGINAL_CONTEXT = 1.0, 4.0, 8192


def meta_llama3_scaling(factor: float, original_max_position_embeddings: int = LLAMA3_ORIGINAL_CONTEXT) -> RopeScaling:
    """Llama 3.1's ``llama3`` scaling with Meta's fixed frequency bounds, for a given factor."""
    return RopeScaling(
        "llama3",
        factor=factor,
        low_freq_factor=LLAMA3_LOW_FREQ_FACTOR,
        high_freq_factor=LLAMA3_HIGH_FREQ_FACTOR,
        original_max_position_embeddings=original_max_position_embeddings,
    )
