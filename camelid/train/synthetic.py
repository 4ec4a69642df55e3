"""A deterministic, learnable stand-in for real data: for tests and benchmarks."""

from __future__ import annotations

import torch


class SyntheticTokens:
    """Window g is a noisy arithmetic sequence mod vocab_size drawn from a generator seeded by (seed, g):
    random access, no files, and a model can learn it (so a falling loss means something)."""

    def __init__(self, vocab_size: int, seq_len: int, seed: int = 0, noise: float = 0.1):
        self.vocab_size, self.seq_len, self.seed, self.noise = vocab_size, seq_len, seed, noise

    def window(self, g: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + g)
        start = torch.randint(0, self.vocab_size, (1,), generator=gen)
        stride = torch.randint(1, 4, (1,), generator=gen)
        seq = (start + stride * torch.arange(self.seq_len + 1)) % self.vocab_size
        noisy = torch.rand(self.seq_len + 1, generator=gen) < self.noise
        return torch.where(noisy, torch.randint(0, self.vocab_size, (self.seq_len + 1,), generator=gen), seq)

    def fetch(self, indices) -> dict:
        return {"tokens": torch.stack([self.window(int(g)) for g in indices])}

    def state_dict(self) -> dict:
        return {"kind": "synthetic", "vocab_size": self.vocab_size, "seq_len": self.seq_len, "seed": self.seed}
