"""`camelid rm`: a helpfulness or safety reward model (camelid.train.reward) from an SFT checkpoint."""

from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.description = ("Train a helpfulness or safety reward model (Llama-2 §3.2.2) from an SFT checkpoint: scalar "
                     "head, ranking loss with a rating margin, one epoch, LR 1e-5 cosine to 10%, warmup 3%, 512 "
                     "pairs per batch. Prints held-out accuracy per rating (Table 8 layout).")
    p.add_argument("--model", help="SFT checkpoint to start from")
    p.add_argument("--data", default=None, help="JSONL preference pairs, or 'proving-ground'")
    p.add_argument("--kind", choices=["helpful", "safety"], default=None)
    p.add_argument("--margin", choices=["none", "small", "large"], default=None)
    p.add_argument("--base", default=None, help="proving ground: a base model whose answers join the candidates")
    p.add_argument("--config", default=None, help="recipe file or name (default: Llama-2's settings, RMConfig)")
    p.add_argument("--out", default="runs/rm", help="run directory")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def run(args) -> int:
    from camelid.train.reward import format_report, rm_config, train_reward_model

    cfg = rm_config(args.config, args.out, args.resume, model=args.model, data=args.data, kind=args.kind,
                    margin=args.margin, base=args.base, max_steps=args.max_steps, overrides=args.overrides)
    report = train_reward_model(cfg, args.out, resume=args.resume)
    print(format_report(report, f"held-out accuracy (%) of the {cfg.rm.kind} reward model, margin {cfg.rm.margin}:"))
    print(f"reward model: {Path(args.out) / 'model'}; report: {Path(args.out) / 'rm_report.json'}")
    return 0
