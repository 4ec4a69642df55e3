"""`camelid pretrain`: pre-training (camelid.train.pretrain) from a TOML recipe, in one process or under torchrun."""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(p) -> None:
    p.description = ("Pre-train a LLaMA model on prepared token shards. Settings come from a TOML recipe "
                     "(--config: a file or a shipped name such as quickstart, llama1-7b, llama2-70b), then --set.")
    p.add_argument("--config", default=None, help="recipe file or shipped recipe name (default: quickstart)")
    p.add_argument("--out", default="runs/pretrain", help="run directory")
    p.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    p.add_argument("--ckpt-every", type=int, default=None, help="override checkpoint.every")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--profile", action="store_true",
                   help="write a torch.profiler trace (and a CUDA memory snapshot) of 3 steps to RUN_DIR/profile")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any setting, e.g. --set train.lr=1e-3 --set model.preset=mini")


def run(args) -> int:
    from camelid.train.pretrain import pretrain, pretrain_config

    cfg = pretrain_config(args.config, args.out, args.resume, max_steps=args.max_steps, ckpt_every=args.ckpt_every,
                          profile=args.profile, overrides=args.overrides)
    summary = pretrain(cfg, args.out, resume=args.resume)  # under torchrun the stage runner shards the model
    print(json.dumps({k: v for k, v in summary.items() if k not in ("model_args", "epochs")}, indent=2))
    print(f"weights: {Path(args.out) / 'model'}  (plot: camelid plot {args.out})")
    return 0
