"""Right-padding token-id lists into a batch."""

from __future__ import annotations

import torch


def pad_right(seqs: list[list[int]], pad_id: int = 0, length: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[[ids...], ...] -> (tokens [B, T], mask [B, T] True on real tokens), T the longest sequence (or `length`
    if that is longer)."""
    T = max(max(len(s) for s in seqs), length)
    tokens = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for r, s in enumerate(seqs):
        tokens[r, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, :len(s)] = True
    return tokens, mask
