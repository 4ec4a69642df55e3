"""A reward model measured where rejection sampling and PPO use it: on the current policy's own answers.

Held-out accuracy on the RM's own kind of pairs can look fine while the model is blind on the
comparisons RS and PPO make (two samples of one policy to one prompt): it may have learned shortcuts
that separate a reference answer from a base model's garbage. So the RM stage also answers held-out
prompts four times with the policy (no reference), and reports
- `accuracy_on_policy`: accuracy by rating on the pairs of those answers that the judges tell apart;
- `shortcuts`: per task, the mean within-prompt Spearman correlation of the reward with the judge's score
  (1: the reward orders a prompt's answers as the judge does; about 0: it cannot tell them apart, whatever
  it keys on instead).
"""

from __future__ import annotations

import json

import torch

from camelid.data.preferences import PreferencePair
from camelid.reward_model import RATINGS
from camelid.train.rm_pairs import candidate_answers, judge_for, rated_pairs, rm_examples


def accuracy_by_rating(chosen: torch.Tensor, rejected: torch.Tensor, pairs: list[PreferencePair]) -> dict:
    """Llama-2 Table 8 layout: accuracy per rating level, and over all pairs ("average")."""
    right = (chosen > rejected).float()
    out = {}
    for r in RATINGS:
        sel = torch.tensor([p.rating == r for p in pairs])
        out[r] = right[sel].mean().item() if sel.any() else None
    out["average"] = right.mean().item() if len(right) else None
    return out


def ranks(xs: list[float]) -> list[float]:
    """Ranks from 1, ties sharing their mean rank (as Spearman's rho needs)."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    out = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson on tie-averaged ranks); None when either side is constant."""
    rx, ry = ranks(x), ranks(y)
    n = len(x)
    mx, my = sum(rx) / n, sum(ry) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / (sxx * syy) ** 0.5


def shortcut_check(tasks: list[str], rewards: list[list[float]], judged: list[list[float]]) -> dict:
    """Per task: the mean within-prompt Spearman correlation of reward and judge score over the prompts whose
    answers the judge tells apart, and how many prompts that was."""
    per: dict[str, list[float]] = {}
    for t, r, j in zip(tasks, rewards, judged):
        rho = spearman(r, j) if len(r) > 1 else None
        if rho is not None:
            per.setdefault(t, []).append(rho)
    return {t: {"spearman": sum(v) / len(v), "prompts": len(v)} for t, v in sorted(per.items())}


@torch.no_grad()
def on_policy_report(score, policy, tokenizer, kind: str, n_prompts: int, seed: int, temperatures) -> dict:
    """`score(prompts, answers) -> [n]` is the reward model; the policy answers n_prompts held-out prompts
    four times (temperatures alternating). Returns accuracy_on_policy (by rating, and "pairs" per rating) and
    the shortcut check."""
    examples = rm_examples(kind, "test", n_prompts, seed)
    cands = [list(dict.fromkeys(c)) for c in candidate_answers([policy], tokenizer, examples, 4, temperatures,
                                                                 seed, reference=False)]
    flat = [(ex, a) for ex, c in zip(examples, cands) for a in c]
    rewards = score([ex.messages for ex, _ in flat], [a for _, a in flat]).tolist()
    by_answer = {(json.dumps(ex.messages), a): r for (ex, a), r in zip(flat, rewards)}
    pairs = rated_pairs(examples, cands, kind)
    chosen = torch.tensor([by_answer[(json.dumps(p.prompt), p.chosen)] for p in pairs])
    rejected = torch.tensor([by_answer[(json.dumps(p.prompt), p.rejected)] for p in pairs])
    judge = judge_for(kind)
    it = iter(rewards)
    per_prompt = [[next(it) for _ in c] for c in cands]
    return {"accuracy_on_policy": accuracy_by_rating(chosen, rejected, pairs) if pairs else {},
            "on_policy_pairs": {r: sum(p.rating == r for p in pairs) for r in dict.fromkeys(p.rating for p in pairs)},
            "shortcuts": shortcut_check([ex.task for ex in examples], per_prompt,
                                        [[judge(ex, a) for a in c] for ex, c in zip(examples, cands)])}
