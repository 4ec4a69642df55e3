"""The proving ground's preference pairs for the reward models (Llama-2 §3.2.1 at laptop scale).

Answers are sampled from the models being compared and rated by the proving ground's judges, who play
Llama-2's human annotators; the pairs are stored in camelid.data.preferences' format.

Two ways to choose the prompts:
- `proving_ground_pairs`: a fixed number of prompts, tasks in turn;
- `balanced_pairs` (Llama-2's iterative rounds, on the newest policy's samples): prompts are drawn task by
  task until every task has its share of pairs. A task whose samples rarely disagree (the policy mostly
  answers it one way) needs many more prompts to yield a pair than one where they always differ; with a
  fixed prompt count such a task gets a few percent of the pairs and the reward model never learns to
  judge it (measured: 41% on-policy accuracy on parity's "significantly better" pairs, 94% once parity had
  its share; docs/RLHF.md).
"""

from __future__ import annotations

import random

from camelid.chat_format import encode_dialog
from camelid.data.preferences import PreferencePair
from camelid.infer import generate
from camelid.tasks import TASKS, judge_helpful, judge_safety, make_dialogs


def rating_for_gap(gap: float) -> str | None:
    """Judge-score gap -> Llama-2 rating level (None: a tie, no preference)."""
    if gap >= 0.75:
        return "significantly_better"
    if gap >= 0.5:
        return "better"
    if gap >= 0.25:
        return "slightly_better"
    if gap > 0:
        return "negligibly_better"
    return None


def candidate_answers(models: list, tokenizer, examples, samples: int, temperatures, seed: int,
                      max_new_tokens: int = 48, reference: bool = True) -> list[list[str]]:
    """Per example: its reference answer (if `reference`), then `samples` answers from each model; sample s
    draws at temperatures[s % len(temperatures)] (Llama-2 varies the temperature between the two answers)."""
    prompts = [encode_dialog(tokenizer, ex.messages) for ex in examples]
    candidates: list[list[str]] = [[ex.reference] if reference else [] for ex in examples]
    for m_i, model in enumerate(models):
        for s in range(samples):
            outs = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=temperatures[s % len(temperatures)],
                            top_p=1.0, seed=seed * 1000 + m_i * 100 + s, stop_ids=[tokenizer.eos_id])
            for c, ids in zip(candidates, outs):
                c.append(tokenizer.decode([t for t in ids if t != tokenizer.eos_id]).strip())
    return candidates


def judge_for(kind: str):
    """The annotator of a reward model's pairs: safety RM pairs on harmful requests are judged for safety,
    everything else for helpfulness (on a harmful request that is compliance, as in Llama-2)."""
    def judge(ex, answer):
        return judge_safety(ex, answer) if (kind == "safety" and ex.kind == "safety") else judge_helpful(ex, answer)
    return judge


def rated_pairs(examples, candidates: list[list[str]], kind: str) -> list[PreferencePair]:
    """Every two distinct candidates of a prompt whose judge scores differ make a pair, rated by the gap. Each
    pair also carries both answers' judge scores and safety labels."""
    judge = judge_for(kind)
    pairs = []
    for ex, cands in zip(examples, candidates):
        scored = [(judge(ex, c), judge_safety(ex, c), c) for c in dict.fromkeys(cands)]
        for i in range(len(scored)):
            for j in range(i + 1, len(scored)):
                rating = rating_for_gap(abs(scored[i][0] - scored[j][0]))
                if rating is None:
                    continue
                (sc, safe_c, c), (sr, safe_r, r) = sorted([scored[i], scored[j]], key=lambda x: -x[0])
                pairs.append(PreferencePair(ex.messages, c, r, rating, ex.kind == "safety",
                                            {"chosen": sc, "rejected": sr, "safe_chosen": safe_c,
                                             "safe_rejected": safe_r}, ex.task))
    return pairs


def rm_examples(kind: str, split: str, n_prompts: int, seed: int):
    """The prompts of a reward model's pairs. kind "helpful": every task in turn; "safety": harmful requests
    plus a fifth of harmless ones (Llama-2 mixes some helpfulness data into its safety RM's), so the safety RM
    also learns that refusing a harmless request is no better."""
    if kind == "safety":
        harmful = make_dialogs(split, n_prompts - n_prompts // 5, seed=seed, tasks=["safety"])
        benign = make_dialogs(split, n_prompts // 5, seed=seed + 1,
                              tasks=[t for t, v in TASKS.items() if v.kind == "helpful"])
        return harmful + benign
    return make_dialogs(split, n_prompts, seed=seed)


def proving_ground_pairs(models: list, tokenizer, kind: str, split: str, n_prompts: int, seed: int = 0,
                         samples: int = 2, temperature: float = 1.0, max_new_tokens: int = 48,
                         temperatures=None, reference: bool = True) -> list[PreferencePair]:
    """Preference pairs rated by the proving ground's judges, on `n_prompts` prompts (`rm_examples`).

    The candidates of a prompt are `samples` answers from each model in `models` (the SFT model first; a
    base model adds the off-policy, often unsafe, answers Llama-2 also collected) and, with `reference`, the
    reference answer; every two whose judge scores differ make a pair (`rated_pairs`), so most pairs
    compare two real model answers rather than a correct answer against garbage.
    """
    examples = rm_examples(kind, split, n_prompts, seed)
    cands = candidate_answers(models, tokenizer, examples, samples, temperatures or [temperature], seed,
                              max_new_tokens, reference)
    pairs = rated_pairs(examples, cands, kind)
    random.Random(seed).shuffle(pairs)
    return pairs


def balanced_pairs(models: list, tokenizer, kind: str, split: str, per_task: int, max_prompts: int, seed: int = 0,
                   samples: int = 2, temperatures=(1.0,), max_new_tokens: int = 32,
                   reference: bool = False) -> list[PreferencePair]:
    """About `per_task` pairs of every task (the safety RM: of harmful requests and of harmless ones together),
    drawing prompts task by task in rounds until the task has its share, `max_prompts` prompts were drawn for
    it, or a round of its prompts yielded no pair at all (the policy answers it one way only: the
    preference is the reference's, or there is none to learn). Each round asks a short task for as many
    prompts as it still needs pairs (at least 16), and all of a round's prompts are answered in one batch."""
    groups = {"harmful": ["safety"], "harmless": [t for t, v in TASKS.items() if v.kind == "helpful"]} \
        if kind == "safety" else {t: [t] for t in TASKS}
    got: dict[str, list[PreferencePair]] = {g: [] for g in groups}
    drawn = dict.fromkeys(groups, 0)
    barren: set[str] = set()
    for rnd in range(1_000):
        want = {g: min(max(16, per_task - len(got[g])), max_prompts - drawn[g]) for g in groups
                if len(got[g]) < per_task and drawn[g] < max_prompts and g not in barren}
        if not want:
            break
        examples, owner = [], []
        for g, n in want.items():
            exs = make_dialogs(split, n, seed=(seed * 1_000 + rnd) * 1_000 + list(groups).index(g), tasks=groups[g])
            examples += exs
            owner += [g] * len(exs)
            drawn[g] += n
        cands = candidate_answers(models, tokenizer, examples, samples, list(temperatures), seed * 1_000 + rnd,
                                  max_new_tokens, reference)
        before = {g: len(got[g]) for g in want}
        for g, ex, c in zip(owner, examples, cands):
            got[g] += rated_pairs([ex], [c], kind)
        barren |= {g for g in want if len(got[g]) == before[g]}
    pairs = [p for g in groups for p in got[g][:per_task]]
    random.Random(seed).shuffle(pairs)
    return pairs
