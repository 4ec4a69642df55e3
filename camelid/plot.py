"""`camelid plot RUN_DIR ...`: training and validation loss against tokens, several runs on one figure
(as LLaMA-1 Figure 1 draws them)."""

from __future__ import annotations

from pathlib import Path

from camelid.errors import CamelidError
from camelid.runlog import read_metrics


def plot_runs(run_dirs: list[str | Path], out: str | Path, title: str = "Training loss", key: str = "loss",
              log_x: bool = False) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    drew = False
    for i, run in enumerate(run_dirs):
        rows = read_metrics(run)
        if not rows:
            raise CamelidError(f"{run}: no metrics.jsonl rows to plot (is it a run directory?)")
        color = f"C{i}"
        name = Path(run).name
        train = [r for r in rows if "split" not in r and key in r and not r.get("skipped")]
        val = [r for r in rows if r.get("split") == "val" and key in r]
        if train:
            x = [r["tokens"] for r in train]
            y = [r[key] for r in train]
            ax.plot(x, y, color=color, alpha=0.35, linewidth=1)
            ax.plot(x, _ema(y), color=color, linewidth=1.8, label=f"{name} train")
        if val:
            ax.plot([r["tokens"] for r in val], [r[key] for r in val], "o--", color=color, markersize=4,
                    label=f"{name} validation")
        drew = drew or bool(train or val)
    if not drew:
        raise CamelidError(f"no {key!r} values in {', '.join(map(str, run_dirs))}")
    ax.set_xlabel("training tokens")
    ax.set_ylabel(key)
    if log_x:
        ax.set_xscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, write (making the folder) and close a matplotlib figure; every plot in camelid ends here."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _ema(values: list[float], alpha: float = 0.2) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out
