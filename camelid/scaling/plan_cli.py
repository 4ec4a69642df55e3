"""`camelid plan`: will this pre-training run fit on the cluster, and how long will it take?

    camelid plan --model llama1-65b --tokens 1.4T --gpus 2048 --gpu a100 --tokens-per-gpu-s 380 --tp 8

The memory and time accounting is documented in camelid/scaling/planner.py and docs/SCALING.md.
"""

from __future__ import annotations

import argparse
import json

from camelid.errors import CamelidError
from camelid.scaling.laws import parse_count
from camelid.scaling.planner import AC_MODES, DEFAULT_BATCH_TOKENS, GPUS, describe_plan, plan_run


def load_model_args(name: str):
    """A preset name, or a recipe TOML (its [model] section; the preset's vocabulary unless it sets one)."""
    from pathlib import Path

    from camelid.model import preset

    if name.endswith(".toml"):
        from camelid.config import load_config, model_args_from
        if not Path(name).is_file():
            raise CamelidError(f"{name}: no such recipe file")
        cfg = load_config(name)
        return model_args_from(cfg.model)
    try:
        return preset(name)
    except ValueError as e:
        raise CamelidError(str(e))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="model preset (llama1-7b ... llama2-70b, tiny, ...) or a recipe .toml")
    parser.add_argument("--tokens", required=True, help="training tokens, e.g. 1.4T")
    parser.add_argument("--gpus", type=int, required=True, help="number of GPUs")
    parser.add_argument("--gpu", default="a100", choices=list(GPUS), help="GPU type")
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--mfu", type=float, help="model FLOPs utilisation (default 0.40 when neither is given)")
    g.add_argument("--tokens-per-gpu-s", type=float, help="measured throughput per GPU (LLaMA-65B: 380)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (the rest is FSDP data parallel)")
    parser.add_argument("--ac", choices=AC_MODES, default="none", help="activation checkpointing")
    parser.add_argument("--seq-len", type=int, help="sequence length (default: the model's context)")
    parser.add_argument("--micro-batch", type=int, default=1, help="sequences per GPU per forward/backward")
    parser.add_argument("--batch-tokens", default=str(DEFAULT_BATCH_TOKENS),
                        help="global batch in tokens (LLaMA: 4M)")
    parser.add_argument("--no-flash", action="store_true", help="attention that stores the s x s scores")
    parser.add_argument("--flops-per-token", default="6N", choices=["6N", "palm"],
                        help="model FLOPs per token: 6N, or PaLM's 6N + 12·L·h·s with attention")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    model = load_model_args(args.model)
    tokens = parse_count(args.tokens, "--tokens")
    batch = parse_count(args.batch_tokens, "--batch-tokens")
    if batch != int(batch) or batch < 1:
        raise CamelidError("--batch-tokens must be a positive whole number")
    p = plan_run(model, model_name=args.model, tokens=tokens, gpus=args.gpus, gpu=args.gpu, tp=args.tp,
                 ac=args.ac, mfu=args.mfu, tokens_per_gpu_s=args.tokens_per_gpu_s, seq_len=args.seq_len,
                 micro_batch=args.micro_batch, batch_tokens=int(batch), flash=not args.no_flash,
                 fpt_kind=args.flops_per_token)
    if args.json:
        print(json.dumps(p.to_dict(), indent=2))
    else:
        print(describe_plan(p))
    return 0
