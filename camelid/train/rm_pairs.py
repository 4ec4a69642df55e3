"""The proving ground's preference pairs for the reward models (Llama-2 §3.2.1 at laptop scale).

Answers are sampled from the models being compared and rated by the proving ground's judges, who play
Llama-2's human annotators; the pairs are stored in camelid.data.preferences' format.
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


def proving_ground_pairs(models: list, tokenizer, kind: str, split: str, n_prompts: int, seed: int = 0,
                         samples: int = 2, temperature: float = 1.0, max_new_tokens: int = 48) -> list[PreferencePair]:
    """Preference pairs rated by the proving ground's judges.

    For each prompt the candidates are `samples` answers from each model in `models` (the SFT model
    first; a base model adds the off-policy, often unsafe, answers Llama-2 also collected) and the
    reference answer. Every two candidates whose judge scores differ make a pair, rated by the gap, so
    most pairs compare two real model answers rather than a correct answer against garbage.
    kind "helpful": every task, judged for helpfulness (on a harmful request that is compliance, as in
    Llama-2); "safety": harmful requests judged for safety, plus a fifth of harmless ones judged for
    helpfulness (is_safety marks the harmful ones). Each pair also carries both answers' safety labels.
    """
    if kind == "safety":
        # Llama-2 trains its safety RM on safety data mixed with some helpfulness data (90/10). Harmful
        # requests are judged for safety; the harmless ones, where every answer is safe, for helpfulness,
        # so the safety RM also learns that refusing a harmless request is no better.
        harmful = make_dialogs(split, n_prompts - n_prompts // 5, seed=seed, tasks=["safety"])
        benign = make_dialogs(split, n_prompts // 5, seed=seed + 1,
                              tasks=[t for t, v in TASKS.items() if v.kind == "helpful"])
        examples = harmful + benign
    else:
        examples = make_dialogs(split, n_prompts, seed=seed)

    def judge(ex, answer):
        return judge_safety(ex, answer) if (kind == "safety" and ex.kind == "safety") else judge_helpful(ex, answer)

    prompts = [encode_dialog(tokenizer, ex.messages) for ex in examples]
    candidates: list[list[str]] = [[ex.reference] for ex in examples]
    for m_i, model in enumerate(models):
        for s in range(samples):
            outs = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=1.0,
                            seed=seed * 1000 + m_i * 100 + s, stop_ids=[tokenizer.eos_id])
            for c, ids in zip(candidates, outs):
                c.append(tokenizer.decode([t for t in ids if t != tokenizer.eos_id]).strip())
    rng = random.Random(seed)
    pairs = []
    for ex, cands in zip(examples, candidates):
        uniq = list(dict.fromkeys(cands))
        scored = [(judge(ex, c), judge_safety(ex, c), c) for c in uniq]
        for i in range(len(scored)):
            for j in range(i + 1, len(scored)):
                rating = rating_for_gap(abs(scored[i][0] - scored[j][0]))
                if rating is None:
                    continue
                (sc, safe_c, c), (sr, safe_r, r) = sorted([scored[i], scored[j]], key=lambda x: -x[0])
                pairs.append(PreferencePair(ex.messages, c, r, rating, ex.kind == "safety",
                                            {"chosen": sc, "rejected": sr, "safe_chosen": safe_c,
                                             "safe_rejected": safe_r}, ex.task))
    rng.shuffle(pairs)
    return pairs
