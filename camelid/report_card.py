"""The quickstart's report card: every stage's policy measured the same way on held-out prompts.

For each stage: proving-ground accuracy and mean graded score, safety refusal rate and GAtt adherence
(camelid.tasks), the mean combined reward of its greedy answers (both reward models, Llama-2 eq. 4) and
their KL to the SFT model. Every policy answers the same held-out prompts, so each stage after SFT is
compared with SFT prompt by prompt: the mean difference in accuracy and in score with its 95% paired
interval (camelid.tasks.stats), which says whether a gain is more than the luck of the prompts.
Written as report_card.md and report_card.json (fields that do not apply are null); the per-prompt
correctness and scores behind the comparisons go to report_card_prompts.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from camelid.fsutil import atomic_write_json, atomic_write_text
from camelid.tasks.stats import format_diff, paired_diff

FIELDS = ["accuracy", "accuracy_vs_sft", "score", "score_vs_sft", "refusal_rate", "reward", "kl", "gatt_adherence",
          "seconds"]
COLUMNS = {"accuracy": "accuracy", "accuracy_vs_sft": "Δ accuracy vs SFT [95% CI]", "score": "score",
           "score_vs_sft": "Δ score vs SFT [95% CI]", "refusal_rate": "refusals (harmful)", "reward": "reward",
           "kl": "KL to SFT", "gatt_adherence": "GAtt turn 3+", "seconds": "time"}
# comparison field -> the per-prompt vector it compares
VS_SFT = {"accuracy_vs_sft": "correct", "score_vs_sft": "score"}
NOT_VS_SFT = ("base", "sft")  # the base model is no chat model, and SFT is the baseline
PROMPTS_FILE = "report_card_prompts.json"


def measure_policy(model, tokenizer, scorer=None, sft_model=None, n: int = 540, seed: int = 0,
                   gatt_dialogs: int = 24) -> dict:
    """Held-out measurements of one policy (reward and KL need the scorer and the SFT model).

    "per_prompt" holds each question's task, 0/1 correctness and graded score, in the order of the
    prompts (the same for every policy measured with the same n and seed)."""
    from camelid.rlhf.rollout import heldout_reward
    from camelid.rlhf.rewards import load_prompts
    from camelid.tasks import evaluate

    report = evaluate(model.eval(), tokenizer, split="test", n=n, seed=seed, gatt_dialogs=gatt_dialogs,
                      keep_answers=True)
    rows = report["answers"]
    out = {"accuracy": report["accuracy"], "score": report["score"], "refusal_rate": report["refusal_rate"],
           "gatt_adherence": report.get("gatt_adherence_3plus"), "tasks": report["tasks"],
           "over_refusal_rate": report.get("over_refusal_rate"), "reward": None, "kl": None, "n": report["n"],
           "per_prompt": {k: [r[k] for r in rows] for k in ("task", "correct", "score")}}
    if scorer is not None:
        prompts = load_prompts("proving-ground", "test", n=min(n, 128), seed=seed + 1)
        device = next(model.parameters()).device
        ev = heldout_reward(model, sft_model if sft_model is not None else model, scorer, tokenizer, prompts,
                            max_new_tokens=32, device=device)
        out["reward"] = ev["reward"]
        out["kl"] = ev["kl"] if sft_model is not None else None
    return out


def compare_to_sft(name: str, per_prompt: dict[str, dict]) -> dict:
    """{"accuracy_vs_sft", "score_vs_sft"}: this stage minus SFT on the same prompts, {"diff", "low", "high", "n"}
    (null for base and SFT, or where either was measured without per-prompt results)."""
    if name in NOT_VS_SFT or name not in per_prompt or "sft" not in per_prompt:
        return {k: None for k in VS_SFT}
    return {k: paired_diff(per_prompt[name][v], per_prompt["sft"][v]).to_dict() for k, v in VS_SFT.items()}


def write_report_card(stages: list[dict], out_dir: Path, extra: dict | None = None) -> str:
    """stages: [{"name", <FIELDS>..., "per_prompt"?}] -> report_card.json, report_card.md and, where stages
    have per-prompt results, report_card_prompts.json; returns the markdown."""
    per_prompt = {s["name"]: s["per_prompt"] for s in stages if s.get("per_prompt")}
    rows = []
    for s in stages:
        row = {"name": s["name"], **{k: s.get(k) for k in FIELDS},
               **{k: v for k, v in s.items() if k not in FIELDS and k not in ("name", "per_prompt")}}
        row.update({k: v for k, v in compare_to_sft(s["name"], per_prompt).items() if v is not None})
        rows.append(row)
    atomic_write_json(Path(out_dir) / "report_card.json", {"stages": rows, **(extra or {})})
    if per_prompt:
        atomic_write_text(Path(out_dir) / PROMPTS_FILE, _prompts_json(per_prompt))
    md = render(rows)
    atomic_write_text(Path(out_dir) / "report_card.md", md)
    return md


def _prompts_json(per_prompt: dict[str, dict]) -> str:
    """{"task": [...], "stages": {name: {"correct": [...], "score": [...]}}}, a stage a line: thousands of
    numbers one per line (json's indent) would bury the file's shape."""
    task = next(iter(per_prompt.values()))["task"]
    stages = [f"  {json.dumps(name)}: " + json.dumps({k: v[k] for k in ("correct", "score")})
              for name, v in per_prompt.items()]
    return '{"task": ' + json.dumps(task) + ',\n "stages": {\n' + ",\n".join(stages) + "\n }}\n"


def load_per_prompt(out_dir: Path) -> dict:
    """report_card_prompts.json: each stage's per-prompt correctness and scores, in prompt order."""
    return json.loads((Path(out_dir) / PROMPTS_FILE).read_text())


def _fmt(key, v):
    if v is None:
        return "–"
    if key in ("accuracy", "refusal_rate", "gatt_adherence"):
        return f"{100 * v:.1f}%"
    if key == "accuracy_vs_sft":
        return format_diff(v)  # percentage points
    if key == "score_vs_sft":
        return format_diff(v, scale=1.0, digits=3)
    if key == "seconds":
        return f"{v:.0f}s"
    return f"{v:+.3f}" if key == "reward" else f"{v:.3f}"


def render(rows: list[dict]) -> str:
    head = ["stage"] + [COLUMNS[k] for k in FIELDS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["name"]] + [_fmt(k, r.get(k)) for k in FIELDS]) + " |")
    n = next((r["accuracy_vs_sft"]["n"] for r in rows if r.get("accuracy_vs_sft")), None)
    if n:
        lines.append("")
        lines.append(f"Δ vs SFT: the stage minus SFT on the same {n} held-out prompts, mean [95% paired normal "
                     f"interval: ± 1.96 sd/√n], accuracy in percentage points, score (graded credit, 0-1) as is.")
    for r in (r for r in rows if r.get("rm_accuracy")):
        lines.append("")
        lines.append(f"reward models ({r['name']}), held-out pair accuracy: " + ", ".join(
            f"{k} {100 * v:.1f}%" for k, v in r["rm_accuracy"].items() if v is not None))
        on_policy = {k: v for k, v in (r.get("rm_accuracy_on_policy") or {}).items() if v}
        if on_policy:
            lines.append("on the policy's own answers: " + "; ".join(
                f"{k} {100 * v['average']:.1f}% (significantly better pairs "
                + ("–" if v.get("significantly_better") is None else f"{100 * v['significantly_better']:.1f}%") + ")"
                for k, v in on_policy.items()))
    return "\n".join(lines) + "\n"


def load_report_card(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / "report_card.json").read_text())
