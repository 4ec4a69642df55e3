"""What `camelid scaling optimal` and `camelid scaling serve-aware` print and draw: compute-optimal N and D
under Chinchilla's laws (and its Table 3), and the model size that LLaMA's trade-off (training plus lifetime
inference compute) prefers. `camelid scaling fit` is camelid.scaling.fit.run_fit."""

from __future__ import annotations

import json
import math
from pathlib import Path

from camelid.errors import CamelidError
from camelid.plot import save_figure
from camelid.scaling.inference import inference_table, total_flops
from camelid.scaling.laws import (CHINCHILLA_TABLE3, LAWS, METHODS, ParametricLaw, compute_optimal,
                                  fmt_count, parse_count, print_json)

# models the docs and plots mark: (label, params, tokens)
LLAMA_RUNS = [
    ("LLaMA-1 7B", 6_738_415_616, 1.0e12), ("LLaMA-1 13B", 13_015_864_320, 1.0e12),
    ("LLaMA-1 33B", 32_528_943_616, 1.4e12), ("LLaMA-1 65B", 65_285_660_672, 1.4e12),
    ("Llama-2 7B", 6_738_415_616, 2.0e12), ("Llama-2 13B", 13_015_864_320, 2.0e12),
    ("Llama-2 70B", 68_976_648_192, 2.0e12), ("Chinchilla 70B", 70e9, 1.4e12),
]


def load_law(name: str) -> ParametricLaw:
    """A named law (chinchilla, besiroglu) or a JSON file saved by `scaling fit --save`."""
    if name in LAWS:
        return LAWS[name]
    path = Path(name)
    if not path.exists():
        raise CamelidError(f"unknown law {name!r}: use {', '.join(LAWS)} or a JSON file from `scaling fit --save`")
    try:
        d = json.loads(path.read_text())
        p = d.get("law", d)
        return ParametricLaw(path.stem, E=float(p["E"]), A=float(p["A"]), B=float(p["B"]),
                             alpha=float(p["alpha"]), beta=float(p["beta"]), label=f"fitted ({path})")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CamelidError(f"{path}: not a law file (needs E, A, B, alpha, beta): {e}")


def _model_params(name: str) -> int:
    from camelid.model import preset
    try:
        return preset(name).num_params()
    except ValueError as e:
        raise CamelidError(str(e))


# ------------------------------------------------------------------------------------------ optimal


def _optimal_text(res: dict) -> str:
    (kind, value), = res["given"].items()
    shown = f"{value:.3g} FLOPs" if kind == "flops" else fmt_count(value)
    w = max(len(r["label"]) for r in res["rows"])
    out = [f"compute-optimal allocation for {kind} = {shown}   (C = 6·N·D)",
           f"  {'method':<{w}} {'params':>8} {'tokens':>8} {'FLOPs':>9} {'tok/N':>6} {'L(pub)':>7} {'L(refit)':>8}"]
    for r in res["rows"]:
        out.append(f"  {r['label']:<{w}} {fmt_count(r['params']):>8} {fmt_count(r['tokens']):>8} "
                   f"{r['flops']:>9.3g} {r['tokens_per_param']:>6.1f} {r['loss_chinchilla']:>7.3f} "
                   f"{r['loss_besiroglu']:>8.3f}")
    out.append("  L(pub) / L(refit): loss predicted by the published approach-3 law / by the Besiroglu et al. "
               "2024 refit (MassiveText nats/token).")
    out.append("  Approaches 1-2 publish exponents only (anchored here at Chinchilla, 70B on 1.4T); the published "
               "approach-3 fit is biased (Besiroglu et al. 2024): prefer approaches 1-2 or the refit.")
    return "\n".join(out)


def table3_rows() -> list[dict]:
    rows = []
    for n, c, d in CHINCHILLA_TABLE3:
        res = compute_optimal(flops=c)
        row = {"paper_params": n, "paper_flops": c, "paper_tokens": d, "methods": {}}
        for r in res["rows"]:
            row["methods"][r["method"]] = {"params": r["params"], "tokens": r["tokens"]}
        rows.append(row)
    return rows


