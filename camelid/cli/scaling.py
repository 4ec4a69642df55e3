"""`camelid scaling optimal | fit | sweep | serve-aware` (Chinchilla's laws, your own fit, LLaMA's trade-off;
camelid.scaling) and `camelid plan` (will a pre-training run fit on the cluster, and how long will it take;
camelid.scaling.planner)."""

from __future__ import annotations

import argparse
import json

from camelid.cli import Command
from camelid.errors import CamelidError
from camelid.scaling.laws import parse_count
from camelid.scaling.planner import AC_MODES, DEFAULT_BATCH_TOKENS, GPUS, describe_plan, load_model_args, plan_run


def add_scaling_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("optimal", formatter_class=fmt,
                       help="compute-optimal parameters and tokens (Chinchilla approaches 1-3 and the 2024 refit)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--flops", help="training compute C = 6ND, e.g. 5.88e23")
    g.add_argument("--params", help="model size N, e.g. 7B")
    g.add_argument("--tokens", help="training tokens D, e.g. 1.4T")
    g.add_argument("--table3", action="store_true", help="reproduce Chinchilla's Table 3 with every method")
    p.add_argument("--plot", metavar="PNG", help="draw N_opt(C) of every method with Table 3 and the LLaMA models")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("fit", formatter_class=fmt,
                       help="fit L(N, D) = E + A/N^alpha + B/D^beta to your runs; IsoFLOP plot")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR",
                   help="run directories (metrics.jsonl + summary.json) or folders of them")
    p.add_argument("--csv", action="append", default=[], metavar="FILE",
                   help="extra points from a CSV with columns params, tokens, loss")
    p.add_argument("--point", choices=["final", "best", "all"], default="final",
                   help="which validation rows of a run become points")
    p.add_argument("--count", choices=["total", "non-embedding"], default="total",
                   help="parameter count: all (Chinchilla) or non-embedding (Kaplan)")
    p.add_argument("--delta", type=float, default=1e-3, help="Huber delta on log-loss residuals")
    p.add_argument("--bootstrap", type=int, default=0, metavar="K", help="bootstrap resamples for intervals")
    p.add_argument("--budgets", help="comma-separated FLOP budgets for the frontier (default: decades over the runs)")
    p.add_argument("--plot", metavar="PNG", help="IsoFLOP figure (default: isoflops.png beside the runs)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--save", metavar="JSON", help="write the fitted law (for `serve-aware --law FILE`)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("sweep", formatter_class=fmt,
                       help="train a grid of tiny models with `camelid pretrain` and fit them")
    add_sweep_arguments(p)

    p = sub.add_parser("serve-aware", formatter_class=fmt,
                       help="model size minimising training + lifetime inference compute for a target loss")
    p.add_argument("--loss", type=float, help="target loss (nats/token, on the law's scale)")
    p.add_argument("--model", help="target the loss of this preset (e.g. llama2-7b) ...")
    p.add_argument("--params", help="... or of a model with this many parameters ...")
    p.add_argument("--tokens", help="... trained on this many tokens (e.g. 2T)")
    p.add_argument("--served", default="0,100B,1T,10T,100T",
                   help="comma-separated lifetime inference tokens")
    p.add_argument("--law", default="besiroglu", help="chinchilla, besiroglu, or a JSON file from `scaling fit --save`")
    p.add_argument("--plot", metavar="PNG", help="draw total compute against N for each served count")
    p.add_argument("--json", action="store_true", help="print JSON")


def run_scaling(args) -> int:
    from camelid.scaling import report

    if args.action == "optimal":
        return report.run_optimal(flops=args.flops, params=args.params, tokens=args.tokens, table3=args.table3,
                                  plot=args.plot, as_json=args.json)
    if args.action == "fit":
        return run_fit(args)
    if args.action == "sweep":
        return run_sweep(args)
    if args.action == "serve-aware":
        return report.run_serve_aware(law=args.law, loss=args.loss, model=args.model, params=args.params,
                                      tokens=args.tokens, served=args.served, plot=args.plot, as_json=args.json)
    raise CamelidError(f"unknown action {args.action!r}")


