"""Fit L(N, D) = E + A/N^alpha + B/D^beta to your own pre-training runs, as Chinchilla's approach 3 did.

The objective is Chinchilla's (§3.3, eq. 10 and Appendix D.2):

    min over (a, b, e, alpha, beta) of  sum_i Huber_delta( LSE(a - alpha·log N_i, b - beta·log D_i, e) - log L_i )

with A = exp(a), B = exp(b), E = exp(e), delta = 1e-3, started from the paper's grid
(alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}: 4,500 starts) and
minimised with L-BFGS. Two departures, both following Besiroglu et al. 2024, who showed that the
published fit stopped before converging: the Huber terms are summed (not averaged, which shrinks the
objective 400-fold and trips L-BFGS's tolerance) and everything runs in float64 to tight tolerances.
To keep it fast on a laptop (about a second), the 500 grid starts with the lowest objective first take
200 Adam steps together (Adam is per-coordinate, so the starts stay independent); the best distinct
ones, and the best raw grid point, are then run to convergence by `torch.optim.LBFGS` (strong-Wolfe
line search) and the lowest objective wins.

Which (N, D, L) a run contributes: by default its *final* validation loss, at the tokens it had seen
then (`--point final`). A run trained with a cosine schedule for D tokens is only a fair sample of
L(N, D) at its end — Chinchilla's approach 1 point exactly: intermediate losses of a long cosine run
overestimate the loss of a run whose schedule ends there. `--point best` takes the lowest validation
loss; `--point all` uses every validation row (more points, biased upward for the early ones; fine
for constant-LR or WSD-style runs). N counts all parameters (Chinchilla's convention); `--params
non-embedding` uses Kaplan's.
"""

from __future__ import annotations

import csv
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from camelid.errors import CamelidError
from camelid.plot import save_figure
from camelid.runlog import METRICS_FILE, read_metrics
from camelid.scaling.laws import FLOPS_PER_PARAM_TOKEN, ParametricLaw, fmt_count, print_json

# --------------------------------------------------------------------------------------------------
# reading runs


@dataclass
class Point:
    params: float
    tokens: float
    loss: float
    run: str = ""
    step: int | None = None

    @property
    def flops(self) -> float:
        return FLOPS_PER_PARAM_TOKEN * self.params * self.tokens


def _run_params(run: Path, which: str) -> float:
    key = "n_params" if which == "total" else "n_params_non_embedding"
    summary = run / "summary.json"
    if summary.exists():
        try:
            s = json.loads(summary.read_text())
        except json.JSONDecodeError as e:
            raise CamelidError(f"{summary}: not valid JSON ({e})")
        if key in s:
            return float(s[key])
    config = run / "config.toml"
    if config.exists():  # fall back on the resolved config's model section
        from camelid.model import ModelArgs, preset
        try:
            model = dict(tomllib.loads(config.read_text()).get("model", {}))
            name = model.pop("preset", None)
            model.pop("init_from", None)
            args = preset(name, **model) if name else ModelArgs.from_dict(model)
        except (tomllib.TOMLDecodeError, ValueError, TypeError) as e:
            raise CamelidError(f"{config}: cannot read the model section ({e})")
        return float(args.num_params(include_embedding=(which == "total")))
    raise CamelidError(f"{run}: no {key!r} in summary.json (and no config.toml to count parameters from)")


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Each path is a run directory (holds metrics.jsonl) or a folder of run directories."""
    runs = []
    for p in map(Path, paths):
        if (p / METRICS_FILE).exists():
            runs.append(p)
        elif p.is_dir():
            sub = sorted(q.parent for q in p.glob(f"*/{METRICS_FILE}"))
            if not sub:
                raise CamelidError(f"{p}: no metrics.jsonl in it or in its subfolders")
            runs.extend(sub)
        else:
            raise CamelidError(f"{p}: no such run directory")
    return runs


def read_run(run: str | Path, point: str = "final", params: str = "total") -> list[Point]:
    """(N, D, L) points of one run directory from its validation rows; see the module docstring."""
    run = Path(run)
    if point not in ("final", "best", "all"):
        raise CamelidError(f"--point must be final, best or all, not {point!r}")
    if params not in ("total", "non-embedding"):
        raise CamelidError(f"--params must be total or non-embedding, not {params!r}")
    if not (run / METRICS_FILE).is_file():
        raise CamelidError(f"{run / METRICS_FILE}: no such file")
    rows = read_metrics(run)
    n = _run_params(run, params)
    tokens_at_step = {r["step"]: r["tokens"] for r in rows if r.get("split") in (None, "train")
                      and "step" in r and "tokens" in r}
    val = []
    for r in rows:
        if r.get("split") != "val":
            continue
        loss = r.get("loss", r.get("val_loss"))
        tokens = r.get("tokens", tokens_at_step.get(r.get("step")))
        if loss is None or tokens is None or not math.isfinite(loss) or loss <= 0 or tokens <= 0:
            continue
        val.append(Point(n, float(tokens), float(loss), run=str(run), step=r.get("step")))
    if not val:
        raise CamelidError(f"{run}: metrics.jsonl has no validation rows (split 'val') with loss and tokens")
    if point == "final":
        return [max(val, key=lambda p: p.tokens)]
    if point == "best":
        return [min(val, key=lambda p: p.loss)]
    return val


def read_points_file(path: str | Path) -> list[Point]:
    """A CSV with columns params, tokens, loss (a header row; extra columns ignored)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            need = {"params", "tokens", "loss"}
            if not reader.fieldnames or not need <= set(reader.fieldnames):
                raise CamelidError(f"{path}: needs a header with columns params, tokens, loss")
            return [Point(float(r["params"]), float(r["tokens"]), float(r["loss"]), run=str(path))
                    for r in reader]
    except FileNotFoundError:
        raise CamelidError(f"{path}: no such file")
    except ValueError as e:
        raise CamelidError(f"{path}: {e}")


