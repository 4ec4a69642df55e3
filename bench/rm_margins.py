"""Reward-model accuracy by rating for each margin setting and several seeds (Llama-2 Table 8 layout).

    python bench/rm_margins.py --sft runs/full/sft/model --base runs/full/pretrain/model --out runs/rm-bench
    python bench/rm_margins.py ... --rm-init runs/mini/sft/model   # a reward model larger than the policy

Pairs are generated once per (kind, seed) from the SFT and base models and rated by the proving
ground's judges; each margin setting then trains on the same pairs. Prints mean ± std over seeds and
writes a JSON summary. Not a test: it takes about 15 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from camelid.reward_model import RATINGS


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sft", required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--rm-init", help="SFT checkpoint the reward models start from (default: --sft, the policy "
                   "that samples the pairs); InstructGPT paired a 175B policy with a 6B RM, and Llama-2 "
                   "Figure 6 shows RM accuracy growing with size")
    p.add_argument("--out", default="runs/rm-bench")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--margins", nargs="+", default=["none", "small", "large"])
    p.add_argument("--kinds", nargs="+", default=["helpful", "safety"])
    p.add_argument("--set", dest="overrides", action="append", default=[])
    a = p.parse_args()
    from camelid.checkpoint import load_checkpoint, load_model
    from camelid.data.preferences import save_pairs
    from camelid.train.reward import load_rm_config, train_reward_model
    from camelid.train.rm_pairs import proving_ground_pairs

    out = Path(a.out)
    results = {}
    sft_ckpt = load_checkpoint(a.sft)
    sft, tok = sft_ckpt.model, sft_ckpt.tokenizer()
    models = [sft, load_model(a.base)]
    rm_init = a.rm_init or a.sft
    base_cfg = load_rm_config("quickstart-rm", [f"model.init_from={rm_init}", "log.progress=false"] + a.overrides)
    for kind in a.kinds:
        for seed in a.seeds:
            data = out / f"pairs-{kind}-{seed}"
            if not (data / "test.jsonl").exists():
                data.mkdir(parents=True, exist_ok=True)
                r = base_cfg.rm
                save_pairs(proving_ground_pairs(models, tok, kind, "train", r.prompts, seed=seed, samples=r.samples,
                                                temperature=r.temperature), data / "train.jsonl")
                save_pairs(proving_ground_pairs(models, tok, kind, "test", r.val_prompts, seed=seed + 10_000,
                                                samples=r.samples, temperature=r.temperature), data / "test.jsonl")
            for margin in a.margins:
                run = out / f"{kind}-{margin}-{seed}"
                if (run / "rm_report.json").exists():
                    report = json.loads((run / "rm_report.json").read_text())
                else:
                    cfg = load_rm_config("quickstart-rm", [f"model.init_from={rm_init}", f"rm.kind={kind}",
                                                           f"rm.margin={margin}", f"rm.data={data / 'train.jsonl'}",
                                                           f"rm.val_data={data / 'test.jsonl'}", f"rm.seed={seed}",
                                                           f"train.seed={seed}", "log.progress=false"] + a.overrides)
                    report = train_reward_model(cfg, run)
                results.setdefault(f"{kind}/{margin}", []).append(report["accuracy"])
                print(f"{kind:8} {margin:6} seed {seed}: " + "  ".join(
                    f"{k[:6]} {'-' if v is None else f'{100 * v:.1f}'}" for k, v in report["accuracy"].items()), flush=True)
    summary = {}
    print("\nheld-out accuracy (%), mean ± std over seeds " + str(a.seeds))
    print(f"{'':16}" + "".join(f"{r[:13]:>16}" for r in RATINGS + ["average"]))
    for key, accs in results.items():
        row = {}
        for r in RATINGS + ["average"]:
            vals = [x[r] for x in accs if x.get(r) is not None]
            row[r] = (statistics.mean(vals), statistics.pstdev(vals)) if vals else None
        summary[key] = row
        print(f"{key:16}" + "".join(f"{'-':>16}" if v is None else f"{100 * v[0]:10.1f} ± {100 * v[1]:3.1f}"
                                    for v in row.values()))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
