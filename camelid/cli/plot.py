"""`camelid plot RUN_DIR ...`: loss (or any metric) against tokens of one or more runs (camelid.plot)."""

from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.description = "Plot training and validation loss against tokens for one or more run directories."
    p.add_argument("runs", nargs="+", help="run directories (each with a metrics.jsonl)")
    p.add_argument("--out", default=None, help="PNG file (default: RUN_DIR/loss.png of the first run)")
    p.add_argument("--key", default="loss", help="metric to plot (loss, grad_norm, lr, tokens_per_s, mfu, ...)")
    p.add_argument("--log-x", action="store_true", help="logarithmic token axis")
    p.add_argument("--title", default=None)


def run(args) -> int:
    from camelid.plot import plot_runs

    out = args.out or Path(args.runs[0]) / f"{args.key}.png"
    path = plot_runs(args.runs, out, title=args.title or f"{args.key} vs training tokens", key=args.key,
                     log_x=args.log_x)
    print(f"wrote {path}")
    return 0