# --------------------------------------------------------------------------------------------------
# the fit


def chinchilla_grid() -> torch.Tensor:
    """Chinchilla's initialisation grid as rows (a, b, e, alpha, beta)."""
    alpha = torch.arange(0, 2.01, 0.5, dtype=torch.float64)
    e = torch.arange(-1, 1.01, 0.5, dtype=torch.float64)
    a = torch.arange(0, 25.01, 5, dtype=torch.float64)
    g = torch.cartesian_prod(a, a, e, alpha, alpha)
    return g


def _objective(theta: torch.Tensor, logn: torch.Tensor, logd: torch.Tensor, logl: torch.Tensor,
               delta: float) -> torch.Tensor:
    """Per-start objective; theta is (..., 5) = (a, b, e, alpha, beta); returns shape (...)."""
    a, b, e, alpha, beta = theta.unbind(-1)
    terms = torch.stack([a[..., None] - alpha[..., None] * logn, b[..., None] - beta[..., None] * logd,
                         e[..., None].expand(*e.shape, logn.shape[-1])], dim=-1)
    r = torch.logsumexp(terms, dim=-1) - logl
    return torch.nn.functional.huber_loss(r, torch.zeros_like(r), reduction="none", delta=delta).sum(-1)


def _theta_to_law(theta, name="fit") -> ParametricLaw:
    a, b, e, alpha, beta = (float(x) for x in theta)
    return ParametricLaw(name, E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta,
                         label="fitted to your runs (Huber on log-loss, L-BFGS)")


@dataclass
class FitResult:
    law: ParametricLaw
    objective: float
    n_points: int
    rmse_log: float  # root-mean-square residual of log L
    starts: int
    polished: int
    bootstrap: dict = field(default_factory=dict)  # param -> (std, p5, p95)

    def to_dict(self) -> dict:
        return {"law": self.law.params(), "a": self.law.a, "b": self.law.b, "G": self.law.G,
                "objective": self.objective, "n_points": self.n_points, "rmse_log_loss": self.rmse_log,
                "starts": self.starts, "polished": self.polished, "bootstrap": self.bootstrap}


def _lbfgs(theta0: torch.Tensor, logn, logd, logl, delta, max_iter=2000) -> tuple[torch.Tensor, float]:
    theta = theta0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=max_iter, max_eval=int(max_iter * 1.25),
                            tolerance_grad=1e-12, tolerance_change=1e-15, history_size=50,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = _objective(theta, logn, logd, logl, delta)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        value = float(_objective(theta, logn, logd, logl, delta))
    return theta.detach(), value


