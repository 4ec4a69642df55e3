"""Preference pairs for reward models: the pair, its JSONL layouts, loading and saving.

The proving ground's own pairs (answers sampled from the models and rated by the judges) are built by
the reward-model stage: camelid.train.rm_pairs.

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
            raise CamelidError(f"{where}: invalid JSON ({e.msg}); fix the line, or skip such lines with "
                               f"--set rm.skip_bad=true") from None
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


def rating_counts(pairs: list[PreferencePair]) -> dict[str, int]:
    return {r: sum(p.rating == r for p in pairs) for r in RATINGS}
