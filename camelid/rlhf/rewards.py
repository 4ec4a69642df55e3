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
from camelid.train.reward import length_batches
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

    @property
    def preference_scale(self) -> float:
        """Calibrated logits per unit of the helpfulness RM's raw score, the unit a log-probability is weighed in
        (`rs.logprob_weight`). The raw score is what the ranking loss trained: a gap d between two answers to one
        prompt is the RM's log-odds of preferring one (Bradley-Terry). The calibration is fitted across prompts,
        on whether the judges accept an answer at all, and where the raw score says little about that it is
        squeezed (the quickstart's rounds: 0.049, 0.014), squeezing the preferences within a prompt with it."""
        return abs(float(self.helpful.calibration["scale"]))

    def encode(self, prompts: list[Prompt], answers: list[str]) -> list[list[int]]:
        return [encode_reply(self.tok, p.messages, a, self.max_len) for p, a in zip(prompts, answers)]

    def batches(self, seqs: list[list[int]]) -> list[list[int]]:
        """The indices of encoded pairs as the reward models read them: shortest first (ties in order),
        batch_size at a time, each batch padded to its own longest. Pairs of mixed lengths padded to the longest
        of all cost three times the tokens (RS's pool: mean 41 tokens, longest 121)."""
        return length_batches(seqs, self.batch_size)

    @torch.no_grad()
    def _read(self, model: RewardModel, seqs: list[list[int]], batches: list[list[int]]) -> torch.Tensor:
        device = next(model.parameters()).device
        out = []
        for b in batches:
            tokens, mask = pad_right([seqs[i] for i in b])
            out.append(model.calibrated_logit(model(tokens.to(device), mask=mask.to(device))).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def score_batches(self, prompts: list[Prompt], seqs: list[list[int]], batches: list[list[int]]) -> dict:
        """{"helpful", "safety", "combined"} of the pairs in `batches`, in the order read (batch after batch). A
        score's last bits depend on its batch: torchrun ranks each score whole batches of one list's `batches`
        (`rollout.score_shares`), so that every score is the one-process score."""
        helpful = self._read(self.helpful, seqs, batches)
        if self.safety is None:
            return {"helpful": helpful, "safety": None, "combined": helpful}
        safety = self._read(self.safety, seqs, batches)
        is_safety = torch.tensor([prompts[i].is_safety for b in batches for i in b], dtype=torch.bool)
        return {"helpful": helpful, "safety": safety, "combined": combined_reward(helpful, safety, is_safety)}

    def score(self, prompts: list[Prompt], answers: list[str]) -> dict[str, torch.Tensor]:
        """{"helpful", "safety", "combined"}: calibrated logits per answer (combined: Llama-2 eq. 4), in the
        caller's order."""
        seqs = self.encode(prompts, answers)
        batches = self.batches(seqs)
        return in_caller_order(self.score_batches(prompts, seqs, batches), batches)


def preference_scale(scorer) -> float:
    """`RewardScorer.preference_scale`; a known reward (tests, the seeds bench's controls) is its own unit."""
    return float(getattr(scorer, "preference_scale", 1.0))


def in_caller_order(scores: dict, batches: list[list[int]]) -> dict:
    """Scores read batch after batch (`RewardScorer.batches`, all of them) -> the pairs' own order."""
    read = torch.tensor([i for b in batches for i in b], dtype=torch.long)
    return {k: None if v is None else v.new_empty(len(read)).index_copy_(0, read, v) for k, v in scores.items()}


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
