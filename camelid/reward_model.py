"""Llama-2's reward model (§3.2.2): the LM with its next-token head replaced by a scalar head, and the
rule that combines the helpfulness and safety rewards for RLHF.

The score of a sequence is read at its last real token, with rotary positions that count only real
tokens, so it does not depend on the padding side or amount.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from camelid.model import ModelArgs, Transformer

SAFETY_THRESHOLD = 0.15  # Llama-2 eq. (4): below this calibrated safety probability, safety wins


class RewardModel(Transformer):
    """The `Transformer` backbone (no vocabulary head) plus `reward_head`, a scalar head (dim -> 1, no bias,
    as Hugging Face's LlamaForSequenceClassification `score`). `calibration` maps raw scores to
    calibrated logits: sigmoid(scale * score + bias) is the probability that reads against 0.15."""

    kind = "reward"

    def __init__(self, args: ModelArgs, lm_head: bool = False):
        """lm_head=True keeps the language model's head beside the reward head while training, for the language-
        modelling regularizer (rm.lm_weight); `drop_lm_head` removes it before the reward model is saved."""
        super().__init__(args, lm_head=lm_head)
        self.reward_head = nn.Linear(args.dim, 1, bias=False)
        self.calibration = {"scale": 1.0, "bias": 0.0}
        if not self.reward_head.weight.is_meta:
            nn.init.normal_(self.reward_head.weight, std=1.0 / math.sqrt(args.dim + 1))

    @classmethod
    def from_lm(cls, lm: Transformer, keep_lm_head: bool = False) -> "RewardModel":
        """Initialise from a language model (the SFT checkpoint): every weight but the head is copied (the head
        too with `keep_lm_head`)."""
        with torch.device("meta"):
            rm = cls(lm.args, lm_head=keep_lm_head)
        # clone: the reward model must own its weights (a shared tensor would be trained by two optimizers)
        sd = {k: v.clone() for k, v in lm.state_dict().items() if keep_lm_head or not k.startswith("output.")}
        dev = lm.tok_embeddings.weight.device
        sd["reward_head.weight"] = torch.randn(1, lm.args.dim, device=dev) / math.sqrt(lm.args.dim + 1)
        rm.load_state_dict(sd, assign=True)
        return rm

    def _hidden(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states [B, T, dim], the bool mask), rotary positions counting real tokens only."""
        mask = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.bool()
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        return self.hidden(tokens, positions=positions, mask=mask), mask

    def token_scores(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The head at every position [B, T] fp32 (PPO's value model reads all of them)."""
        return self.reward_head(self._hidden(tokens, mask)[0]).squeeze(-1).float()

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, lm_rows: torch.Tensor | None = None):
        """tokens [B, T] with mask [B, T] (True = real token; padding on either side) -> scores [B] fp32,
        read at each row's last real token. With `lm_rows` (a model kept with its LM head): (scores, the
        next-token logits [len(lm_rows), T, vocab] of those rows) from the same forward."""
        hidden, mask = self._hidden(tokens, mask)
        last = (torch.arange(tokens.shape[1], device=tokens.device) * mask).argmax(1)
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        scores = self.reward_head(hidden[rows, last]).squeeze(-1).float()
        if lm_rows is None:
            return scores
        if getattr(self, "output", None) is None:
            raise ValueError("lm_rows: this reward model has no language-model head (RewardModel.from_lm(..., "
                             "keep_lm_head=True) keeps it)")
        return scores, self.output(hidden[lm_rows])

    def drop_lm_head(self) -> "RewardModel":
        """The reward model alone: the training-only language-model head removed (a no-op without one)."""
        if getattr(self, "output", None) is not None:
            self.output = None
        return self

    def calibrated_logit(self, scores: torch.Tensor) -> torch.Tensor:
        return self.calibration["scale"] * scores + self.calibration["bias"]


# Llama-2 Table 27: margin m(r) per rating, for the two margin settings.
RATINGS = ["significantly_better", "better", "slightly_better", "negligibly_better"]
MARGINS = {
    "none": {r: 0.0 for r in RATINGS},
    "small": {"significantly_better": 1.0, "better": 2 / 3, "slightly_better": 1 / 3, "negligibly_better": 0.0},
    "large": {"significantly_better": 3.0, "better": 2.0, "slightly_better": 1.0, "negligibly_better": 0.0},
}
RATING_ALIASES = {"unsure": "negligibly_better", "negligibly_better_or_unsure": "negligibly_better",
                  "significantly better": "significantly_better", "slightly better": "slightly_better",
                  "negligibly better": "negligibly_better"}


def normalize_rating(rating: str | None) -> str:
    if rating is not None and not isinstance(rating, str):
        raise ValueError(f"rating {rating!r} is not one of the allowed ratings: {', '.join(RATINGS)} (or unsure)")
    r = (rating or "negligibly_better").strip().lower()
    r = RATING_ALIASES.get(r, r).replace(" ", "_").replace("-", "_")
    if r not in RATINGS:
        raise ValueError(f"unknown rating {rating!r}; use one of {', '.join(RATINGS)} (or unsure)")
    return r


def ranking_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float = 0.0,
                 reduction: str = "sum") -> torch.Tensor:
    """Llama-2 eq. (2): -log sigmoid(r(x, y_c) - r(x, y_r) - m(r))."""
    loss = -torch.nn.functional.logsigmoid(chosen - rejected - margin)
    return loss.sum() if reduction == "sum" else loss.mean() if reduction == "mean" else loss


def combined_reward(helpful: torch.Tensor, safety: torch.Tensor, is_safety: torch.Tensor,
                    threshold: float = SAFETY_THRESHOLD) -> torch.Tensor:
    """Llama-2 eq. (4) on calibrated logits: the safety reward where the prompt is a safety prompt or
    the safety probability is below `threshold`, else the helpfulness reward. Returns logit(R_c)
    (the input to whitening); since both inputs are logits, logit(sigmoid(x)) is x itself."""
    use_safety = is_safety.bool() | (torch.sigmoid(safety) < threshold)
    return torch.where(use_safety, safety, helpful)


def whiten(x: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean (optionally kept) and unit variance over the batch."""
    mean, var = x.mean(), x.var(unbiased=False)
    out = (x - mean) * torch.rsqrt(var + eps)
    return out if shift_mean else out + mean