def _table3_text(rows) -> str:
    out = ["Chinchilla Table 3 (approach 1) against each method, given the table's FLOPs:",
           f"  {'FLOPs':>9} {'paper N':>8} {'paper D':>8} | {'appr. 1':>15} | {'appr. 2':>15} | "
           f"{'published fit':>15} | {'refit 2024':>15}"]
    for r in rows:
        cells = []
        for m in ("approach1", "approach2", "chinchilla", "besiroglu"):
            x = r["methods"][m]
            cells.append(f"{fmt_count(x['params']):>7} {fmt_count(x['tokens']):>7}")
        out.append(f"  {r['paper_flops']:>9.3g} {fmt_count(r['paper_params']):>8} {fmt_count(r['paper_tokens']):>8} | "
                   + " | ".join(cells))
    return "\n".join(out)


def plot_optimal(path: str | Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cs = np.logspace(18, 26.5, 200)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles = {"approach1": ("C0", "-"), "approach2": ("C0", "--"), "chinchilla": ("C3", "-"), "besiroglu": ("C2", "-")}
    for name, m in METHODS.items():
        ns = [m.optimal_for_flops(c)[0] for c in cs]
        color, ls = styles[name]
        ax.plot(cs, ns, color=color, ls=ls, label=m.label)
    ax.scatter([c for _, c, _ in CHINCHILLA_TABLE3], [n for n, _, _ in CHINCHILLA_TABLE3], color="k",
               marker="x", zorder=3, label="Chinchilla Table 3")
    for label, n, d in LLAMA_RUNS:
        c = 6 * n * d
        ax.scatter([c], [n], color="C1" if "Chinchilla" not in label else "C4", zorder=4, s=30)
        offset = {"LLaMA-1 65B": (-62, 2), "Chinchilla 70B": (-70, 10), "Llama-2 70B": (6, -6)}.get(
            label, (5, -10 if label.startswith("Llama-2") else 4))
        ax.annotate(label, (c, n), textcoords="offset points", xytext=offset, fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1e18, 3e26)
    ax.set_ylim(1e8, 2e12)
    ax.set_xlabel("training FLOPs C = 6ND")
    ax.set_ylabel("compute-optimal parameters N_opt")
    ax.set_title("Compute-optimal model size; LLaMA models (orange) sit below the frontier:\n"
                 "smaller than compute-optimal, trained on more tokens", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return save_figure(fig, path)


def run_optimal(*, flops: str | float | None = None, params: str | float | None = None,
                tokens: str | float | None = None, table3: bool = False, plot: str | Path | None = None,
                as_json: bool = False) -> int:
    """Print the compute-optimal allocation for one of flops, params or tokens (counts such as 7B or 1.4T), or
    Chinchilla's Table 3 against every method; `plot`: also draw N_opt(C); as JSON with `as_json`."""
    out: dict = {}
    if table3:
        out["table3"] = table3_rows()
    elif flops or params or tokens:
        out.update(compute_optimal(
            flops=parse_count(flops, "--flops") if flops else None,
            params=parse_count(params, "--params") if params else None,
            tokens=parse_count(tokens, "--tokens") if tokens else None))
    elif not plot:
        raise CamelidError("give one of --flops, --params, --tokens or --table3 (or --plot)")
    if plot:
        out["plot"] = str(plot_optimal(plot))
    if as_json:
        print_json(out)
        return 0
    if "table3" in out:
        print(_table3_text(out["table3"]))
    if "rows" in out:
        print(_optimal_text(out))
    if "plot" in out:
        print(f"wrote {out['plot']}")
    return 0


# ------------------------------------------------------------------------------------------ serve-aware


def _serve_aware_text(t: dict, law: ParametricLaw, ref_label: str | None) -> str:
    co = t["compute_optimal"]
    out = [f"target loss {t['target_loss']:.4f} under {law.label or law.name} ({law.describe()})"]
    if ref_label:
        ref = t["reference"]
        out.append(f"  = the loss of {ref_label}: {fmt_count(ref['params'])} params on {fmt_count(ref['tokens'])} tokens "
                   f"({ref['tokens_per_param']:.0f} tokens/param)")
    out.append(f"compute-optimal (Chinchilla) model for that loss: {fmt_count(co['params'])} params on "
               f"{fmt_count(co['tokens'])} tokens ({co['tokens_per_param']:.0f} tokens/param), "
               f"{co['train_flops']:.3g} training FLOPs")
    head = (f"  {'served':>8} {'best N':>8} {'tokens':>8} {'tok/N':>6} {'train':>9} {'inference':>9} "
            f"{'total':>9} {'saves vs C-opt':>14}")
    if ref_label:
        head += f" {'ref. excess':>11}"
    out.append("minimum of training (6ND) + inference (2N·served) FLOPs:")
    out.append(head)
    for r in t["rows"]:
        line = (f"  {fmt_count(r['served']):>8} {fmt_count(r['params']):>8} {fmt_count(r['tokens']):>8} "
                f"{r['tokens_per_param']:>6.0f} {r['train_flops']:>9.3g} {r['inference_flops']:>9.3g} "
                f"{r['total_flops']:>9.3g} {100 * max(0.0, r['saving_vs_compute_optimal']):>13.1f}%")
        if ref_label:
            line += f" {100 * max(0.0, r['reference_excess']):>10.1f}%"
        out.append(line)
    if ref_label:
        s = t["reference"]["breakeven_served"]
        if s > 0:
            out.append(f"{ref_label} is the cheapest model for its loss when it serves {fmt_count(s)} tokens "
                       f"over its life; 'ref. excess' is its extra total compute against each row's optimum.")
        else:
            out.append(f"{ref_label} is larger than compute-optimal for its loss under this law: no serving "
                       f"demand makes it the cheapest choice.")
    return "\n".join(out)


def plot_serve_aware(law: ParametricLaw, t: dict, path: str | Path, ref_label: str | None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    target = t["target_loss"]
    n_floor = (law.A / (target - law.E)) ** (1 / law.alpha)
    co = t["compute_optimal"]["params"]
    ns = np.logspace(math.log10(n_floor * 1.02), math.log10(co * 4), 400)
    fig, ax = plt.subplots(figsize=(8, 5.2))
    for i, r in enumerate(t["rows"]):
        tot = [total_flops(law, n, target, r["served"]) for n in ns]
        color = plt.get_cmap("plasma")(i / max(1, len(t["rows"]) - 1) * 0.85)
        ax.plot(ns, tot, color=color, label=f"served {fmt_count(r['served'])}")
        ax.plot([r["params"]], [r["total_flops"]], marker="*", ms=12, color=color, mec="k", mew=0.5)
    lo = min(r["total_flops"] for r in t["rows"]) * 0.5
    hi = max(r["total_flops"] for r in t["rows"]) * 8
    ax.set_ylim(lo, hi)
    if ref_label:
        ref = t["reference"]
        ax.axvline(ref["params"], color="grey", ls=":", lw=1)
        ax.text(ref["params"], hi / 1.5, f" {ref_label}", rotation=90, va="top", fontsize=8, color="dimgrey")
    ax.axvline(co, color="k", ls="--", lw=0.8)
    ax.text(co, hi / 1.5, " compute-optimal (served 0)", rotation=90, va="top", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters N (each trained to the target loss)")
    ax.set_ylabel("training + inference FLOPs")
    ax.set_title(f"Cheapest model for loss {target:.3f} ({law.name} law): stars are the optima", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def run_serve_aware(*, law: str | ParametricLaw = "besiroglu", loss: float | None = None, model: str | None = None,
                    params: str | float | None = None, tokens: str | float | None = None,
                    served: str = "0,100B,1T,10T,100T", plot: str | Path | None = None, as_json: bool = False) -> int:
    """Print the model size that minimises training + lifetime inference compute for a target loss: `loss`, or
    the loss of a preset `model` (or of `params` parameters) trained on `tokens`, for each count of comma-separated
    `served` tokens, under `law` (or the law load_law finds by that name); `plot`: also draw it; JSON with `as_json`."""
    law = load_law(law) if isinstance(law, str) else law
    reference, ref_label = None, None
    if loss is not None:
        if model or params or tokens:
            raise CamelidError("give --loss, or a model (--model or --params) with --tokens, not both")
        target = loss
    else:
        if not tokens or not (model or params) or (model and params):
            raise CamelidError("give --loss L, or --model PRESET (or --params N) with --tokens D")
        n = _model_params(model) if model else parse_count(params, "--params")
        d = parse_count(tokens, "--tokens")
        if n <= 0 or d <= 0:
            raise CamelidError("--params and --tokens must be positive")
        reference = (float(n), d)
        ref_label = f"{model} on {fmt_count(d)} tokens" if model else f"{fmt_count(n)} on {fmt_count(d)} tokens"
        target = float(law.loss(n, d))
    counts = [parse_count(x, "--served") for x in served.split(",") if x.strip()]
    if not counts:
        raise CamelidError("--served needs at least one value")
    t = inference_table(law, target, counts, reference)
    if plot:
        t["plot"] = str(plot_serve_aware(law, t, plot, ref_label))
    if as_json:
        print_json(t)
        return 0
    print(_serve_aware_text(t, law, ref_label))
    if plot:
        print(f"wrote {t['plot']}")
    return 0