def fit_law(params, tokens, losses, *, delta: float = 1e-3, grid: torch.Tensor | None = None,
            screen: int = 500, adam_steps: int = 200, polish: int = 6, bootstrap: int = 0, seed: int = 0) -> FitResult:
    """Fit the parametric law to points (N_i, D_i, L_i); see the module docstring for the method."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tensors are tiny: extra threads only add contention (15x slower on a busy 2-core box)
    try:
        return _fit_law(params, tokens, losses, delta=delta, grid=grid, screen=screen, adam_steps=adam_steps,
                        polish=polish, bootstrap=bootstrap, seed=seed)
    finally:
        torch.set_num_threads(threads)


def _fit_law(params, tokens, losses, *, delta, grid, screen, adam_steps, polish, bootstrap, seed) -> FitResult:
    n = torch.as_tensor(np.asarray(params, dtype=np.float64))
    d = torch.as_tensor(np.asarray(tokens, dtype=np.float64))
    l = torch.as_tensor(np.asarray(losses, dtype=np.float64))
    if not (n.numel() == d.numel() == l.numel()):
        raise CamelidError("params, tokens and losses must have the same length")
    if n.numel() < 5:
        raise CamelidError(f"need at least 5 (N, D, loss) points to fit 5 parameters, got {n.numel()}")
    if (n <= 0).any() or (d <= 0).any() or (l <= 0).any():
        raise CamelidError("parameters, tokens and losses must all be positive")
    if len(set(n.tolist())) < 2 or len(set(d.tolist())) < 2:
        raise CamelidError("the runs need at least two model sizes and two token counts to separate "
                           "the N and D terms (try --point all, or add runs)")
    logn, logd, logl = n.log(), d.log(), l.log()
    start = chinchilla_grid() if grid is None else grid.to(torch.float64)

    # 1. screen: the `screen` grid starts with the lowest objective take `adam_steps` Adam steps together
    #    (Adam is per-coordinate, so they stay independent), then the best distinct ones are polished
    with torch.no_grad():
        raw = _objective(start, logn, logd, logl, delta)
        raw = torch.where(torch.isfinite(raw), raw, torch.full_like(raw, math.inf))
    keep = torch.argsort(raw)[:screen]
    theta = start[keep].clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=0.05)
    for _ in range(adam_steps):
        opt.zero_grad()
        _objective(theta, logn, logd, logl, delta).sum().backward()
        opt.step()
    with torch.no_grad():
        screened = _objective(theta, logn, logd, logl, delta)
        screened = torch.where(torch.isfinite(screened), screened, torch.full_like(screened, math.inf))
    # 2. polish the best distinct candidates (plus the best raw grid point) to convergence with L-BFGS
    candidates, seen = [start[keep[0]]], []
    for i in torch.argsort(screened).tolist():
        t = theta[i].detach()
        if all((t - s).abs().max() > 1e-2 for s in seen):
            seen.append(t)
            candidates.append(t)
        if len(candidates) > polish:
            break
    # a short L-BFGS run on every candidate, then the two best to convergence
    short = []
    for t in candidates:
        t_opt, v = _lbfgs(t, logn, logd, logl, delta, max_iter=150)
        if math.isfinite(v) and torch.isfinite(t_opt).all():
            short.append((v, t_opt))
    best, best_value = None, math.inf
    for _, t in sorted(short, key=lambda vt: vt[0])[:2]:
        t_opt, v = _lbfgs(t, logn, logd, logl, delta)
        if math.isfinite(v) and v < best_value and torch.isfinite(t_opt).all():
            best, best_value = t_opt, v
    if best is None:
        raise CamelidError("the fit did not converge from any start")
    law = _theta_to_law(best)
    with torch.no_grad():
        pred = torch.as_tensor(law.loss(n.numpy(), d.numpy()))
        rmse = float(((pred.log() - logl) ** 2).mean().sqrt())
    result = FitResult(law, best_value, int(n.numel()), rmse, int(start.shape[0]), len(candidates))

    if bootstrap > 0:  # resample points with replacement; each refit starts from the full fit
        gen = np.random.default_rng(seed)
        draws = []
        for _ in range(bootstrap):
            idx = torch.as_tensor(gen.integers(0, n.numel(), n.numel()))
            t_b, v_b = _lbfgs(best, logn[idx], logd[idx], logl[idx], delta, max_iter=500)
            if math.isfinite(v_b):
                lb = _theta_to_law(t_b)
                draws.append([lb.E, lb.A, lb.B, lb.alpha, lb.beta, lb.a])
        if draws:
            arr = np.asarray(draws)
            result.bootstrap = {
                k: {"std": float(arr[:, j].std(ddof=1)) if len(arr) > 1 else 0.0,
                    "p5": float(np.percentile(arr[:, j], 5)), "p95": float(np.percentile(arr[:, j], 95))}
                for j, k in enumerate(["E", "A", "B", "alpha", "beta", "a"])}
            result.bootstrap["samples"] = len(draws)
    return result


def fit_points(points: list[Point], **kw) -> FitResult:
    return fit_law([p.params for p in points], [p.tokens for p in points], [p.loss for p in points], **kw)


# --------------------------------------------------------------------------------------------------
# the compute-optimal frontier and IsoFLOP curves


def frontier(law: ParametricLaw, budgets) -> list[dict]:
    rows = []
    for c in budgets:
        n, d = law.optimal_for_flops(c)
        rows.append({"flops": float(c), "params": n, "tokens": d, "tokens_per_param": d / n,
                     "loss": float(law.loss(n, d))})
    return rows


def default_budgets(points: list[Point], extend: float = 100.0) -> list[float]:
    """Decades spanning the runs' compute, extended `extend`-fold past the largest."""
    cs = [p.flops for p in points]
    lo = math.floor(math.log10(min(cs)) + 0.02)  # 9.99e14 (rounded token counts) belongs to 1e15
    hi = math.ceil(math.log10(max(cs) * extend) - 0.02)
    return [10.0 ** k for k in range(lo, hi + 1)]


