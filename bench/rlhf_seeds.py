"""Rejection sampling and PPO against SFT over several seeds: the quickstart's RLHF rounds, run again.

    python bench/rlhf_seeds.py --run runs/quickstart --out runs/rlhf-seeds --seeds 0 1 2

Starts from a finished quickstart (its SFT model and round-1 reward models) and, for each seed other than
0, runs the quickstart's own later steps again with that seed, as the quickstart defines them: round 1's
rejection sampling, round 2's helpfulness reward model on pairs of that policy's answers, round 2's
rejection sampling, and PPO. Seed 0 is the quickstart's own run: its report card's per-prompt results are
used as they are. Every policy is measured as the report card measures it, on the same 540 held-out
prompts, and compared with SFT prompt by prompt (camelid.tasks.stats): per seed, and over the seeds both
pooled (the seeds' pairs concatenated, as if independent) and by prompt (each prompt's difference
averaged over the seeds first; the seeds share the prompts, so this is the interval to trust).

Three controls, round 1's rejection sampling with the same settings and seed but another reward in place of the
reward models: `rs-random`, a random number (what fine-tuning on the policy's own samples gives without any
preference), `rs-likeliest`, zero for every answer (with `rs.logprob_weight`, the pick is the sample the policy
finds likeliest: what the reward models add to the policy's own belief), and `rs-judges`, the judges themselves
(the gold control: what a perfect reward would give). What rejection sampling owes to the reward models is its
difference from the first two; the last bounds it. Not a test: about 7 minutes per seed on a 2-core CPU, and 2-4 more per control.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

N = 540  # held-out prompts, as the quickstart's report card
RERUN = ("rs", "rm-helpful-2", "rs-2", "ppo")  # the steps run again with each seed
POLICIES = ("rs", "rs-2", "ppo", "rs-random", "rs-likeliest", "rs-judges")  # the ones compared with SFT


class RandomReward:
    """The control's reward: a standard normal draw per answer, from a generator of its own."""

    def __init__(self, seed: int):
        import torch

        self.generator = torch.Generator().manual_seed(seed)

    def score(self, prompts, answers):
        import torch

        r = torch.randn(len(answers), generator=self.generator)
        return {"combined": r, "helpful": r, "safety": None}


class ZeroReward:
    """The likeliest-sample control's reward: nothing, so that only rs.logprob_weight * log pi chooses."""

    def score(self, prompts, answers):
        import torch

        r = torch.zeros(len(answers))
        return {"combined": r, "helpful": r, "safety": None}


class JudgesReward:
    """The gold control's reward: the proving ground's judges (the report card's score of each answer)."""

    def score(self, prompts, answers):
        from camelid.rlhf.gold import gold_scores

        r = gold_scores(prompts, answers)
        return {"combined": r, "helpful": r, "safety": None}


def seed_sets(seed: int) -> list[str]:
    """The quickstart --set lines of one seed (seed 0: none, the quickstart's own settings). Each step keeps
    the offset the quickstart gives it (round 2 samples other prompts than round 1)."""
    if seed == 0:
        return []
    return [f"rs.rs.seed={10 * seed}", f"rm-helpful-2.rm.seed={10 * seed + 1}", f"rs-2.rs.seed={10 * seed + 1}",
            f"ppo.ppo.seed={10 * seed}"] + [f"{step}.train.seed={seed}" for step in RERUN]


CONTROLS = {"rs-random": RandomReward, "rs-likeliest": lambda seed: ZeroReward(), "rs-judges": lambda seed: JudgesReward()}


