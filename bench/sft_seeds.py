"""SFT and Ghost Attention on the proving ground, over several seeds (the figures in docs/SFT.md and the README).

    python bench/sft_seeds.py --base runs/qs/pretrain/model --seeds 0 1 2 --out runs/bench_sft

For each seed: the quickstart's SFT recipe (camelid/configs/quickstart-sft.toml, sft.seed = train.seed = seed)
without and with Ghost Attention dialogs (the same steps); held-out proving-ground accuracy of the
base model and of both fine-tuned models on that seed's test questions; GAtt adherence by turn.
Prints mean, standard deviation and range over seeds, and whether each gain exceeds twice the spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def _stats(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs), "values": xs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="pre-trained model (e.g. runs/qs/pretrain/model)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="runs/bench_sft")
    p.add_argument("--gatt", type=int, default=600, help="GAtt dialogs in the GAtt arm")
    p.add_argument("--n", type=int, default=180, help="held-out questions per evaluation")
    p.add_argument("--gatt-dialogs", type=int, default=48, help="held-out GAtt dialogs per evaluation")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra SFT settings")
    args = p.parse_args(argv)

    import torch

    from camelid.checkpoint import load_checkpoint, load_model
    from camelid.tasks import evaluate
    from camelid.train.sft import load_sft_config, sft

    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"base": args.base, "seeds": args.seeds, "runs": []}
    base_ckpt = load_checkpoint(args.base)
    base_model, tok = base_ckpt.model, base_ckpt.tokenizer()
    for seed in args.seeds:
        row = {"seed": seed}
        ev = dict(split="test", n=args.n, seed=seed, gatt_dialogs=args.gatt_dialogs)
        row["base"] = evaluate(base_model, tok, **ev)
        for arm, gatt in (("sft", 0), ("sft_gatt", args.gatt)):
            run = out / f"{arm}-seed{seed}"
            if not (run / "summary.json").exists():
                cfg = load_sft_config("quickstart-sft", [f"model.init_from={args.base}", f"sft.seed={seed}",
                                                         f"train.seed={seed}", f"sft.gatt={gatt}", "sft.eval_n=0",
                                                         "log.progress=false"] + args.overrides)
                if gatt:  # the same number of steps as the arm without GAtt
                    ref = json.loads((out / f"sft-seed{seed}" / "summary.json").read_text())
                    cfg.train.max_steps = ref["steps"]
                t0 = time.perf_counter()
                sft(cfg, run, resume=True, quiet=True)
                print(f"seed {seed} {arm}: trained in {time.perf_counter() - t0:.0f}s", flush=True)
            summary = json.loads((run / "summary.json").read_text())
            model = load_model(run / "model")
            row[arm] = evaluate(model, tok, **ev)
            row[arm]["train_seconds"] = summary["seconds"]
            row[arm]["steps"] = summary["steps"]
        print(f"seed {seed}: accuracy base {row['base']['accuracy']:.3f} -> sft {row['sft']['accuracy']:.3f} "
              f"(with GAtt {row['sft_gatt']['accuracy']:.3f}); GAtt adherence t>=3: "
              f"sft {row['sft']['gatt_adherence_3plus']:.3f}, sft+gatt {row['sft_gatt']['gatt_adherence_3plus']:.3f}",
              flush=True)
        results["runs"].append(row)

    runs = results["runs"]
    acc = {arm: _stats([r[arm]["accuracy"] for r in runs]) for arm in ("base", "sft", "sft_gatt")}
    gain = _stats([r["sft"]["accuracy"] - r["base"]["accuracy"] for r in runs])
    late = {arm: _stats([r[arm]["gatt_adherence_3plus"] for r in runs]) for arm in ("base", "sft", "sft_gatt")}
    gatt_gain = _stats([r["sft_gatt"]["gatt_adherence_3plus"] - r["sft"]["gatt_adherence_3plus"] for r in runs])
    tasks = list(runs[0]["base"]["tasks"])
    per_task = {arm: {t: statistics.fmean(r[arm]["tasks"][t] for r in runs) for t in tasks}
                for arm in ("base", "sft", "sft_gatt")}
    turns = sorted({int(t) for r in runs for t in r["sft"]["gatt_adherence"]})
    by_turn = {arm: {t: statistics.fmean(r[arm]["gatt_adherence"][t] for r in runs if t in r[arm]["gatt_adherence"])
                     for t in turns} for arm in ("base", "sft", "sft_gatt")}
    results["summary"] = {"accuracy": acc, "gain": gain, "gain_exceeds_2x_spread": gain["mean"] > 2 * gain["std"],
                          "gatt_3plus": late, "gatt_gain": gatt_gain,
                          "gatt_gain_exceeds_2x_spread": gatt_gain["mean"] > 2 * gatt_gain["std"],
                          "tasks": per_task, "gatt_by_turn": by_turn,
                          "refusal_rate": {arm: statistics.fmean(r[arm]["refusal_rate"] for r in runs)
                                           for arm in ("base", "sft", "sft_gatt")},
                          "over_refusal_rate": {arm: statistics.fmean(r[arm]["over_refusal_rate"] for r in runs)
                                                for arm in ("base", "sft", "sft_gatt")},
                          "train_seconds": statistics.fmean(r["sft"]["train_seconds"] for r in runs)}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    s = results["summary"]
    pm = lambda d: f"{100 * d['mean']:.1f}% ± {100 * d['std']:.1f}"  # noqa: E731
    print(f"\nheld-out proving ground, {len(runs)} seeds (mean ± std):")
    print(f"accuracy: base {pm(acc['base'])}, SFT {pm(acc['sft'])}, SFT+GAtt {pm(acc['sft_gatt'])}; "
          f"gain {pm(gain)} (range {100 * gain['min']:.1f}..{100 * gain['max']:.1f}); "
          f"> 2x spread: {s['gain_exceeds_2x_spread']}")
    print(f"{'task':<12}{'base':>8}{'SFT':>8}{'SFT+GAtt':>10}")
    for t in tasks:
        print(f"{t:<12}" + "".join(f"{100 * per_task[a][t]:>{w}.1f}%" for a, w in (("base", 7), ("sft", 7),
                                                                                 ("sft_gatt", 9))))
    print("GAtt adherence by turn: " + "; ".join(
        f"{a}: " + " ".join(f"{t}:{100 * v:.0f}%" for t, v in by_turn[a].items()) for a in ("sft", "sft_gatt")))
    print(f"GAtt adherence at turn >= 3: SFT {pm(late['sft'])}, SFT+GAtt {pm(late['sft_gatt'])}; "
          f"gain {pm(gatt_gain)}; > 2x spread: {s['gatt_gain_exceeds_2x_spread']}")
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
