"""`camelid eval --model CKPT --tasks proving-ground`: the proving-ground report card of a chat model
(camelid.tasks.eval)."""

from __future__ import annotations

import json
from pathlib import Path

from camelid.errors import CamelidError


def add_arguments(p) -> None:
    p.description = ("Evaluate a chat model on the proving ground: held-out checkable chat tasks (accuracy per "
                     "task), refusal of harmful requests, over-refusal of harmless ones, and Ghost-Attention "
                     "adherence to a system instruction by turn.")
    p.add_argument("--model", required=True, help="checkpoint directory (camelid, Hugging Face or Meta format)")
    p.add_argument("--tasks", default="proving-ground",
                   help="'proving-ground' (all tasks) or a comma-separated list of task names")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--n", type=int, default=180, help="questions (spread evenly over the tasks)")
    p.add_argument("--gatt-dialogs", type=int, default=24, help="multi-turn dialogs for GAtt adherence (0: skip)")
    p.add_argument("--turns", type=int, default=5, help="turns per GAtt dialog")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--tokenizer", default=None, help="tokenizer.model (default: the one beside the weights)")
    p.add_argument("--answers", action="store_true", help="keep every question and answer in the JSON")
    p.add_argument("--out", default=None, help="write the report as JSON here")


def run(args) -> int:
    from camelid.checkpoint import load_checkpoint
    from camelid.tasks import TASKS
    from camelid.tasks.eval import evaluate, format_report
    from camelid.tokenizer import Tokenizer

    tasks = None
    if args.tasks != "proving-ground":
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        bad = [t for t in tasks if t not in TASKS]
        if bad:
            raise CamelidError(f"--tasks: unknown task(s) {', '.join(bad)}; use proving-ground or some of "
                               f"{', '.join(TASKS)}")
    ckpt = load_checkpoint(args.model)
    model = ckpt.model
    if not (args.tokenizer or ckpt.tokenizer_path):
        raise CamelidError(f"{args.model}: no tokenizer.model beside the weights; pass --tokenizer")
    tok = Tokenizer(args.tokenizer) if args.tokenizer else ckpt.tokenizer()
    report = evaluate(model, tok, split=args.split, n=args.n, seed=args.seed, gatt_dialogs=args.gatt_dialogs,
                      gatt_turns=args.turns, max_new_tokens=args.max_new_tokens, tasks=tasks,
                      keep_answers=args.answers)
    report["model"] = str(args.model)
    print(format_report(report, f"proving ground ({args.split} split, {report['n']} questions, seed {args.seed}) "
                                f"of {args.model}:"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"report: {args.out}")
    return 0