def run_seed(run: Path, out: Path, seed: int, controls=tuple(CONTROLS)) -> None:
    """The steps of RERUN in `out`, reading the earlier steps' outputs from `run` (seed 0: the quickstart's run
    made them), and the named controls."""
    from camelid.config import replace_keys, validate
    from camelid.quickstart import PIPELINE, REPORTS, route_overrides, step_config
    from camelid.rlhf.rs import rejection_sampling

    routed = route_overrides(seed_sets(seed))
    for step in PIPELINE:
        if step.name not in RERUN:
            continue
        cfg = step_config(step, run, False, routed)
        cfg = replace_keys(cfg, {k: str(out / v) for k, v in step.inputs.items() if v.split("/")[0] in RERUN})
        validate(cfg)
        if seed:
            print(f"== seed {seed}: {step.name}", flush=True)
            REPORTS[step.stage](step, cfg, out / step.name)
        if step.name == "rs":
            for name in controls:
                if name == "rs-likeliest" and not cfg.rs.logprob_weight:
                    continue  # without the policy's log-probability every answer ties: nothing to pick
                print(f"== seed {seed}: {name} (a control)", flush=True)
                rejection_sampling(cfg, out / name, scorer=CONTROLS[name](seed))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished quickstart output directory")
    p.add_argument("--out", default="runs/rlhf-seeds")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--controls", nargs="*", choices=list(CONTROLS), default=list(CONTROLS),
                   help="the controls to run (each is one more round-1 rejection sampling per seed); none: --controls")
    a = p.parse_args()
    from camelid.checkpoint import load_checkpoint, load_model
    from camelid.report_card import PROMPTS_FILE, measure_policy
    from camelid.tasks.stats import format_diff, paired_diff, paired_diff_by_prompt, pooled_paired_diff

    run, out = Path(a.run), Path(a.out)
    card = json.loads((run / PROMPTS_FILE).read_text())["stages"]
    tok = load_checkpoint(run / "sft" / "model").tokenizer()
    per_prompt: dict[str, list[dict]] = {stage: [] for stage in POLICIES}
    for seed in a.seeds:
        d = out / f"seed{seed}"
        run_seed(run, d, seed, a.controls)
        for stage in POLICIES:
            cached = d / f"{stage}_per_prompt.json"
            if seed == 0 and stage in card:
                m = card[stage]
            elif cached.exists():
                m = json.loads(cached.read_text())
            elif not (d / stage / "model").exists():
                continue  # a control this recipe does not run
            else:
                m = measure_policy(load_model(d / stage / "model"), tok, n=N, seed=0)["per_prompt"]
                cached.write_text(json.dumps({k: m[k] for k in ("correct", "score")}))
            per_prompt[stage].append(m)
            diff = paired_diff(m["correct"], card["sft"]["correct"])
            print(f"seed {seed} {stage:5}: accuracy {100 * sum(m['correct']) / len(m['correct']):.1f}% "
                  f"(vs SFT {format_diff(diff)})", flush=True)
    summary = {"seeds": a.seeds, "n": N, "sft_accuracy": sum(card["sft"]["correct"]) / N}
    print(f"\nvs SFT ({100 * summary['sft_accuracy']:.1f}%) on the same {N} prompts, mean [95% paired normal "
          f"interval], percentage points; seeds {a.seeds}")
    for stage, ms in per_prompt.items():
        if not ms:
            continue
        s = summary[stage] = {}
        for key, scale, digits in (("correct", 100.0, 1), ("score", 1.0, 3)):
            pairs = [(m[key], card["sft"][key]) for m in ms]
            per_seed = [paired_diff(x, y) for x, y in pairs]
            pooled, by_prompt = pooled_paired_diff(pairs), paired_diff_by_prompt(pairs)
            s[key] = {"per_seed": [x.to_dict() for x in per_seed], "pooled": pooled.to_dict(),
                      "by_prompt": by_prompt.to_dict()}
            print(f"{stage:5} {'accuracy' if key == 'correct' else 'score':8} per seed "
                  + ", ".join(format_diff(x, scale, digits) for x in per_seed)
                  + f"   pooled (n={pooled.n}) {format_diff(pooled, scale, digits)}"
                  + f"   by prompt (n={by_prompt.n}) {format_diff(by_prompt, scale, digits)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
