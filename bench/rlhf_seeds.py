"""Rejection sampling and PPO against SFT, over several seeds: held-out accuracy, reward and KL.

    python bench/rlhf_seeds.py --run runs/full --out runs/rlhf-bench --seeds 0 1 2

Starts from a finished quickstart (its SFT model and reward models) and repeats the RS -> PPO stages
with each seed, measuring every policy with the report card's measurements. Not a test: about 6 minutes
per seed on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


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

    run, out = Path(a.run), Path(a.out)
    sft_dir, rm_h, rm_s = run / "sft" / "model", run / "rm-helpful" / "model", run / "rm-safety" / "model"
    sft_ckpt = load_checkpoint(sft_dir)
    sft, tok = sft_ckpt.model, sft_ckpt.tokenizer()
    scorer = load_scorer(str(rm_h), str(rm_s), tok, "cpu")
    rows = {"sft": [], "rs": [], "ppo": []}
    sft_row = measure_policy(sft, tok, scorer, sft, n=180, seed=0)
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
            m = measure_policy(load_model(d / stage / "model"), tok, scorer, sft, n=180, seed=0)
            rows[stage].append(m)
            print(f"seed {seed} {stage}: accuracy {100 * m['accuracy']:.1f}%  reward {m['reward']:+.3f}  "
                  f"KL {m['kl']:.3f}", flush=True)
    summary = {}
    print(f"\nheld-out, mean ± std over seeds {a.seeds} (SFT is one model, measured once)")
    for stage, ms in rows.items():
        summary[stage] = {k: (statistics.mean(x[k] for x in ms), statistics.pstdev(x[k] for x in ms))
                          for k in ("accuracy", "reward", "kl", "refusal_rate")}
        s = summary[stage]
        print(f"{stage:4} accuracy {100 * s['accuracy'][0]:5.1f} ± {100 * s['accuracy'][1]:.1f}%   "
              f"reward {s['reward'][0]:+.3f} ± {s['reward'][1]:.3f}   KL {s['kl'][0]:.3f} ± {s['kl'][1]:.3f}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
