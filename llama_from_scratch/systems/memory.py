"""Where the memory of a training step goes: parameters, gradients, optimizer state, activations.

Training a model of ``N`` parameters with AdamW keeps, per parameter, its value, its gradient and the
optimizer's two moments (``exp_avg``, ``exp_avg_sq``): in float32 that is 4 + 4 + 8 = 16 bytes, 108 GB
for LLaMA 7B before a single activation. Mixed precision in the ZeRO paper's accounting (Rajbhandari
et al., 2020) is the same 16 bytes arranged differently: 2 for a float16 copy of the weights, 2 for the
float16 gradient, 12 for the float32 master weights and the two moments (their ``K = 12``).

**Data parallelism** (``ddp``) replicates all of it on every device. **ZeRO** splits it between the
``world_size`` devices instead of replicating it: stage 1 (``zero1``) shards the optimizer state, stage 2
(``zero2``) the gradients too, stage 3 (``zero3``, which is what FSDP does) the parameters as well,
gathering one block's full weights just before it runs (that transient block is left out here, as in
the ZeRO paper's figure 1).

**Activations** are what the forward pass saves for the backward pass. For this package's model, per
token and per block, that is (counted from the autograd graph; ``tests/test_systems.py`` checks it
against the tensors PyTorch actually saves):

* each RMSNorm: its input, the normalised input before the gain, one ``rsqrt`` per token, and its output
  (the input of the next matrices): ``3 * dim + 1``, twice;
* attention: ``q`` (``dim``), ``k`` and ``v`` (``n_kv_heads * head_dim`` each), the output (``dim``, also
  ``wo``'s input) and one log-sum-exp per head, saved by the fused kernel instead of the
  ``(seq, seq)`` weights;
* SwiGLU: ``w1``'s output, its SiLU, ``w3``'s output and their product: ``4 * hidden_dim``;

plus RoPE's cos and sin tables (``seq * head_dim``, shared by every block) and the loss: the final norm
(``3 * dim + 1``; the gradient :mod:`..cross_entropy` computes for it during the forward pass takes the
place of its output), the int64 targets, and the head's gradient, also computed in the forward pass
(``vocab_size x dim``). **Activation checkpointing** saves
only each block's input (``dim`` per token) and recomputes one block at a time in the backward pass, so
at its peak it holds ``n_layers * dim`` per token plus one block's activations.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import LlamaConfig
from ..model import count_parameters

STRATEGIES = ("ddp", "zero1", "zero2", "zero3")
FP32_ADAMW = (4, 4, 8)  # bytes per parameter: float32 weight, float32 gradient, AdamW's two float32 moments
MIXED_PRECISION_ADAMW = (2, 2, 12)  # the ZeRO paper's: float16 weight and gradient; master copy and moments


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes per device of one training step, by kind."""

    parameters: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.parameters + self.gradients + self.optimizer + self.activations


def model_state_bytes(
    n_parameters: int,
    strategy: str = "ddp",
    world_size: int = 1,
    bytes_per_parameter: tuple[int, int, int] = FP32_ADAMW,
) -> tuple[float, float, float]:
    """``(parameters, gradients, optimizer)`` bytes per device for ``n_parameters`` under ``strategy``.

    ``bytes_per_parameter`` is (weight, gradient, optimizer state): :data:`FP32_ADAMW` (the course's
    runs) or :data:`MIXED_PRECISION_ADAMW`. Sharded parts are divided evenly between ``world_size``
    devices (FSDP pads each tensor to a multiple of ``world_size`` rows: a few bytes more).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    sharded = STRATEGIES.index(strategy)  # how many of optimizer, gradients, parameters are split
    weight, gradient, optimizer = (n_parameters * b for b in bytes_per_parameter)
    return (
        weight / world_size if sharded >= 3 else weight,
        gradient / world_size if sharded >= 2 else gradient,
        optimizer / world_size if sharded >= 1 else optimizer,
    )


def block_activation_elements(config: LlamaConfig, tokens: int) -> int:
    """Numbers one block saves for the backward pass over ``tokens`` tokens (module docstring)."""
    kv_dim = config.n_kv_heads * config.head_dim
    norms = 2 * (3 * config.dim + 1)
    attention = 2 * config.dim + 2 * kv_dim + config.n_heads
    return tokens * (norms + attention + 4 * config.hidden_dim)


def activation_bytes(
    config: LlamaConfig,
    batch_size: int,
    seq_len: int,
    activation_checkpointing: bool = False,
    bytes_per_number: int = 4,
) -> int:
    """Peak bytes of saved activations per device for a micro-batch of ``batch_size x seq_len`` tokens.

    Exact for this package's model in float32 (``bytes_per_number=4``; the int64 targets count 8 bytes
    each). Under 16-bit autocast most saved tensors take 2 bytes, the norms' and the loss's stay float32:
    ``bytes_per_number=2`` then gives a lower bound.
    """
    tokens = batch_size * seq_len
    block = block_activation_elements(config, tokens)
    blocks = config.n_layers * tokens * config.dim + block if activation_checkpointing else config.n_layers * block
    rope = seq_len * config.head_dim  # cos and sin, (seq, head_dim / 2) each
    loss = tokens * (3 * config.dim + 1) + config.vocab_size * config.dim
    return (blocks + rope + loss) * bytes_per_number + 8 * tokens


def training_memory(
    config: LlamaConfig,
    batch_size: int,
    seq_len: int,
    strategy: str = "ddp",
    world_size: int = 1,
    activation_checkpointing: bool = False,
    bytes_per_parameter: tuple[int, int, int] = FP32_ADAMW,
    bytes_per_number: int = 4,
) -> TrainingMemory:
    """Bytes per device of training ``config`` on micro-batches of ``batch_size`` sequences of ``seq_len``.

    ``batch_size`` is per device (data parallelism and ZeRO split the global batch), so the activations
    do not depend on ``strategy``; the model states do (:func:`model_state_bytes`).
    """
    states = model_state_bytes(count_parameters(config), strategy, world_size, bytes_per_parameter)
    return TrainingMemory(
        *states, activation_bytes(config, batch_size, seq_len, activation_checkpointing, bytes_per_number)
    )
