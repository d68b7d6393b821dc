"""The course's chapters and their exercises, in one table: what a new chapter adds to be checked and tested.

A :class:`Chapter` names its files (``notebooks/<name>.ipynb``, the solution ``solutions/<name>.ipynb``,
from which ``exercises/<name>.ipynb`` is generated) and its :class:`Exercise` s: the function the learner
writes (``my_`` + the name of the package's own function for it), the check its graded cell calls, and
the catalogued mistakes that check must recognise. ``tests/test_course_checks.py`` reads this table: every
solution passes its checks and its hidden tests, every catalogued mistake fails the check with its own
diagnosis and fails the hidden tests too (a ✓ means full marks), an unwritten answer says so, and every
message fits nbgrader's lines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import (
    alignment_checks,
    attention_checks,
    checkpoints_checks,
    evaluation_checks,
    finetuning_checks,
    generation_checks,
    long_context_checks,
    model_checks,
    quantization_checks,
    rmsnorm_checks,
    rope_checks,
    serving_checks,
    systems_checks,
    tokenizer_checks,
    training_checks,
)
from .feedback import Mistake


@dataclass(frozen=True)
class Exercise:
    """``check(answer)`` passes for a right ``answer`` (the learner's ``name``) and names each of ``mistakes``."""

    name: str
    check: Callable[[Callable], None]
    mistakes: Sequence[Mistake]


@dataclass(frozen=True)
class Chapter:
    """Chapter ``name`` (``"02_embeddings_and_rmsnorm"``): its notebooks and its exercises."""

    name: str
    exercises: tuple[Exercise, ...]

    @property
    def notebook(self) -> str:
        return f"notebooks/{self.name}.ipynb"

    @property
    def solution(self) -> str:
        return f"solutions/{self.name}.ipynb"

    @property
    def exercise_notebook(self) -> str:
        return f"exercises/{self.name}.ipynb"


CHAPTERS = (
    Chapter(
        "01_tokenizer",
        (
            Exercise("my_pair_counts", tokenizer_checks.check_pair_counts, tokenizer_checks.PAIR_COUNTS),
            Exercise("my_merge", tokenizer_checks.check_merge, tokenizer_checks.MERGE),
            Exercise("my_train_bpe", tokenizer_checks.check_train_bpe, tokenizer_checks.TRAIN_BPE),
            Exercise("my_encode", tokenizer_checks.check_bpe_encode, tokenizer_checks.BPE_ENCODE),
        ),
    ),
    Chapter(
        "02_embeddings_and_rmsnorm",
        (
            Exercise("my_rms_norm", rmsnorm_checks.check_rmsnorm, rmsnorm_checks.RMSNORM),
            Exercise("my_transformer_block", rmsnorm_checks.check_transformer_block, rmsnorm_checks.TRANSFORMER_BLOCK),
        ),
    ),
    Chapter(
        "03_rope",
        (
            Exercise("my_apply_rope", rope_checks.check_rope, rope_checks.ROPE),
            Exercise("my_interleaved_to_half", rope_checks.check_interleaved_to_half, rope_checks.INTERLEAVED_TO_HALF),
        ),
    ),
    Chapter(
        "04_attention",
        (
            Exercise(
                "my_scaled_dot_product_attention",
                attention_checks.check_causal_attention,
                attention_checks.CAUSAL_ATTENTION,
            ),
            Exercise("my_kv_cache_bytes", attention_checks.check_kv_cache_bytes, attention_checks.KV_CACHE_BYTES),
        ),
    ),
    Chapter(
        "05_swiglu_and_the_model",
        (
            Exercise("my_swiglu", model_checks.check_swiglu, model_checks.SWIGLU),
            Exercise("my_ffn_hidden_dim", model_checks.check_ffn_hidden_dim, model_checks.FFN_HIDDEN_DIM),
            Exercise("my_count_parameters", model_checks.check_count_parameters, model_checks.COUNT_PARAMETERS),
        ),
    ),
    Chapter(
        "06_kv_cache_and_generation",
        (
            Exercise("my_kv_cache_update", generation_checks.check_kv_cache_update, generation_checks.KV_CACHE_UPDATE),
            Exercise("my_top_p_filter", generation_checks.check_top_p, generation_checks.TOP_P),
            Exercise("my_generate", generation_checks.check_generate, generation_checks.GENERATE),
        ),
    ),
    Chapter(
        "07_training",
        (
            Exercise("my_learning_rate", training_checks.check_lr_schedule, training_checks.LR_SCHEDULE),
            Exercise("my_clip_grad_norm", training_checks.check_clip_gradients, training_checks.CLIP_GRADIENTS),
            Exercise("my_train_step", training_checks.check_train_step, training_checks.TRAIN_STEP),
        ),
    ),
    Chapter(
        "08_real_checkpoints",
        (
            Exercise(
                "my_hf_to_meta_name", checkpoints_checks.check_hf_to_meta_name, checkpoints_checks.HF_TO_META_NAME
            ),
            Exercise("my_merge_shards", checkpoints_checks.check_merge_shards, checkpoints_checks.MERGE_SHARDS),
            Exercise("my_dequantize_q4_1", checkpoints_checks.check_dequantize_q4_1, checkpoints_checks.Q4_1),
        ),
    ),
    Chapter(
        "09_quantization",
        (
            Exercise("my_quantize_int4", quantization_checks.check_quantize_int4, quantization_checks.QUANTIZE_INT4),
            Exercise(
                "my_dequantize_int4", quantization_checks.check_dequantize_int4, quantization_checks.DEQUANTIZE_INT4
            ),
            Exercise("my_quantize_q8_0", quantization_checks.check_quantize_q8_0, quantization_checks.QUANTIZE_Q8_0),
        ),
    ),
    Chapter(
        "10_finetuning",
        (
            Exercise("MyLoRALinear", finetuning_checks.check_lora_linear, finetuning_checks.LORA_LINEAR),
            Exercise("my_mask_labels", finetuning_checks.check_mask_labels, finetuning_checks.MASK_LABELS),
        ),
    ),
    Chapter(
        "11_long_context",
        (
            Exercise(
                "my_flash_attention", long_context_checks.check_flash_attention, long_context_checks.FLASH_ATTENTION
            ),
            Exercise("my_linear_scaling", long_context_checks.check_linear_scaling, long_context_checks.LINEAR_SCALING),
            Exercise(
                "my_dynamic_ntk_theta",
                long_context_checks.check_dynamic_ntk_theta,
                long_context_checks.DYNAMIC_NTK_THETA,
            ),
        ),
    ),
    Chapter(
        "12_evaluation",
        (
            Exercise("my_choice_scores", evaluation_checks.check_choice_scores, evaluation_checks.CHOICE_SCORES),
            Exercise("my_pass_at_k", evaluation_checks.check_pass_at_k, evaluation_checks.PASS_AT_K),
        ),
    ),
    Chapter(
        "13_rlhf",
        (
            Exercise(
                "my_bradley_terry_loss", alignment_checks.check_bradley_terry_loss, alignment_checks.BRADLEY_TERRY
            ),
            Exercise(
                "my_group_advantages", alignment_checks.check_group_advantages, alignment_checks.GROUP_ADVANTAGES
            ),
            Exercise("my_ppo_clip_loss", alignment_checks.check_ppo_clip_loss, alignment_checks.PPO_CLIP_LOSS),
        ),
    ),
    Chapter(
        "14_systems_and_scaling",
        (
            Exercise("my_model_state_bytes", systems_checks.check_model_state_bytes, systems_checks.MODEL_STATE_BYTES),
            Exercise("my_update", systems_checks.check_update, systems_checks.UPDATE),
        ),
    ),
    Chapter(
        "15_serving",
        (
            Exercise("my_append_slot", serving_checks.check_append_slot, serving_checks.APPEND_SLOT),
            Exercise("my_slots", serving_checks.check_slots, serving_checks.SLOTS),
            Exercise("my_admit", serving_checks.check_admit, serving_checks.ADMIT),
        ),
    ),
)
