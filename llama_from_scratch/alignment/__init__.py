"""Alignment the way Llama 2-Chat was made (Touvron et al. 2023, section 3): RLHF at laptop scale, on tasks
whose truth is known.

:mod:`.losses` (the Bradley-Terry ranking loss, PPO's clipped surrogate, GRPO's group advantages, Llama 2's
combined and KL-penalised reward).
"""

from .losses import bradley_terry_loss, group_advantages, llama2_reward, ppo_clip_loss, ppo_reward, whiten

__all__ = ["bradley_terry_loss", "group_advantages", "llama2_reward", "ppo_clip_loss", "ppo_reward", "whiten"]
