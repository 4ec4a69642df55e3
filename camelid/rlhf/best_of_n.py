"""Best of n as a way to answer: the policy samples n answers to each held-out prompt, the reward picks one, the
judges score the pick. Llama-2 Figure 7 shows how far the reward of the best of n rises above the median; this
asks whether the judges agree, on the report card's prompts, against the same policy's greedy answer.

The pick is rejection sampling's (`rs.selection_scores`): the combined reward plus `logprob_weight` x log pi of the
answer, the weight in the helpfulness RM's preference units (`RewardScorer.preference_scale`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from camelid.rlhf.gold import gold_scores
from camelid.rlhf.rewards import Prompt, load_prompts, preference_scale
from camelid.rlhf.rollout import answer_logprobs, encode_prompts, sample_answers
from camelid.rlhf.rs import best_of_k, selection_scores

MAX_NEW_TOKENS = 24  # as the report card's greedy answers


@dataclass
class Candidates:
    """n answers to each of N prompts: texts in prompt order (prompt i's at [i * n, (i + 1) * n)), the policy's
    log-probability of each and the judges' score of each, [N, n]."""
    prompts: list[Prompt]
    texts: list[str]
    logp: torch.Tensor
    gold: torch.Tensor

    @property
    def n(self) -> int:
        return self.logp.shape[1]

    @property
    def flat_prompts(self) -> list[Prompt]:
        return [p for p in self.prompts for _ in range(self.n)]

    def correct(self) -> torch.Tensor:
        """[N, n] 1 where the judges give full credit, as the report card counts a correct answer."""
        return (self.gold >= 1.0 - 1e-9).int()


def sample_candidates(model, tokenizer, prompts: list[Prompt], n: int, temperature: float, seed: int = 0,
                      max_new_tokens: int = MAX_NEW_TOKENS) -> Candidates:
    ids = [i for i in encode_prompts(tokenizer, prompts, model.args.max_seq_len - max_new_tokens) for _ in range(n)]
    outs = sample_answers(model, ids, max_new_tokens, temperature, tokenizer.eos_id,
                          seeds=[seed * 1_000_000 + i for i in range(len(ids))])
    texts = [tokenizer.decode(o).strip() for o in outs]
    device = next(model.parameters()).device
    logp = answer_logprobs(model, ids, [o + [tokenizer.eos_id] for o in outs], device).cpu().view(len(prompts), n)
    gold = gold_scores([p for p in prompts for _ in range(n)], texts).view(len(prompts), n)
    return Candidates(prompts, texts, logp, gold)


def rewards(cands: Candidates, scorer) -> torch.Tensor:
    """[N, n] the combined reward (calibrated logits) of every candidate."""
    return scorer.score(cands.flat_prompts, cands.texts)["combined"].view(cands.logp.shape)


def pick(cands: Candidates, scorer, logprob_weight: float, reward: torch.Tensor | None = None) -> torch.Tensor:
    """[N] the index of the answer the reward picks for each prompt: rejection sampling's choice (`reward`: the
    candidates' `rewards`, when already computed)."""
    reward = rewards(cands, scorer) if reward is None else reward
    no_cut = torch.zeros_like(reward, dtype=torch.bool)  # the greedy answers it is compared with are not cut either
    return best_of_k(selection_scores(reward, no_cut, cands.logp, logprob_weight * preference_scale(scorer)))


def measure_best_of_n(model, tokenizer, scorer, n: int = 4, temperature: float = 0.7, logprob_weight: float = 1.0,
                      n_prompts: int = 540, seed: int = 0) -> dict:
    """The report card's row for best of n: accuracy, mean graded score and the per-prompt results of the picked
    answers to the same prompts as `measure_policy`'s (so that the card compares them with greedy SFT)."""
    prompts = load_prompts("proving-ground", "test", n_prompts, seed)  # the questions evaluate(split="test") asks
    cands = sample_candidates(model.eval(), tokenizer, prompts, n, temperature, seed)
    idx = pick(cands, scorer, logprob_weight)[:, None]
    correct = cands.correct().gather(1, idx).squeeze(1)
    score = cands.gold.gather(1, idx).squeeze(1)
    return {"accuracy": correct.float().mean().item(), "score": score.mean().item(), "n": n_prompts,
            "per_prompt": {"task": [p.example.task for p in prompts], "correct": correct.tolist(),
                           "score": score.tolist()}}
