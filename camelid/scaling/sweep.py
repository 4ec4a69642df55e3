"""`camelid scaling sweep`: train a grid of tiny models with `camelid pretrain`, then fit them.

Two grids, as in Chinchilla:
- IsoFLOP (approach 2, the default): for each FLOP budget C in `--budgets`, every model of the size
  ladder is trained on D = C / (6N) tokens (sizes whose D falls outside [--min-tokens, --max-tokens]
  are skipped).
- Size × tokens (`--tokens 2M,4M,8M`): every model on every token count.

Each run is one subprocess

    python -m camelid pretrain --config CONFIG --out OUT/RUN \\
        --set model.dim=.. --set model.n_layers=.. --set model.n_heads=.. --set model.n_kv_heads=.. \\
        --set model.ffn_hidden_dim=.. --set train.max_tokens=D --set train.max_steps=0 \\
        --set train.batch_tokens=B --set train.warmup_steps=min(20, steps/10) \\
        --set log.val_every=0 --set checkpoint.every=0 --set data.dir=DATA [--set EXTRA ...]

(the warmup is shortened so that the shortest runs still spend 90% of their steps past it; one
validation at the end of each run is all the fit needs).

which must leave in OUT/RUN a `metrics.jsonl` whose last validation row (split "val") is at the end of
training, and a `summary.json` with `n_params` (or a resolved `config.toml`). A run that already has
a validation row at its token budget is skipped, so an interrupted sweep resumes where it stopped.
Then the runs are fitted exactly as `camelid scaling fit OUT` would. `--dry-run` prints the commands.

N here is an estimate from the shape and `--vocab-size` (to choose D); the fit reads the real count.
At these sizes the embedding and output matrices are most of the parameters (Kaplan et al. counted
non-embedding parameters for that reason): try `scaling fit OUT --count non-embedding` as well.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from camelid.errors import CamelidError
from camelid.scaling.laws import FLOPS_PER_PARAM_TOKEN, fmt_count, parse_count

# (dim, n_layers): head_dim 32, kv heads half the heads, SwiGLU hidden int(8d/3) rounded up to 32
LADDER = [(64, 2), (96, 3), (128, 4), (192, 4), (256, 4), (320, 5), (384, 6)]


def shape(dim: int, n_layers: int) -> dict:
    heads = max(1, dim // 32)
    kv = heads // 2 if heads % 2 == 0 else heads
    hidden = 32 * ((int(8 * dim / 3) + 31) // 32)
    return {"dim": dim, "n_layers": n_layers, "n_heads": heads, "n_kv_heads": kv, "ffn_hidden_dim": hidden}


def estimate_params(s: dict, vocab_size: int) -> int:
    from camelid.model import ModelArgs
    return ModelArgs(dim=s["dim"], n_layers=s["n_layers"], n_heads=s["n_heads"], n_kv_heads=s["n_kv_heads"],
                     ffn_hidden_dim=s["ffn_hidden_dim"], vocab_size=vocab_size).num_params()


def plan_grid(*, budgets=None, tokens=None, sizes=LADDER, vocab_size=4096, min_tokens=2e5, max_tokens=1e9) -> list[dict]:
    runs = []
    for dim, layers in sizes:
        s = shape(dim, layers)
        n = estimate_params(s, vocab_size)
        if tokens:
            pairs = [(None, d) for d in tokens]
        else:
            pairs = [(c, c / (FLOPS_PER_PARAM_TOKEN * n)) for c in budgets]
        for c, d in pairs:
            if not min_tokens <= d <= max_tokens:
                continue
            d = int(round(d))
            name = f"d{dim}-l{layers}-t{fmt_count(d).replace('.', 'p')}"
            runs.append({"name": name, "shape": s, "params_estimate": n, "tokens": d, "budget": c})
    if not runs:
        raise CamelidError("no (size, tokens) pair of the sweep falls within --min-tokens and --max-tokens")
    return runs


def command(run: dict, *, config: str, out: Path, extra: list[str], batch_tokens: int = 8192,
            data: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "camelid", "pretrain", "--config", config, "--out", str(out / run["name"])]
    for k, v in run["shape"].items():
        cmd += ["--set", f"model.{k}={v}"]
    steps = max(1, -(-run["tokens"] // batch_tokens))
    cmd += ["--set", f"train.max_tokens={run['tokens']}", "--set", "train.max_steps=0",
            "--set", f"train.batch_tokens={batch_tokens}",
            "--set", f"train.warmup_steps={min(20, max(1, steps // 10))}",
            "--set", "log.val_every=0", "--set", "checkpoint.every=0", "--set", "log.progress=false"]
    if data:
        cmd += ["--set", f"data.dir={data}"]
    for e in extra:
        cmd += ["--set", e]
    return cmd


def _finished(run_dir: Path, tokens: int) -> bool:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return False
    for line in metrics.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("split") == "val" and row.get("tokens", 0) >= tokens * 0.99:
            return True
    return False


def add_arguments(p: argparse.ArgumentParser) -> None:
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


def run(args) -> int:
    out = Path(args.out)
    sizes = LADDER
    if args.sizes:
        try:
            sizes = [tuple(int(x) for x in s.lower().split("x")) for s in args.sizes.split(",")]
            assert all(len(s) == 2 for s in sizes)
        except (ValueError, AssertionError):
            raise CamelidError("--sizes must look like 128x4,256x4 (dim x layers)")
    grid = plan_grid(
        budgets=None if args.tokens else [parse_count(b, "--budgets") for b in args.budgets.split(",")],
        tokens=[parse_count(t, "--tokens") for t in args.tokens.split(",")] if args.tokens else None,
        sizes=sizes, vocab_size=args.vocab_size,
        min_tokens=parse_count(args.min_tokens, "--min-tokens"), max_tokens=parse_count(args.max_tokens, "--max-tokens"))
    cmds = [(r, command(r, config=args.config, out=out, extra=args.extra, batch_tokens=args.batch_tokens,
                        data=args.data)) for r in grid]
    if args.dry_run:
        if args.json:
            print(json.dumps([{"run": r, "command": c} for r, c in cmds], indent=2))
        else:
            for r, c in cmds:
                print(f"# {r['name']}: ~{fmt_count(r['params_estimate'])} params, {fmt_count(r['tokens'])} tokens")
                print(shlex.join(c))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for i, (r, c) in enumerate(cmds, 1):
        if _finished(out / r["name"], r["tokens"]):
            print(f"[{i}/{len(cmds)}] {r['name']}: done already", file=sys.stderr)
            continue
        print(f"[{i}/{len(cmds)}] {r['name']}: {shlex.join(c)}", file=sys.stderr)
        proc = subprocess.run(c)
        if proc.returncode != 0:
            raise CamelidError(f"run {r['name']} failed (exit {proc.returncode}); rerun the sweep to resume")
    from camelid.scaling.fit import run_fit  # torch, for the fit: only once the runs are done

    return run_fit([out], point=args.point, count=args.count, plot=out / "isoflops.png", save=out / "law.json",
                   as_json=args.json)
