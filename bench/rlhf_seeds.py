"""Rejection sampling and PPO against SFT, over several seeds: held-out accuracy, reward and KL.

    python bench/rlhf_seeds.py --run runs/full --out runs/rlhf-bench --seeds 0 1 2

Starts from a finished quickstart (its SFT model and reward models) and repeats the RS -> PPO stages
with each seed, measuring every policy with the report card's measurements on 540 held-out prompts.
Each stage is compared with SFT prompt by prompt (camelid.tasks.stats): per seed, and over the seeds
both pooled (the seeds' pairs concatenated, as if independent) and by prompt (each prompt's difference
averaged over the seeds first; the seeds share the prompts, so this is the interval to trust).
Not a test: about 6 minutes per seed on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

N = 540  # held-out prompts, as the quickstart's report card


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished quickstart output directory")
    p.add_argument("--out", default="runs/rlhf-bench")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = p.parse_args()
    from camelid.checkpoint import load_checkpoint, load_model
    from camelid.report_card import measure_policy
    from camelid.rlhf.ppo import load_ppo_config, ppo
    from camelid.rlhf.rs import load_rs_config, load_scorer, rejection_sampling
    from camelid.tasks.stats import format_diff, paired_diff, paired_diff_by_prompt, pooled_paired_diff

    run, out = Path(a.run), Path(a.out)
    sft_dir, rm_h, rm_s = run / "sft" / "model", run / "rm-helpful" / "model", run / "rm-safety" / "model"
    sft_ckpt = load_checkpoint(sft_dir)
    sft, tok = sft_ckpt.model, sft_ckpt.tokenizer()
    scorer = load_scorer(str(rm_h), str(rm_s), tok, "cpu")
    rows = {"sft": [], "rs": [], "ppo": []}
    sft_row = measure_policy(sft, tok, scorer, sft, n=N, seed=0)
    vs_sft = {"accuracy": ("correct", 100.0, 1), "score": ("score", 1.0, 3)}  # vector, scale, digits

    def pairs(ms: list[dict], key: str) -> list[tuple[list, list]]:
        return [(m["per_prompt"][key], sft_row["per_prompt"][key]) for m in ms]

    for seed in a.seeds:
        d = out / f"seed{seed}"
        rs_cfg = load_rs_config("quickstart-rs", [f"model.init_from={sft_dir}", f"rs.reward_helpful={rm_h}",
                                                  f"rs.reward_safety={rm_s}", f"rs.seed={seed}", f"train.seed={seed}"])
        if not (d / "rs" / "summary.json").exists():
            rejection_sampling(rs_cfg, d / "rs")
        ppo_cfg = load_ppo_config("quickstart-ppo", [f"model.init_from={d / 'rs' / 'model'}",
                                                     f"ppo.reward_helpful={rm_h}", f"ppo.reward_safety={rm_s}",
                                                     f"ppo.seed={seed}", f"train.seed={seed}", "log.progress=false"])
        if not (d / "ppo" / "summary.json").exists():
            ppo(ppo_cfg, d / "ppo", resume=True)
        rows["sft"].append(sft_row)
        for stage in ("rs", "ppo"):
            m = measure_policy(load_model(d / stage / "model"), tok, scorer, sft, n=N, seed=0)
            rows[stage].append(m)
            diffs = {k: paired_diff(m["per_prompt"][v], sft_row["per_prompt"][v]) for k, (v, _, _) in vs_sft.items()}
            m["vs_sft"] = {k: x.to_dict() for k, x in diffs.items()}
            print(f"seed {seed} {stage}: accuracy {100 * m['accuracy']:.1f}% (vs SFT {format_diff(diffs['accuracy'])})"
                  f"  score {m['score']:.3f} (vs SFT {format_diff(diffs['score'], 1.0, 3)})  reward {m['reward']:+.3f}"
                  f"  KL {m['kl']:.3f}", flush=True)
    summary = {}
    print(f"\nheld-out, mean ± std over seeds {a.seeds} (SFT is one model, measured once)")
    for stage, ms in rows.items():
        summary[stage] = {k: (statistics.mean(x[k] for x in ms), statistics.pstdev(x[k] for x in ms))
                          for k in ("accuracy", "score", "reward", "kl", "refusal_rate")}
        s = summary[stage]
        print(f"{stage:4} accuracy {100 * s['accuracy'][0]:5.1f} ± {100 * s['accuracy'][1]:.1f}%   "
              f"score {s['score'][0]:.3f} ± {s['score'][1]:.3f}   "
              f"reward {s['reward'][0]:+.3f} ± {s['reward'][1]:.3f}   KL {s['kl'][0]:.3f} ± {s['kl'][1]:.3f}")
    print(f"\nvs SFT on the same {N} prompts, mean [95% paired normal interval]; accuracy in percentage points")
    for stage, ms in rows.items():
        if stage == "sft":
            continue
        for k, (v, scale, digits) in vs_sft.items():
            pooled, by_prompt = pooled_paired_diff(pairs(ms, v)), paired_diff_by_prompt(pairs(ms, v))
            summary[stage][f"{k}_vs_sft"] = {"per_seed": [m["vs_sft"][k] for m in ms], "pooled": pooled.to_dict(),
                                             "by_prompt": by_prompt.to_dict()}
            print(f"{stage:4} {k:8} per seed " + ", ".join(format_diff(m["vs_sft"][k], scale, digits) for m in ms)
                  + f"   pooled (n={pooled.n}) {format_diff(pooled, scale, digits)}"
                  + f"   by prompt (n={by_prompt.n}) {format_diff(by_prompt, scale, digits)}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    # the per-prompt results, to compare the stages again some other way without measuring again
    kept = {"seeds": a.seeds, "sft": sft_row["per_prompt"], **{st: [m["per_prompt"] for m in rows[st]]
                                                                for st in ("rs", "ppo")}}
    (out / "per_prompt.json").write_text(json.dumps(kept))


if __name__ == "__main__":
    main()
