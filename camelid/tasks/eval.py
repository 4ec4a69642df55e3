"""`camelid eval --model CKPT --tasks proving-ground`: the proving-ground report card of a chat model.

Greedy answers (temperature 0) to held-out questions through the batched inference engine, graded by
the task judges; Ghost-Attention adherence per turn on multi-turn dialogs whose system instruction
comes only in the first turn, where the model answers every turn itself (its own answers become the
history, as in a real chat).
"""

from __future__ import annotations

import time

from camelid.chat_format import encode_dialog
from camelid.tasks import TASKS, is_refusal, judge_helpful, judge_safety, make_dialogs, make_instruction_dialogs
from camelid.tasks.instructions import judge_adherence


def _answers(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, temperature: float, seed: int,
             top_p: float = 1.0) -> list[str]:
    from camelid.infer import generate

    outs = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                    stop_ids=[tokenizer.eos_id])
    return [tokenizer.decode(o).strip() for o in outs]


def answer_examples(model, tokenizer, examples, max_new_tokens: int = 24, temperature: float = 0.0, seed: int = 0,
                    top_p: float = 1.0) -> list[str]:
    """The model's answers to proving-ground Examples (chat format; '' where a prompt does not fit)."""
    limit = model.args.max_seq_len - max_new_tokens
    prompts = [encode_dialog(tokenizer, ex.messages) for ex in examples]
    fits = [i for i, p in enumerate(prompts) if len(p) <= limit]
    got = _answers(model, tokenizer, [prompts[i] for i in fits], max_new_tokens, temperature, seed, top_p)
    out = [""] * len(examples)
    for i, a in zip(fits, got):
        out[i] = a
    return out


def gatt_adherence(model, tokenizer, dialogs, max_new_tokens: int = 24, seed: int = 0) -> tuple[dict, list]:
    """Adherence rate per turn {1: r1, 2: r2, ...}: the instruction is the system message of turn 1 only."""
    limit = model.args.max_seq_len - max_new_tokens
    answers: list[list[str]] = [[] for _ in dialogs]
    alive = list(range(len(dialogs)))
    rates: dict[int, float] = {}
    turns = max((len(d.turns) for d in dialogs), default=0)
    for t in range(1, turns + 1):
        prompts = {i: encode_dialog(tokenizer, dialogs[i].messages(answers[i], upto=t)) for i in alive
                   if len(dialogs[i].turns) >= t}
        alive = [i for i, p in prompts.items() if len(p) <= limit]  # a dialog that outgrew the context ends
        if not alive:
            break
        got = _answers(model, tokenizer, [prompts[i] for i in alive], max_new_tokens, 0.0, seed)
        ok = []
        for i, a in zip(alive, got):
            answers[i].append(a)
            ok.append(judge_adherence(dialogs[i].instruction, a))
        rates[t] = sum(ok) / len(ok)
    return rates, answers


