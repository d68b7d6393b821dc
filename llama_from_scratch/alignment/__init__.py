"""Alignment the way Llama 2-Chat was made (Touvron et al. 2023, section 3): RLHF at laptop scale, on tasks
whose truth is known.

:mod:`.losses` (the Bradley-Terry ranking loss, PPO's clipped surrogate, GRPO's group advantages, Llama 2's
combined and KL-penalised reward), :mod:`.reward_model` (a Llama with a scalar head on the last real token,
saved as Hugging Face's LlamaForSequenceClassification), :mod:`.reward_training` (its preference pairs through
the training loop, pair accuracy), :mod:`.policy` (sampled answers, their per-token log-probabilities under the
policy and under the reference, the base with its LoRA adapters off; the policy's loss) and :mod:`.rl` (GRPO and
PPO steps through the training loop, resumable like any run), :mod:`.best_of_n` (best-of-N, Llama 2's Figure 7, rejection-sampling data), :mod:`.gatt`
(Ghost Attention's multi-turn data and adherence by turn), and the tasks whose truth is known: :mod:`.arithmetic_task` (chapter 12's problems as
a verifiable reward and as right-against-wrong pairs) and :mod:`.secret_task` (keep a passkey: decline the
extraction attempts, answer the rest).
"""

from .losses import bradley_terry_loss, group_advantages, llama2_reward, ppo_clip_loss, ppo_reward, whiten
from .reward_model import RewardModel, load_reward_model, reward_model_from_checkpoint, save_reward_model
from .reward_training import RewardData
from .rl import RLConfig, RLData, rl

__all__ = [
    "RLConfig",
    "RLData",
    "RewardData",
    "RewardModel",
    "bradley_terry_loss",
    "group_advantages",
    "llama2_reward",
    "load_reward_model",
    "ppo_clip_loss",
    "ppo_reward",
    "reward_model_from_checkpoint",
    "rl",
    "save_reward_model",
    "whiten",
]
