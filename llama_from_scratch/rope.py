"""Rotary position embedding, RoPE (Su et al., 2021).

Instead of adding a position vector to each token, RoPE *rotates* queries and
keys. The ``head_dim`` features of a head are split into ``head_dim / 2``
pairs; pair ``i`` of the token at position ``m`` is turned by the angle
``m * theta_i``, with frequencies ``theta_i = base ** (-2i / head_dim)`` falling
geometrically from 1 radian per position to almost nothing. Because rotating
``q`` by ``m * theta`` and ``k`` by ``n * theta`` changes their dot product
only through ``(m - n) * theta``, attention scores depend on the *relative*
offset between tokens, never on their absolute positions.

Which features form a pair is a convention, and the two big code bases chose
differently:

* **interleaved** (Meta's reference code, llama.cpp/GGUF): pairs are
  neighbours ``(x0, x1), (x2, x3), ...``, equivalently the complex numbers
  ``x0 + i x1, ...`` multiplied by ``exp(i m theta)``. This package uses it.
* **rotate-half** (Hugging Face ``transformers``): pairs are
  ``(x_j, x_{j + head_dim/2})``, the first half against the second.

The two are the same rotation after a fixed reordering of the features. A
checkpoint converted from one layout to the other therefore permutes the rows
of its ``wq`` and ``wk`` weights (``interleaved_to_half`` /
``half_to_interleaved``), and every attention score stays exactly the same.
"""

from __future__ import annotations

import torch


def rope_frequencies(head_dim: int, theta: float = 10000.0, device: torch.device | str | None = None) -> torch.Tensor:
    """The rotation speed of each feature pair: ``theta ** (-2i / head_dim)`` for ``i < head_dim / 2``.

    Returns a float32 tensor of shape ``(head_dim // 2,)``, in radians per position.
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (theta**exponents)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines of the rotation angles ``position * frequency``.

    ``positions`` is a ``(seq,)`` integer tensor. Returns ``cos, sin``, each
    float32 of shape ``(seq, head_dim // 2)``: one angle per position and
    feature pair, shared by every head and both layouts.
    """
    angles = positions.float()[:, None] * rope_frequencies(head_dim, theta, positions.device)[None, :]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate neighbouring feature pairs ``(x[2i], x[2i+1])`` (Meta's interleaved layout).

    ``x`` is ``(batch, seq, n_heads, head_dim)``; ``cos`` and ``sin`` are
    ``(seq, head_dim // 2)`` from :func:`rope_cos_sin`. Each pair is multiplied
    by the 2x2 rotation matrix ``[[cos, -sin], [sin, cos]]``.
    """
    pairs = x.to(torch.promote_types(x.dtype, torch.float32)).unflatten(-1, (-1, 2))  # rotated in >= float32
    x0, x1 = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


def apply_rope_complex(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The same rotation as :func:`apply_rope`, written as Meta's paper code writes it.

    Read each pair as a complex number ``x[2i] + i x[2i+1]`` and multiply it by
    ``exp(i * angle) = cos + i sin``: multiplying by a unit complex number *is*
    a rotation. Shapes as in :func:`apply_rope`.
    """
    as_complex = torch.view_as_complex(x.to(torch.promote_types(x.dtype, torch.float32)).unflatten(-1, (-1, 2)).contiguous())
    rotation = torch.complex(cos, sin)[:, None, :]
    return torch.view_as_real(as_complex * rotation).flatten(-2).type_as(x)


def apply_rope_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate feature ``j`` against feature ``j + head_dim/2`` (Hugging Face's rotate-half layout).

    Shapes as in :func:`apply_rope`. Given a checkpoint whose ``wq``/``wk``
    rows were permuted by :func:`interleaved_to_half`, this gives the same
    attention scores as :func:`apply_rope` on the original weights.
    """
    first, second = x.to(torch.promote_types(x.dtype, torch.float32)).chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1).type_as(x)


def _check_qk_weight(w: torch.Tensor, n_heads: int) -> tuple[int, int]:
    out_features = w.shape[0]
    if out_features % (2 * n_heads) != 0:
        raise ValueError(
            f"a q/k projection with {n_heads} heads needs a row count divisible by 2 * n_heads = {2 * n_heads}, "
            f"got weight of shape {tuple(w.shape)}"
        )
    return out_features // n_heads, out_features


def interleaved_to_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of a ``wq``/``wk`` weight from the interleaved to the rotate-half layout.

    ``w`` is ``(n_heads * head_dim, in_features)`` (or ``(n_heads * head_dim,)``).
    Within each head, output rows ``0, 2, 4, ...`` become the first half and
    rows ``1, 3, 5, ...`` the second half. This is how Meta checkpoints are
    converted to Hugging Face's format.
    """
    head_dim, out_features = _check_qk_weight(w, n_heads)
    rest = w.shape[1:]
    return w.reshape(n_heads, head_dim // 2, 2, *rest).transpose(1, 2).reshape(out_features, *rest)


def half_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of :func:`interleaved_to_half`: Hugging Face rows back to Meta's interleaved layout."""
    head_dim, out_features = _check_qk_weight(w, n_heads)
    rest = w.shape[1:]
    return w.reshape(n_heads, 2, head_dim // 2, *rest).transpose(1, 2).reshape(out_features, *rest)