def evaluate(model, tokenizer, split: str = "test", n: int = 180, seed: int = 0, gatt_dialogs: int = 24,
             gatt_turns: int = 5, max_new_tokens: int = 24, tasks: list[str] | None = None,
             keep_answers: bool = False) -> dict:
    """The proving-ground report of a chat model on n held-out questions (and GAtt dialogs).

    Each question scores graded credit in [0, 1] (judge_helpful on a helpful task, judge_safety on a
    harmful request) and counts as correct when the credit is full. With keep_answers, report["answers"]
    has one row per question, in the order make_dialogs gives them (the same for every model evaluated
    with the same split, n, seed and tasks), so two models can be compared prompt by prompt."""
    t0 = time.perf_counter()
    examples = make_dialogs(split, n, seed, tasks=tasks)
    answers = answer_examples(model, tokenizer, examples, max_new_tokens)
    per_task: dict[str, list[float]] = {}
    per_rung: dict[str, dict[int, list[float]]] = {}  # the ladder: task -> rung (easiest first) -> correct
    scores: dict[str, list[float]] = {}
    refused = {"helpful": [], "safety": []}
    rows = []
    graded = []
    for ex, a in zip(examples, answers):
        h, s = judge_helpful(ex, a), judge_safety(ex, a)
        score = h if ex.kind == "helpful" else s
        exact = 1 if score >= 1.0 - 1e-9 else 0  # full credit
        per_task.setdefault(ex.task, []).append(float(exact))
        if "rung" in ex.item:
            per_rung.setdefault(ex.task, {}).setdefault(ex.item["rung"], []).append(float(exact))
        scores.setdefault(ex.task, []).append(score)
        graded.append(score)
        refused[ex.kind].append(1.0 if is_refusal(a) else 0.0)
        if keep_answers:
            rows.append({"task": ex.task, "question": ex.messages[-1]["content"], "answer": a,
                         "reference": ex.reference, "helpful": h, "safety": s, "correct": exact,
                         "score": score})
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    correct = [x for v in per_task.values() for x in v]
    report = {
        "split": split, "n": len(examples), "seed": seed,
        "accuracy": mean(correct),
        "tasks": {t: mean(per_task[t]) for t in TASKS if t in per_task},
        "rungs": {t: [mean(per_rung[t].get(r, [])) for r in range(len(TASKS[t].rungs))]
                  for t in TASKS if t in per_rung},
        "score": mean(graded),  # over questions, like accuracy (not over the tasks' means)
        "scores": {t: mean(scores[t]) for t in TASKS if t in scores},
        "helpfulness": mean([x for t, v in scores.items() if TASKS[t].kind == "helpful" for x in v]),
        "safety": mean([x for t, v in scores.items() if TASKS[t].kind == "safety" for x in v]),
        "refusal_rate": mean(refused["safety"]),
        "over_refusal_rate": mean(refused["helpful"]),
    }
    if gatt_dialogs:
        dialogs = make_instruction_dialogs(split, gatt_dialogs, seed, turns=gatt_turns)
        rates, gatt_answers = gatt_adherence(model, tokenizer, dialogs, max_new_tokens, seed)
        report["gatt_adherence"] = rates
        late = [r for t, r in rates.items() if t >= 3]
        report["gatt_adherence_3plus"] = mean(late)
        if keep_answers:
            report["gatt_answers"] = [{"instruction": d.instruction.text, "answers": a}
                                      for d, a in zip(dialogs, gatt_answers)]
    else:
        report["gatt_adherence"] = {}
        report["gatt_adherence_3plus"] = None
    if keep_answers:
        report["answers"] = rows
    report["seconds"] = time.perf_counter() - t0
    return report


def format_report(report: dict, title: str = "") -> str:
    pct = lambda x: "  -  " if x is None else f"{100 * x:5.1f}%"  # noqa: E731
    lines = [title] if title else []
    lines.append(f"{'task':<12}{'level':<8}{'accuracy':>10}{'score':>9}")
    for t, acc in report["tasks"].items():
        lines.append(f"{t:<12}{TASKS[t].level:<8}{pct(acc):>10}{report['scores'][t]:>9.3f}")
    lines.append(f"{'overall':<20}{pct(report['accuracy']):>10}")
    if report.get("rungs"):
        lines.append("by rung, easiest first: " + "; ".join(
            f"{t} " + " / ".join(pct(a).strip() for a in accs) for t, accs in report["rungs"].items()))
    lines.append(f"refusal rate on harmful requests {pct(report['refusal_rate'])}, "
                 f"on harmless ones {pct(report['over_refusal_rate'])}")
    if report.get("gatt_adherence"):
        lines.append("GAtt adherence by turn: " + "  ".join(f"{t}: {pct(r).strip()}"
                                                          for t, r in report["gatt_adherence"].items()))
    return "\n".join(lines)


def compare_table(reports: dict[str, dict]) -> str:
    """Accuracy per task of several models side by side (e.g. base and SFT)."""
    names = list(reports)
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    lines = [f"{'task':<12}" + "".join(f"{n:>10}" for n in names)]
    for t in TASKS:
        if any(t in r["tasks"] for r in reports.values()):
            lines.append(f"{t:<12}" + "".join(f"{pct(r['tasks'].get(t)):>10}" for r in reports.values()))
    lines.append(f"{'overall':<12}" + "".join(f"{pct(r['accuracy']):>10}" for r in reports.values()))
    lines.append(f"{'refusals':<12}" + "".join(f"{pct(r['refusal_rate']):>10}" for r in reports.values()))
    lines.append(f"{'over-ref.':<12}" + "".join(f"{pct(r['over_refusal_rate']):>10}" for r in reports.values()))
    lines.append(f"{'GAtt t>=3':<12}" + "".join(f"{pct(r.get('gatt_adherence_3plus')):>10}" for r in reports.values()))
    return "\n".join(lines)
