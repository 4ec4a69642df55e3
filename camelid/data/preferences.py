"""Preference pairs for reward models: loading (JSONL), proving-ground generation, and encoding.

JSONL rows, one pair each, in either layout:
- Llama-2 style: {"prompt": "..." or "messages": [...], "chosen": "...", "rejected": "...",
  "rating": "significantly_better" | "better" | "slightly_better" | "negligibly_better" | "unsure",
  "is_safety": false}
- whole dialogs, as public preference sets ship them: {"chosen": [messages ... assistant],
  "rejected": [messages ... assistant]} (the shared prefix is the prompt), or Anthropic-HH strings
  "\\n\\nHuman: ...\\n\\nAssistant: ...".
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from camelid.errors import CamelidError
from camelid.fsutil import atomic_write_text, iter_jsonl
from camelid.reward_model import RATINGS, normalize_rating


@dataclass
class PreferencePair:
    prompt: list[dict]  # messages ending with the user turn
    chosen: str
    rejected: str
    rating: str = "negligibly_better"
    is_safety: bool = False
    scores: dict = field(default_factory=dict)  # judge scores, when known: {"chosen": .., "rejected": ..}
    task: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


_HH = re.compile(r"\n\n(Human|Assistant): ")


def _hh_messages(text: str) -> list[dict]:
    parts = _HH.split("\n\n" + text.lstrip("\n") if not text.startswith("\n\n") else text)
    msgs = []
    for role, content in zip(parts[1::2], parts[2::2]):
        msgs.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return msgs


def _as_messages(x, where: str) -> list[dict]:
    if isinstance(x, str):
        msgs = _hh_messages(x)
        if not msgs:
            raise CamelidError(f"{where}: a dialog string must use '\\n\\nHuman: ...\\n\\nAssistant: ...' turns")
        return msgs
    if isinstance(x, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in x):
        return [{"role": m["role"], "content": m["content"]} for m in x]
    raise CamelidError(f"{where}: expected a list of {{role, content}} messages or an HH-style dialog string")


def parse_pair(row: dict, where: str) -> PreferencePair:
    if not isinstance(row, dict):
        raise CamelidError(f"{where}: expected a JSON object")
    for key in ("chosen", "rejected"):
        if key not in row:
            raise CamelidError(f"{where}: missing key {key!r}")
    try:
        rating = normalize_rating(row.get("rating"))
    except ValueError as e:
        raise CamelidError(f"{where}: {e}") from None
    is_safety = bool(row.get("is_safety", False))
    if "prompt" in row or "messages" in row:
        if "messages" in row or isinstance(row.get("prompt"), list):  # a list prompt is messages (save_pairs)
            prompt = _as_messages(row.get("messages") or row["prompt"], where)
            if not prompt or prompt[-1]["role"] != "user":
                raise CamelidError(f"{where}: 'messages' must end with the user turn the answers reply to")
        else:
            prompt = [{"role": "user", "content": row["prompt"]}]
        if not isinstance(row["chosen"], str) or not isinstance(row["rejected"], str):
            raise CamelidError(f"{where}: with a prompt, 'chosen' and 'rejected' must be answer strings")
        return PreferencePair(prompt, row["chosen"], row["rejected"], rating, is_safety, row.get("scores", {}),
                              row.get("task", ""))
    chosen, rejected = _as_messages(row["chosen"], where), _as_messages(row["rejected"], where)
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant" or n != len(chosen) - 1 \
            or n != len(rejected) - 1:
        raise CamelidError(f"{where}: 'chosen' and 'rejected' must share every turn but a final assistant answer")
    return PreferencePair(chosen[:n], chosen[-1]["content"], rejected[-1]["content"], rating, is_safety)


def load_pairs(path: str | Path, skip_bad: bool = False) -> list[PreferencePair]:
    path = Path(path)
    if not path.is_file():
        raise CamelidError(f"{path}: preference file not found")
    pairs, bad, same = [], 0, 0

    def bad_json(where, e):
        nonlocal bad
        if not skip_bad:
            raise CamelidError(f"{where}: invalid JSON ({e.msg}); fix the line or pass --skip-bad") from None
        bad += 1

    for where, row in iter_jsonl(path, on_bad=bad_json):
        try:
            pair = parse_pair(row, where)
        except CamelidError:
            if not skip_bad:
                raise
            bad += 1
            continue
        if pair.chosen.strip() == pair.rejected.strip():
            same += 1  # no preference to learn from
            continue
        pairs.append(pair)
    if not pairs:
        raise CamelidError(f"{path}: no preference pairs")
    if bad or same:
        print(f"{path}: skipped {bad} bad line(s) and {same} pair(s) with identical answers")
    return pairs


def save_pairs(pairs: list[PreferencePair], path: str | Path) -> None:
    atomic_write_text(path, "".join(json.dumps(p.to_dict()) + "\n" for p in pairs))


def pairs_hash(pairs: list[PreferencePair]) -> str:
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps(p.to_dict(), sort_keys=True).encode())
    return h.hexdigest()[:16]


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
    from camelid.chat_format import encode_dialog
    from camelid.infer import generate
    from camelid.tasks import TASKS, judge_helpful, judge_safety, make_dialogs

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


def rating_counts(pairs: list[PreferencePair]) -> dict[str, int]:
    return {r: sum(p.rating == r for p in pairs) for r in RATINGS}
