"""How much arithmetic a training step is, and how much of the machine it uses (MFU).

**6N per token.** A weight matrix of ``n`` numbers costs ``2n`` floating-point operations per token in
the forward pass (a multiply and an add per weight) and ``4n`` in the backward pass (the gradient with
respect to its input and the gradient with respect to the weight, ``2n`` each): ``6N`` per token for the
``N`` weights of matrix products (Kaplan et al., 2020). The token embedding is a lookup and costs
nothing; the output head is a matrix and counts (tied or not); the norms are elementwise, negligible.

**Attention's term.** The scores ``q k^T`` and the weighted sum ``P v`` are matrix products whose size
grows with the context, not with the weights: per layer and token, ``2 * 2 * n_heads * head_dim * seq``
in the forward pass and twice that in the backward, ``12 * n_layers * n_heads * head_dim * seq`` in all
(PaLM's appendix B; like PaLM, without halving it for the causal mask, which fused kernels partly skip).
For LLaMA 7B at 2,048 tokens it adds 8% to the 6N.

**MFU** (model FLOPs utilisation, PaLM): the FLOPs a step needs by this count, divided by what the
hardware could do in the step's time at its peak. It ignores recomputation (activation checkpointing
does more arithmetic for the same MFU) and counts only useful work, so it compares runs fairly.
"""

from __future__ import annotations

from ..config import LlamaConfig
from ..model import count_parameters


def matmul_parameters(config: LlamaConfig) -> int:
    """The weights of matrix products: every parameter but the embedding lookup (a tied matrix counts
    once, as the head) and the norms' gains (``2 * n_layers + 1`` vectors of ``dim``, elementwise)."""
    embedding = 0 if config.tie_embeddings else config.vocab_size * config.dim
    return count_parameters(config) - embedding - (2 * config.n_layers + 1) * config.dim


def training_flops_per_token(config: LlamaConfig, seq_len: int) -> int:
    """FLOPs of one training token (forward and backward) in a sequence of ``seq_len``: ``6N`` plus attention."""
    attention = 12 * config.n_layers * config.n_heads * config.head_dim * seq_len
    return 6 * matmul_parameters(config) + attention


def model_flops_utilization(tokens_per_second: float, flops_per_token: float, peak_flops: float) -> float:
    """The share of ``peak_flops`` (FLOP/s of the hardware doing the work) that the model's arithmetic uses."""
    if not peak_flops > 0:
        raise ValueError(f"peak_flops must be a positive FLOP/s figure, got {peak_flops!r}")
    return tokens_per_second * flops_per_token / peak_flops
