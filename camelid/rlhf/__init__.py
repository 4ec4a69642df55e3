"""RLHF (Llama-2 §3.2.3): rejection-sampling fine-tuning and PPO, driven by the combined reward."""
