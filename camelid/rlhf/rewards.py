"""Scoring answers with the helpfulness and safety reward models, combined as Llama-2 eq. (4)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from camelid.chat_format import encode_reply
from camelid.data.padding import pad_right
from camelid.errors import CamelidError
from camelid.fsutil import iter_jsonl
from camelid.reward_model import RewardModel, combined_reward
from camelid.tasks import make_dialogs
from camelid.train.stage import flag_overrides


@dataclass
class Prompt:
    """A prompt for sampling: dialog messages ending with the user turn, and whether it is a safety prompt."""
    messages: list[dict]
    is_safety: bool = False
    example: object = None  # the proving-ground Example, when there is one (for judging)


def load_prompts(spec: str, split: str = "train", n: int = 256, seed: int = 0) -> list[Prompt]:
    """`proving-ground` (its train or test split) or a JSONL file of {"messages"|"prompt", "is_safety"?}."""
    if spec == "proving-ground":
        return [Prompt(ex.messages, ex.kind == "safety", ex) for ex in make_dialogs(split, n, seed=seed)]
    if not Path(spec).is_file():
        raise CamelidError(f"{spec}: prompts file not found (or use 'proving-ground')")
    out = []
    for where, row in iter_jsonl(spec, CamelidError):
        if "messages" in row:
            msgs = row["messages"]
        elif "prompt" in row:
            msgs = [{"role": "user", "content": row["prompt"]}]
        else:
            raise CamelidError(f"{where}: expected a 'messages' or 'prompt' key")
        out.append(Prompt(msgs, bool(row.get("is_safety", False))))
    return out


class RewardScorer:
    """Both reward models, frozen, behind one call: answers -> calibrated logits and their combination."""

    def __init__(self, helpful: RewardModel, safety: RewardModel | None, tokenizer, max_len: int | None = None,
                 batch_size: int = 16):
        self.helpful, self.safety, self.tok = helpful.eval(), (safety.eval() if safety is not None else None), tokenizer
        for m in (self.helpful, self.safety):
            if m is not None:
                m.requires_grad_(False)
        self.max_len = max_len or helpful.args.max_seq_len
        self.batch_size = batch_size

    def _encode(self, prompts: list[Prompt], answers: list[str]) -> list[list[int]]:
        return [encode_reply(self.tok, p.messages, a, self.max_len) for p, a in zip(prompts, answers)]

    def longest(self, prompts: list[Prompt], answers: list[str]) -> int:
        """The longest sequence of a batch as the reward models read it (see `score`'s pad_to)."""
        return max((len(s) for s in self._encode(prompts, answers)), default=0)

    @torch.no_grad()
    def _score(self, model: RewardModel, seqs: list[list[int]], pad_to: int = 0) -> torch.Tensor:
        device = next(model.parameters()).device
        out = []
        for i in range(0, len(seqs), self.batch_size):
            tokens, mask = pad_right(seqs[i:i + self.batch_size], length=pad_to)
            out.append(model.calibrated_logit(model(tokens.to(device), mask=mask.to(device))).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def score(self, prompts: list[Prompt], answers: list[str], pad_to: int = 0) -> dict[str, torch.Tensor]:
        """{"helpful", "safety", "combined"}: calibrated logits per answer (combined: Llama-2 eq. 4). pad_to: pad
        every batch to at least this length (a score's last bits depend on the padded length; torchrun ranks
        that score shares of one batch pad to its longest sequence, so each score is the one-process score)."""
        seqs = self._encode(prompts, answers)
        helpful = self._score(self.helpful, seqs, pad_to)
        if self.safety is None:
            return {"helpful": helpful, "safety": None, "combined": helpful}
        safety = self._score(self.safety, seqs, pad_to)
        is_safety = torch.tensor([p.is_safety for p in prompts])
        return {"helpful": helpful, "safety": safety, "combined": combined_reward(helpful, safety, is_safety)}


# ------------------------------------------------------------------------------------------------ settings

def policy_overrides(stage: str, *, policy: str | None = None, reward_helpful: str | None = None,
                     reward_safety: str | None = None, prompts: str | None = None, iterations: int | None = None,
                     overrides: list[str] | None = None, **extra) -> list[str]:
    """Config overrides of rejection sampling and PPO (`stage`: rs or ppo) from the settings they share, each
    given (not None) as `key=value` (`extra`: more keys of the stage's section), then `overrides`."""
    given = {"model.init_from": policy, f"{stage}.reward_helpful": reward_helpful,
             f"{stage}.reward_safety": reward_safety, f"{stage}.prompts": prompts,
             f"{stage}.iterations": iterations, **{f"{stage}.{k}": v for k, v in extra.items()}}
    return flag_overrides(given) + list(overrides or [])
