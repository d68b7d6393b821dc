"""Alignment the way Llama 2-Chat was made (Touvron et al. 2023, section 3): RLHF at laptop scale, on tasks
whose truth is known, so that a rising reward can be checked against the rule it stands for.

* :mod:`.losses`: the Bradley-Terry ranking loss, PPO's clipped surrogate, GRPO's group advantages,
  whitening, Llama 2's combined reward and its KL-penalised PPO reward;
* :mod:`.reward_model`: a Llama whose hidden states feed a scalar head at the last real token, saved as
  Hugging Face's ``LlamaForSequenceClassification``; :mod:`.reward_training`: preference pairs through the
  training loop, pair accuracy;
* :mod:`.policy`: sampled answers and their per-token log-probabilities under the policy and under the
  reference (the base with its LoRA adapters off), the policy's loss; :mod:`.rl`: GRPO and PPO through the
  training loop, resumable like any run;
* :mod:`.best_of_n`: best-of-N, Llama 2's Figure 7, rejection-sampling data; :mod:`.gatt`: Ghost Attention's
  multi-turn data and adherence by turn;
* the tasks: :mod:`.arithmetic_task` (chapter 12's problems as a verifiable reward and as right-against-wrong
  pairs), :mod:`.secret_task` (keep a passkey: decline the extraction attempts, answer the rest), and
  :mod:`.builtin`, which names them for the command line.
"""

from .best_of_n import best_of_n, rejection_sampling_examples
from .gatt import INSTRUCTIONS, adherence_by_turn, gatt_example, sample_dialogues
from .losses import bradley_terry_loss, group_advantages, llama2_reward, ppo_clip_loss, ppo_reward, whiten
from .reward_model import RewardModel, load_reward_model, reward_model_from_checkpoint, save_reward_model
from .reward_training import RewardData, RewardModelConfig, train_reward_model
from .rl import RLConfig, RLData, rl

__all__ = [
    "INSTRUCTIONS",
    "RLConfig",
    "RLData",
    "RewardData",
    "RewardModel",
    "RewardModelConfig",
    "adherence_by_turn",
    "best_of_n",
    "bradley_terry_loss",
    "gatt_example",
    "group_advantages",
    "llama2_reward",
    "load_reward_model",
    "ppo_clip_loss",
    "ppo_reward",
    "rejection_sampling_examples",
    "reward_model_from_checkpoint",
    "rl",
    "sample_dialogues",
    "save_reward_model",
    "train_reward_model",
    "whiten",
]