def run_fit(args) -> int:
    from camelid.scaling import fit

    budgets = [parse_count(x, "budget") for x in args.budgets.split(",")] if args.budgets else None
    return fit.run_fit(args.runs, args.csv, point=args.point, count=args.count, delta=args.delta,
                       bootstrap=args.bootstrap, budgets=budgets, plot=args.plot, draw=not args.no_plot,
                       save=args.save, as_json=args.json)


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder for the runs (one subfolder per run)")
    p.add_argument("--config", default="quickstart", help="pre-training recipe each run starts from (a shipped recipe name or a TOML path)")
    p.add_argument("--data", help="prepared data directory (data.dir); e.g. the one `camelid quickstart` made")
    p.add_argument("--batch-tokens", type=int, default=8192, help="train.batch_tokens of every run")
    p.add_argument("--budgets", default="1e13,3e13,1e14", help="IsoFLOP budgets (FLOPs, comma-separated)")
    p.add_argument("--tokens", help="instead of budgets: token counts, every size on every count (e.g. 2M,8M)")
    p.add_argument("--sizes", help="model shapes DIMxLAYERS, comma-separated (default: a ladder from 64x2 to 384x6)")
    p.add_argument("--vocab-size", type=int, default=4096, help="vocabulary used to estimate N when choosing D")
    p.add_argument("--min-tokens", default="200K", help="skip runs shorter than this")
    p.add_argument("--max-tokens", default="1B", help="skip runs longer than this")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="extra --set override passed to every run")
    p.add_argument("--dry-run", action="store_true", help="print the commands and stop")
    p.add_argument("--point", choices=["final", "best", "all"], default="final")
    p.add_argument("--count", choices=["total", "non-embedding"], default="total")
    p.add_argument("--json", action="store_true", help="print JSON")


def run_sweep(args) -> int:
    from camelid.scaling import sweep

    sizes = sweep.LADDER
    if args.sizes:
        try:
            sizes = [tuple(int(x) for x in s.lower().split("x")) for s in args.sizes.split(",")]
            assert all(len(s) == 2 for s in sizes)
        except (ValueError, AssertionError):
            raise CamelidError("--sizes must look like 128x4,256x4 (dim x layers)")
    budgets = None if args.tokens else [parse_count(b, "--budgets") for b in args.budgets.split(",")]
    tokens = [parse_count(t, "--tokens") for t in args.tokens.split(",")] if args.tokens else None
    return sweep.run_sweep(args.out, budgets=budgets, tokens=tokens, sizes=sizes, vocab_size=args.vocab_size,
                           min_tokens=parse_count(args.min_tokens, "--min-tokens"),
                           max_tokens=parse_count(args.max_tokens, "--max-tokens"), config=args.config,
                           data=args.data, batch_tokens=args.batch_tokens, extra=args.extra, dry_run=args.dry_run,
                           point=args.point, count=args.count, as_json=args.json)


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="model preset (llama1-7b ... llama2-70b, tiny, ...) or a recipe .toml")
    parser.add_argument("--stage", default="pretrain", choices=["pretrain", "sft", "rm", "rs", "ppo"],
                        help="pretrain: memory, time and cost of the run; a post-training stage: memory per GPU "
                             "with every model it holds (PPO: policy, value, reference, two reward models, "
                             "rollout KV cache)")
    parser.add_argument("--tokens", help="training tokens, e.g. 1.4T (pretrain)")
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
    parser.add_argument("--rollout-batch", type=int, default=512,
                        help="rs/ppo: sequences sampled per iteration over all ranks (Llama-2: 512)")
    parser.add_argument("--rollout-tokens", type=int, default=None,
                        help="rs/ppo: prompt + answer tokens per sampled sequence (default: the context)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run_plan(args) -> int:
    model = load_model_args(args.model)
    if args.stage != "pretrain":
        from camelid.scaling.post_training import describe_stage_plan, plan_stage

        sp = plan_stage(model, args.stage, model_name=args.model, gpus=args.gpus, gpu=args.gpu, tp=args.tp,
                        ac=args.ac, seq_len=args.seq_len, micro_batch=args.micro_batch,
                        rollout_batch=args.rollout_batch, rollout_tokens=args.rollout_tokens)
        print(json.dumps(sp.to_dict(), indent=2) if args.json else describe_stage_plan(sp))
        return 0
    if not args.tokens:
        raise CamelidError("--tokens: how many tokens will pre-training see? (e.g. --tokens 1.4T)")
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


scaling = Command(add_scaling_arguments, run_scaling)
plan = Command(add_plan_arguments, run_plan)
