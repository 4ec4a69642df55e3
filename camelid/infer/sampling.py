"""Choosing the next token: greedy, temperature, top-k and top-p (nucleus), vectorised over a batch
whose rows may each ask for different settings.

Order of the filters, as Hugging Face applies them and Meta's `sample_top_p` implies: logits are divided
by the temperature, then the top-k most likely tokens are kept, then the smallest set of the most
likely tokens whose probability reaches top-p (Meta's rule: a token is dropped when the probability of
the tokens before it already exceeds top-p). A row with temperature 0 is greedy (argmax).

Drawing inverts the cumulative distribution: one uniform u per row, scaled by the row's kept mass (no
renormalisation needed), picks the first token whose cumulative probability exceeds it. A row with its
own seeded generator draws its u from it, so it gets the same tokens whatever else shares its batch. One
number per row is cheap; an "exponential race" (argmax of p_i / E_i) drew a number per vocabulary entry,
which on a CPU cost more than the quickstart model's whole decode step at 128 rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter

    def __post_init__(self):
        if not (self.temperature >= 0):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k must be an integer >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def filtered_probs(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                   top_k: torch.Tensor) -> torch.Tensor:
    """Probabilities [n, V] after temperature, top-k and top-p (not renormalised; rows with temperature 0
    are treated as temperature 1 here and are decided by argmax elsewhere)."""
    n, V = logits.shape
    t = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    logits = logits.float() / t.unsqueeze(1)
    need_p = bool((top_p < 1.0).any())
    need_k = bool(((top_k > 0) & (top_k < V)).any())
    if not need_p and not need_k:
        return torch.softmax(logits, dim=-1)
    if need_p:
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
    else:  # top-k only: a partial sort is enough
        kmax = int(top_k.max())
        sorted_logits, idx = torch.topk(logits, kmax, dim=-1)
    probs = torch.softmax(logits, dim=-1)
    probs_sorted = probs.gather(-1, idx)
    width = sorted_logits.shape[-1]
    drop = torch.zeros(n, width, dtype=torch.bool, device=logits.device)
    if need_k:
        k = torch.where(top_k > 0, top_k, torch.full_like(top_k, width)).clamp_max(width)
        drop |= torch.arange(width, device=logits.device).unsqueeze(0) >= k.unsqueeze(1)
    if need_p:
        before = probs_sorted.cumsum(-1) - probs_sorted  # probability of the tokens ranked above
        drop |= before > top_p.unsqueeze(1)
    drop[:, 0] = False  # the most likely token always survives
    kept = probs_sorted.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(-1, idx, kept)


def sample(logits: torch.Tensor, temperature, top_p, top_k, generator: torch.Generator | None = None,
           row_generators: dict[int, torch.Generator] | None = None) -> torch.Tensor:
    """Next tokens [n] (int64) from logits [n, V].

    temperature, top_p, top_k: per-row tensors [n] (or Python scalars for the whole batch).
    generator: draws the uniform of every row; row_generators: {row: generator} for rows with their own seed.
    """
    n, V = logits.shape
    dev = logits.device

    def per_row(x, dtype):
        if isinstance(x, torch.Tensor):
            return x.to(device=dev, dtype=dtype)
        return torch.full((n,), x, device=dev, dtype=dtype)

    temperature = per_row(temperature, torch.float32)
    greedy_tok = logits.argmax(-1)
    greedy = temperature == 0
    if bool(greedy.all()):
        return greedy_tok
    probs = filtered_probs(logits, temperature, per_row(top_p, torch.float32), per_row(top_k, torch.int64))
    cdf = probs.cumsum(-1)
    u = torch.rand(n, generator=generator, device=dev)
    for row, g in (row_generators or {}).items():
        u[row] = torch.rand((), generator=g, device=dev)
    total = cdf[:, -1]
    # u * total may round up to total, past the last token with any mass
    target = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    drawn = torch.searchsorted(cdf, target.unsqueeze(1), right=True).squeeze(1)
    return torch.where(greedy, greedy_tok, drawn)
