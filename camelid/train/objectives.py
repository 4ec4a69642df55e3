"""Losses. Each returns a SUM over its targets; the loop divides by the global target count."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # label of a position that is not trained on (prompt tokens, padding)


def split_lm_batch(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token labels: from `tokens` [B, T+1] windows, or explicit `input`/`labels` [B, T]."""
    if "tokens" in batch:
        tokens = batch["tokens"]
        return tokens[:, :-1], tokens[:, 1:]
    return batch["input"], batch["labels"]


class LanguageModeling:
    """Next-token cross-entropy, summed over every label that is not IGNORE (pre-training and SFT)."""

    def count_targets(self, batch: dict) -> int:
        _, labels = split_lm_batch(batch)
        return int((labels != IGNORE).sum())

    def __call__(self, model, batch: dict):
        inputs, labels = split_lm_batch(batch)
        logits = model(inputs, positions=batch.get("positions"), segment_ids=batch.get("segment_ids"))
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
        return loss, {}
