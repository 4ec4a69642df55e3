"""The quickstart's report card: every stage's policy measured the same way on held-out prompts.

For each stage: proving-ground accuracy, safety refusal rate and GAtt adherence (camelid.tasks),
the mean combined reward of its greedy answers (both reward models, Llama-2 eq. 4) and their KL to the
SFT model. Written as report_card.md and report_card.json (fields that do not apply are null).
"""

from __future__ import annotations

import json
from pathlib import Path

from camelid.fsutil import atomic_write_json, atomic_write_text

FIELDS = ["accuracy", "refusal_rate", "reward", "kl", "gatt_adherence", "seconds"]


def measure_policy(model, tokenizer, scorer=None, sft_model=None, n: int = 180, seed: int = 0,
                   gatt_dialogs: int = 24) -> dict:
    """Held-out measurements of one policy (reward and KL need the scorer and the SFT model)."""
    from camelid.rlhf.rollout import heldout_reward
    from camelid.rlhf.rewards import load_prompts
    from camelid.tasks import evaluate

    report = evaluate(model.eval(), tokenizer, split="test", n=n, seed=seed, gatt_dialogs=gatt_dialogs)
    out = {"accuracy": report["accuracy"], "refusal_rate": report["refusal_rate"],
           "gatt_adherence": report.get("gatt_adherence_3plus"), "tasks": report["tasks"],
           "over_refusal_rate": report.get("over_refusal_rate"), "reward": None, "kl": None}
    if scorer is not None:
        prompts = load_prompts("proving-ground", "test", n=min(n, 128), seed=seed + 1)
        device = next(model.parameters()).device
        ev = heldout_reward(model, sft_model if sft_model is not None else model, scorer, tokenizer, prompts,
                            max_new_tokens=32, device=device)
        out["reward"] = ev["reward"]
        out["kl"] = ev["kl"] if sft_model is not None else None
    return out


def write_report_card(stages: list[dict], out_dir: Path, extra: dict | None = None) -> str:
    """stages: [{"name", <FIELDS>...}] -> report_card.json and report_card.md; returns the markdown."""
    rows = [{"name": s["name"], **{k: s.get(k) for k in FIELDS}, **{k: v for k, v in s.items()
                                                                   if k not in FIELDS and k != "name"}}
            for s in stages]
    atomic_write_json(Path(out_dir) / "report_card.json", {"stages": rows, **(extra or {})})
    md = render(rows)
    atomic_write_text(Path(out_dir) / "report_card.md", md)
    return md


def _fmt(key, v):
    if v is None:
        return "–"
    if key in ("accuracy", "refusal_rate", "gatt_adherence"):
        return f"{100 * v:.1f}%"
    if key == "seconds":
        return f"{v:.0f}s"
    return f"{v:+.3f}" if key == "reward" else f"{v:.3f}"


def render(rows: list[dict]) -> str:
    head = ["stage", "accuracy", "refusals (harmful)", "reward", "KL to SFT", "GAtt turn 3+", "time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["name"]] + [_fmt(k, r.get(k)) for k in FIELDS]) + " |")
    notes = [r for r in rows if r.get("rm_accuracy")]
    for r in notes:
        acc = r["rm_accuracy"]
        lines.append("")
        lines.append("reward models, held-out pair accuracy: " + ", ".join(
            f"{k} {100 * v:.1f}%" for k, v in acc.items() if v is not None))
    return "\n".join(lines) + "\n"


def load_report_card(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / "report_card.json").read_text())