def isoflop_minima(points: list[Point], tolerance: float = 0.15) -> dict | None:
    """Chinchilla's approach 2 on your runs: group the runs into IsoFLOP budgets (C = 6ND within
    `tolerance` of each other), fit a parabola of loss against log N in each budget with at least three
    model sizes, take its minimum as that budget's N_opt, then fit N_opt ∝ C^a across budgets.
    None when no budget has three sizes."""
    pts = sorted(points, key=lambda p: p.flops)
    groups, cur = [], []
    for p in pts:
        if cur and math.log(p.flops / cur[0].flops) > math.log1p(tolerance):
            groups.append(cur)
            cur = []
        cur.append(p)
    if cur:
        groups.append(cur)
    minima = []
    for g in groups:
        if len({p.params for p in g}) < 3:
            continue
        c = float(np.exp(np.mean([math.log(p.flops) for p in g])))
        x = np.log([p.params for p in g])
        y = np.array([p.loss for p in g])
        p2, p1, p0 = np.polyfit(x, y, 2)
        if p2 <= 0:
            continue  # no minimum inside: the budget's sizes all sit on one side of the optimum
        x_opt = -p1 / (2 * p2)
        n_opt = float(math.exp(x_opt))
        inside = bool(x.min() <= x_opt <= x.max())
        minima.append({"flops": c, "params": n_opt, "tokens": c / (FLOPS_PER_PARAM_TOKEN * n_opt),
                       "loss": float(p0 + p1 * x_opt + p2 * x_opt ** 2), "runs": len(g), "inside": inside})
    if not minima:
        return None
    out = {"minima": minima}
    if len(minima) >= 2:
        lc = np.log([m["flops"] for m in minima])
        a, _ = np.polyfit(lc, np.log([m["params"] for m in minima]), 1)
        b, _ = np.polyfit(lc, np.log([m["tokens"] for m in minima]), 1)
        out.update(a=float(a), b=float(b))
    return out


