"""`camelid sft`: supervised chat fine-tuning (camelid.train.sft)."""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(p) -> None:
    p.description = ("Supervised fine-tuning of a chat model (Llama-2 §3.1): loss on assistant answers only, "
                     "dialogs packed into full rows, cosine LR from 2e-5, batch 64, 2 epochs. Settings: "
                     "SFTConfig's defaults, then --config, then the flags below, then --set.")
    p.add_argument("--model", required=False, help="checkpoint to fine-tune (camelid, Hugging Face or Meta format)")
    p.add_argument("--data", default=None,
                   help="JSONL file(s) (messages or prompt/response), comma-separated, or 'proving-ground'")
    p.add_argument("--config", default=None, help="recipe file or name (default: Llama-2's settings, SFTConfig)")
    p.add_argument("--out", default="runs/sft", help="run directory")
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="override the steps derived from the epochs")
    p.add_argument("--gatt", type=int, default=None, help="Ghost Attention dialogs to add (proving ground)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any setting, e.g. --set train.lr=1e-4 --set sft.batch_size=32")


def run(args) -> int:
    from camelid.train.sft import sft, sft_config

    cfg = sft_config(args.config, args.out, args.resume, model=args.model, data=args.data, epochs=args.epochs,
                     max_steps=args.max_steps, gatt=args.gatt, overrides=args.overrides)
    summary = sft(cfg, args.out, resume=args.resume)
    if (Path(args.out) / "eval.json").exists():
        from camelid.tasks.eval import format_report
        print(format_report(json.loads((Path(args.out) / "eval.json").read_text()),
                            "held-out proving ground after SFT:"))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("model_args", "eval", "packing")}, indent=2))
    print(f"weights: {Path(args.out) / 'model'}  (chat: camelid chat --model {Path(args.out) / 'model'}; "
          f"plot: camelid plot {args.out})")
    return 0
