"""The training loss without its biggest tensor: output head and cross-entropy in one pass, by chunks.

Training a language model ends with ``logits = hidden @ W_out^T`` and the mean
cross-entropy of the next tokens. For a small model the logits are by far the
largest tensor of the whole step: ``(tokens, vocab_size)``, e.g. 4,096
tokens x 4,096 pieces = 67 MB in float32, while every hidden state is
``(tokens, dim)`` = 4 MB. Autograd keeps them, their log-softmax and the
gradient of each, and creating and filling that memory costs as much time as
several transformer layers.

The gradient of softmax cross-entropy has a simple closed form. With
``p = softmax(logits)`` and ``y`` the target:

    loss = logsumexp(logits) - logits[y]
    d loss / d logits = p - onehot(y)

so the gradients of the two inputs of the head are

    d loss / d hidden = (p - onehot(y)) @ W_out
    d loss / d W_out  = (p - onehot(y))^T @ hidden

This module computes them *during the forward pass*, a chunk of rows at a time
(the idea of "fused linear cross-entropy" kernels such as Liger's): each
chunk's logits are made, turned into ``p - onehot(y)`` in place, multiplied
into the two gradients, and dropped. Only ``(tokens, dim)`` and
``(vocab, dim)`` gradients are kept, and the backward pass just scales them.
Same loss and gradients as ``F.cross_entropy(hidden @ W_out.T, targets)`` (up
to float rounding), same matrix-multiply work, far less memory traffic.
"""

from __future__ import annotations

import torch


def _chunked_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int,
    with_grads: tuple[bool, bool],
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The summed loss over all rows and the gradients ``with_grads`` asks for: ``(hidden's, weight's)``.

    Shapes: ``hidden`` ``(tokens, dim)``, ``weight`` ``(vocab_size, dim)``,
    ``targets`` ``(tokens,)``. Logits are made ``chunk_size`` rows at a time,
    in at least float32 for the softmax, and dropped after use. Rows whose
    target is ``ignore_index`` add nothing to the loss and get zero gradient. A gradient not asked for
    (a frozen output head under LoRA) is not computed: the weight's costs a third matrix product per chunk.
    """
    loss_dtype = torch.promote_types(hidden.dtype, torch.float32)
    loss = torch.zeros((), dtype=loss_dtype, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if with_grads[0] else None
    grad_weight = torch.zeros_like(weight) if with_grads[1] else None
    for start in range(0, hidden.shape[0], chunk_size):
        h, y = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        ignored = y == ignore_index
        y = y.masked_fill(ignored, 0)  # any valid index; these rows are zeroed below
        log_probs = torch.log_softmax((h @ weight.t()).to(loss_dtype), dim=-1)  # (chunk, vocab_size)
        rows = torch.arange(len(y), device=y.device)
        loss -= log_probs[rows, y].masked_fill(ignored, 0.0).sum()
        if grad_hidden is not None or grad_weight is not None:
            grad_logits = log_probs.exp_()  # p = softmax(logits), written over the log-probabilities
            grad_logits[rows, y] -= 1.0  # p - onehot(y)
            grad_logits.masked_fill_(ignored[:, None], 0.0)
            grad_logits = grad_logits.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + chunk_size] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += grad_logits.t() @ h
    return loss, grad_hidden, grad_weight


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets``; gradients made in the forward pass.

    Shapes: ``hidden`` ``(tokens, dim)``, ``weight`` ``(vocab_size, dim)``,
    ``targets`` ``(tokens,)`` int64. Returns a scalar: the mean over the
    targets that are not ``ignore_index``.
    """

    @staticmethod
    def forward(
        ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int, ignore_index: int
    ) -> torch.Tensor:
        needed = (ctx.needs_input_grad[0], ctx.needs_input_grad[1])  # a frozen input gets no gradient
        loss, grad_hidden, grad_weight = _chunked_loss(hidden, weight, targets, chunk_size, needed, ignore_index)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.n_tokens = (targets != ignore_index).sum()  # a tensor: no device-to-host copy
        return loss / ctx.n_tokens

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None]:
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_loss / ctx.n_tokens  # the loss is a mean over tokens
        grads = [g * scale.to(g.dtype) if g is not None else None for g in (grad_hidden, grad_weight)]
        return *grads, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int = 256, ignore_index: int = -100
) -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T, targets, ignore_index=ignore_index)``, without ever holding all the logits.

    ``hidden`` is ``(..., dim)`` (the final-norm output), ``weight`` the output
    head ``(vocab_size, dim)``, ``targets`` ``(...)`` token ids. Returns the
    mean loss in nats per token over the targets that are not ``ignore_index``
    (NaN if every target is ignored, as with ``F.cross_entropy``).
    ``chunk_size`` rows of logits exist at a time: 256 rows of a 4,096-piece
    vocabulary are 4 MB, which stays in the CPU's cache. Without gradients
    (evaluation) only the loss is computed.
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(
            f"targets must have the shape of hidden without its last dimension, {tuple(hidden.shape[:-1])}, "
            f"got {tuple(targets.shape)}"
        )
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return LinearCrossEntropy.apply(hidden, weight, targets, chunk_size, ignore_index)
    loss, _, _ = _chunked_loss(hidden, weight, targets, chunk_size, (False, False), ignore_index)
    return loss / (targets != ignore_index).sum()
