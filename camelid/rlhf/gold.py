"""Gold-reward curves: how far the learned reward can be pushed before the real one stops following.

Gao et al. 2022 ("Scaling laws for reward model overoptimization") measure, against the KL from the
starting policy, the proxy reward that is optimised and a gold reward that is not, for best-of-n sampling
and for RL. Here the proxy is the combined reward (Llama-2 eq. 4, from the learned reward models) and the
gold reward is the proving ground's judges, which play the human raters (DESIGN.md: "the judges as a
reward are the gold control"). Llama-2 Figure 7 draws, for the same best-of-n samples, the maximum and the
median reward among n samples: the gap between them is what rejection sampling can gain.

Pure: no files but the figures the plot functions are asked to write, no model, no collectives.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from camelid.plot import save_figure
from camelid.tasks import judge_helpful, judge_safety


def gold_scores(prompts: list, answers: list[str]) -> torch.Tensor | None:
    """The judges' score in [0, 1] of each answer (judge_helpful on a helpful example, judge_safety on a
    harmful request: the same score as the report card's), float32 [len(answers)]. None when any prompt has no
    proving-ground example (prompts from a file): there is nothing to judge them with."""
    if any(p.example is None for p in prompts):
        return None
    return torch.tensor([judge_safety(p.example, a) if p.example.kind == "safety" else judge_helpful(p.example, a)
                         for p, a in zip(prompts, answers, strict=True)], dtype=torch.float32)


def kl_best_of_n(n: int) -> float:
    """KL(best-of-n || sampling policy) = log n - (n - 1) / n (Stiennon et al. 2020; Gao et al. 2022).
    Exact when rewards never tie; with ties it is an upper bound (Beirami et al. 2024). Leaving out cut-off
    answers (best_of_n_curves) selects further, by a KL the formula does not count (-log P(finished) at
    n = 1): the curves show the nominal value. Nats per answer, like PPO's summed per-token KL."""
    return math.log(n) - (n - 1) / n


def _mean(x: torch.Tensor) -> float | None:
    # None, not NaN, when no prompt counts: NaN != NaN would make a row read back from JSON differ from itself
    return x.mean().item() if x.numel() else None


def best_of_n_curves(proxy: torch.Tensor, gold: torch.Tensor | None = None) -> dict:
    """Best-of-n statistics for n = 1..K from proxy rewards [P, K] (and gold scores [P, K]); best-of-n uses the
    first n samples of each prompt. Columns, one entry per n:

      n, kl_bon        n and the analytic KL of best-of-n, log n - (n - 1)/n
      prompts          how many prompts count at this n (see below)
      proxy_best       mean over prompts of the best proxy reward among the n; it is also Figure 7's maximum
      proxy_median     mean over prompts of the median proxy reward among the n (the mean of the two middle
                       values when an even number count)
      gold_best        mean gold score of the sample picked by the proxy (the first, on ties); None without gold

    A -inf proxy reward marks an answer cut off at max_new_tokens, which rejection sampling never keeps: it
    is never picked, it is left out of the median, and a prompt whose first n samples are all cut off is left
    out of that n's means (its pool entry is not updated either). So at n = K, proxy_best is the iteration's
    best_mean (here averaged in float64, there in float32). A mean over no prompt is None."""
    if gold is not None and gold.shape != proxy.shape:
        raise ValueError(f"gold {tuple(gold.shape)} and proxy {tuple(proxy.shape)} differ in shape")
    proxy = proxy.double()
    out: dict = {"n": [], "kl_bon": [], "prompts": [], "proxy_best": [], "proxy_median": [],
                 "gold_best": [] if gold is not None else None}
    for n in range(1, proxy.shape[1] + 1):
        s = proxy[:, :n]
        cut = torch.isneginf(s)
        live = ~cut.all(1)  # prompts with at least one finished answer among the n
        pick = s.argmax(1, keepdim=True)  # a finite score always beats -inf; the first on ties
        median = torch.nanquantile(s.masked_fill(cut, float("nan")), 0.5, dim=1)
        out["n"].append(n)
        out["kl_bon"].append(kl_best_of_n(n))
        out["prompts"].append(int(live.sum()))
        out["proxy_best"].append(_mean(s.gather(1, pick).squeeze(1)[live]))
        out["proxy_median"].append(_mean(median[live]))
        if gold is not None:
            out["gold_best"].append(_mean(gold[:, :n].double().gather(1, pick).squeeze(1)[live]))
    return out