def describe_isoflop_minima(res: dict | None) -> str:
    if not res:
        return "approach 2 (IsoFLOP minima): no budget has runs of three or more sizes"
    lines = ["approach 2 (parabola through each IsoFLOP budget's losses against log N):",
             f"  {'FLOPs':>10} {'runs':>4} {'N_opt':>9} {'D_opt':>9} {'loss':>7}"]
    for m in res["minima"]:
        flag = "" if m["inside"] else "   (extrapolated: outside the sizes run)"
        lines.append(f"  {m['flops']:>10.3g} {m['runs']:>4} {fmt_count(m['params']):>9} {fmt_count(m['tokens']):>9} "
                     f"{m['loss']:>7.4f}{flag}")
    if "a" in res:
        lines.append(f"  N_opt ∝ C^{res['a']:.3f}, D_opt ∝ C^{res['b']:.3f}")
    return "\n".join(lines)


def plot_isoflops(law: ParametricLaw, points: list[Point], path: str | Path, budgets=None,
                  title: str = "IsoFLOP curves of the fitted law", minima: dict | None = None) -> Path:
    """Two panels: loss against N along each budget's IsoFLOP curve (D = C/6N) with the runs and each
    curve's minimum; and the compute-optimal N and D against C with the runs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = budgets or default_budgets(points, extend=10.0)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    cmap = plt.get_cmap("viridis")
    logc = np.log10(budgets)
    norm = matplotlib.colors.Normalize(vmin=min(logc) - 0.3, vmax=max(logc) + 0.3)
    n_all = [p.params for p in points]
    n_lo, n_hi = min(n_all) / 30, max(n_all) * 30
    for c in budgets:
        ns = np.logspace(math.log10(n_lo), math.log10(n_hi), 300)
        ds = c / (FLOPS_PER_PARAM_TOKEN * ns)
        ls = law.loss(ns, ds)
        color = cmap(norm(math.log10(c)))
        ax1.plot(ns, ls, color=color, lw=1.5, label=f"C = {c:.0e}")
        n_opt, d_opt = law.optimal_for_flops(c)
        ax1.plot([n_opt], [law.loss(n_opt, d_opt)], marker="*", ms=11, color=color, mec="k", mew=0.5)
    pc = [math.log10(p.flops) for p in points]
    sc = ax1.scatter(n_all, [p.loss for p in points], c=pc, cmap=cmap, norm=norm, edgecolors="k",
                     s=28, zorder=3, label="runs (colour: log10 C)")
    ax1.set_xscale("log")
    ax1.set_xlabel("parameters N")
    ax1.set_ylabel("loss (nats/token)")
    lmin = min(min(p.loss for p in points), min(float(law.loss(*law.optimal_for_flops(c))) for c in budgets))
    lmax = max(p.loss for p in points)
    ax1.set_ylim(lmin - 0.05 * (lmax - lmin + 0.1), lmax + 0.4 * (lmax - lmin + 0.1))
    ax1.set_title(title)
    ax1.legend(fontsize=7, loc="upper right", ncol=2)
    fig.colorbar(sc, ax=ax1, label="log10 FLOPs of the run")

    cs = np.logspace(math.log10(min(budgets)), math.log10(max(budgets)), 100)
    opt = [law.optimal_for_flops(c) for c in cs]
    ax2.plot(cs, [o[0] for o in opt], color="C0", label=f"N_opt ∝ C^{law.a:.3f}")
    ax2.plot(cs, [o[1] for o in opt], color="C1", label=f"D_opt ∝ C^{law.b:.3f}")
    ax2.scatter([p.flops for p in points], n_all, color="C0", s=14, alpha=0.6, label="runs: N")
    ax2.scatter([p.flops for p in points], [p.tokens for p in points], color="C1", s=14, alpha=0.6,
                marker="s", label="runs: D")
    if minima:
        ms = minima["minima"]
        ax2.scatter([m["flops"] for m in ms], [m["params"] for m in ms], color="k", marker="D", s=30, zorder=4,
                    label="approach 2: IsoFLOP minima (N)")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("training FLOPs C = 6ND")
    ax2.set_ylabel("parameters / tokens")
    ax2.set_title("compute-optimal frontier")
    ax2.legend(fontsize=8)
    ax2.grid(True, which="major", alpha=0.3)
    return save_figure(fig, path)


def describe_fit(result: FitResult) -> str:
    law = result.law
    lines = [f"fit of L(N, D) = E + A/N^alpha + B/D^beta to {result.n_points} points "
             f"({result.starts} grid starts, {result.polished} polished by L-BFGS):",
             f"  E = {law.E:.4f}   A = {law.A:.4g}   B = {law.B:.4g}   alpha = {law.alpha:.4f}   beta = {law.beta:.4f}",
             f"  N_opt ∝ C^{law.a:.3f}, D_opt ∝ C^{law.b:.3f}   (Chinchilla approaches 1-2: 0.50 / 0.50)",
             f"  Huber objective {result.objective:.4g}, RMS residual of log-loss {result.rmse_log:.4f}"]
    if result.bootstrap:
        bs = result.bootstrap
        lines.append(f"  bootstrap ({bs['samples']} resamples), 5-95%: " + ", ".join(
            f"{k} [{bs[k]['p5']:.4g}, {bs[k]['p95']:.4g}]" for k in ("E", "alpha", "beta", "a")))
    return "\n".join(lines)


def describe_frontier(rows: list[dict]) -> str:
    out = [f"  {'FLOPs':>10} {'params':>9} {'tokens':>9} {'tok/param':>9} {'loss':>7}"]
    for r in rows:
        out.append(f"  {r['flops']:>10.3g} {fmt_count(r['params']):>9} {fmt_count(r['tokens']):>9} "
                   f"{r['tokens_per_param']:>9.1f} {r['loss']:>7.4f}")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# `camelid scaling fit` and the end of `camelid scaling sweep`


def default_plot_path(runs: list[Path], csvs: list[str | Path]) -> Path:
    """isoflops.png in the folder that holds the runs (or the first CSV)."""
    if runs:
        parents = {r.resolve().parent for r in runs}
        base = parents.pop() if len(parents) == 1 else Path(".")
    else:
        base = Path(csvs[0]).resolve().parent
    return base / "isoflops.png"


def run_fit(runs: list[str | Path], csvs: list[str | Path] = (), *, point: str = "final", count: str = "total",
            delta: float = 1e-3, bootstrap: int = 0, budgets: list[float] | None = None,
            plot: str | Path | None = None, draw: bool = True, save: str | Path | None = None,
            as_json: bool = False) -> int:
    """Fit the law to run directories (or folders of them) and CSV points; print the fit, its frontier
    over `budgets` (default: decades over the runs) and the IsoFLOP minima, or all of it as JSON.
    `plot`: the IsoFLOP figure (default: isoflops.png beside the runs; none unless `draw`);
    `save`: a JSON file with the fitted law."""
    if not runs and not csvs:
        raise CamelidError("give run directories (or --csv FILE) to fit")
    found = find_runs(runs) if runs else []
    points = []
    for r in found:
        points.extend(read_run(r, point=point, params=count))
    for c in csvs:
        points.extend(read_points_file(c))
    result = fit_points(points, delta=delta, bootstrap=bootstrap)
    front = frontier(result.law, budgets or default_budgets(points))
    iso = isoflop_minima(points)
    out = {"fit": result.to_dict(), "frontier": front, "isoflop_minima": iso, "runs": [str(r) for r in found],
           "points": [{"params": p.params, "tokens": p.tokens, "loss": p.loss, "run": p.run, "step": p.step,
                       "predicted": float(result.law.loss(p.params, p.tokens))} for p in points],
           "point": point, "count": count}
    if draw:
        path = Path(plot) if plot else default_plot_path(found, csvs)
        out["plot"] = str(plot_isoflops(result.law, points, path, minima=iso))
    if save:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        Path(save).write_text(json.dumps({"law": result.law.params(), "fit": result.to_dict()}, indent=2) + "\n")
        out["saved"] = str(save)
    if as_json:
        print_json(out)
        return 0
    print(f"{len(points)} points from {len(found)} runs" + (f" and {len(csvs)} CSV files" if csvs else "")
          + f" (--point {point}, N = {count} parameters)")
    print(describe_fit(result))
    print("compute-optimal frontier of the fit (extrapolated beyond the largest run):")
    print(describe_frontier(front))
    print(describe_isoflop_minima(iso))
    if "plot" in out:
        print(f"wrote {out['plot']}")
    if save:
        print(f"saved the law to {save}")
    return 0
