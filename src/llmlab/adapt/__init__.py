"""Adaptation (survey §5): instruction data and templates, LoRA, and the SFT, reward, DPO, PPO and GRPO methods,
all trained by the one Trainer through its loss-function seam."""
