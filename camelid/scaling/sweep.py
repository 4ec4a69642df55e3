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

import json
import shlex
import subprocess
import sys
from pathlib import Path

from camelid.errors import CamelidError
from camelid.scaling.laws import FLOPS_PER_PARAM_TOKEN, fmt_count

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


def run_sweep(out: str | Path, *, budgets: list[float] = (1e13, 3e13, 1e14), tokens: list[float] | None = None,
              sizes=LADDER, vocab_size: int = 4096, min_tokens: float = 2e5, max_tokens: float = 1e9,
              config: str = "quickstart", data: str | None = None, batch_tokens: int = 8192,
              extra: list[str] | None = None, dry_run: bool = False, point: str = "final", count: str = "total",
              as_json: bool = False) -> int:
    """Train the grid `plan_grid` makes of these settings (`tokens`, when given, instead of `budgets`) into
    OUT/RUN, one `camelid pretrain` subprocess a run (finished runs are skipped), then fit them as `camelid
    scaling fit OUT` would (`point`, `count`; the law to OUT/law.json, the figure to OUT/isoflops.png).
    `dry_run`: print the commands (JSON with `as_json`) and stop."""
    out = Path(out)
    grid = plan_grid(budgets=None if tokens else list(budgets), tokens=tokens, sizes=sizes, vocab_size=vocab_size, min_tokens=min_tokens,
                     max_tokens=max_tokens)
    cmds = [(r, command(r, config=config, out=out, extra=list(extra or []), batch_tokens=batch_tokens, data=data))
            for r in grid]
    if dry_run:
        if as_json:
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

    return run_fit([out], point=point, count=count, plot=out / "isoflops.png", save=out / "law.json",
                   as_json=as_json)