def iteration_gold(prompts: list, answers: list[list[str]], scores: torch.Tensor) -> dict:
    """A rejection-sampling iteration's gold columns: K answers per prompt ([N][K]) and their proxy rewards
    [N, K] (-inf for a cut-off answer) -> {"best_of_n": curves, "gold_sample_mean": mean gold score of all
    N x K samples (cut-off ones included, like sample_mean), "gold_best_mean": gold of the best of all K}.
    The gold entries are None for prompts from a file."""
    k = scores.shape[1]
    gold = gold_scores([p for p in prompts for _ in range(k)], [a for cands in answers for a in cands])
    gold = None if gold is None else gold.view(len(prompts), k)
    curves = best_of_n_curves(scores, gold)
    return {"best_of_n": curves, "gold_sample_mean": None if gold is None else _mean(gold.double()),
            "gold_best_mean": None if gold is None else curves["gold_best"][-1]}


# ------------------------------------------------------------------------------------------------ figures

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _nan(values) -> list[float]:
    return [float("nan") if v is None else v for v in values]  # matplotlib leaves a gap at NaN


def plot_best_of_n(curves: dict, path: str | Path, title: str = "best-of-n") -> Path:
    """Left: the proxy reward of best-of-n and its gold score against KL_bon (Gao et al. Figure 1's
    best-of-n panel; two y axes, since the proxy is a logit and the gold score lies in [0, 1]). Right: the
    maximum and median proxy reward among n samples against n (Llama-2 Figure 7)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    kl, n = curves["kl_bon"], curves["n"]
    left.plot(kl, _nan(curves["proxy_best"]), "o-", color="C0", markersize=3, label="proxy (reward models)")
    left.set_xlabel("KL(best-of-n || policy), nats")
    left.set_ylabel("proxy reward of the best", color="C0")
    left.grid(alpha=0.3)
    if curves.get("gold_best") is not None:
        twin = left.twinx()
        twin.plot(kl, _nan(curves["gold_best"]), "s-", color="C3", markersize=3, label="gold (judges)")
        twin.set_ylabel("gold score of the best", color="C3")
        handles = left.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        left.legend(handles, [h.get_label() for h in handles], loc="lower right")
    left.set_title(f"{title}: proxy and gold reward")
    right.plot(n, _nan(curves["proxy_best"]), "o-", color="C0", markersize=3, label="max")
    right.plot(n, _nan(curves["proxy_median"]), "o-", color="C1", markersize=3, label="median")
    right.set_xlabel("n (samples per prompt)")
    right.xaxis.get_major_locator().set_params(integer=True)
    right.set_ylabel("proxy reward")
    right.set_title(f"{title}: max and median among n")
    right.grid(alpha=0.3)
    right.legend()
    return save_figure(fig, path)


def plot_ppo_gold(rows: list[dict], path: str | Path) -> Path | None:
    """PPO's rollouts, one point per iteration (training rows of metrics.jsonl): the proxy reward and, where
    the prompts have judges, the gold score against the measured KL(policy || reference) per answer. None
    (no figure) when there is no training row."""
    rows = sorted((r for r in rows if "split" not in r and "iteration" in r and "kl" in r and "reward" in r),
                  key=lambda r: r["iteration"])
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    kl = [r["kl"] for r in rows]
    line = {"markersize": 3, "linewidth": 0.8, "alpha": 0.8}  # joined in iteration order; the KL need not grow
    ax.plot(kl, [r["reward"] for r in rows], "o-", color="C0", label="proxy (reward models)", **line)
    ax.set_xlabel("KL(policy || reference) of the rollouts, nats per answer")
    ax.set_ylabel("proxy reward", color="C0")
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()[0]
    if all("gold" in r for r in rows):
        twin = ax.twinx()
        twin.plot(kl, [r["gold"] for r in rows], "s-", color="C3", label="gold (judges)", **line)
        twin.set_ylabel("gold score", color="C3")
        handles += twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="lower right")
    ax.set_title(f"PPO: iterations {rows[0]['iteration']}-{rows[-1]['iteration']}")
    return save_figure(fig, path)
