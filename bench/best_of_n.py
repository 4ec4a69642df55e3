"""Best of n answers by the reward models against greedy SFT, on the report card's held-out prompts.

    python bench/best_of_n.py --run runs/quickstart --n 4 --seeds 0 1 2 --logprob-weight 1

The SFT model answers each of the report card's 540 held-out prompts n times (temperature 0.7, as rejection
sampling draws them, answers up to 24 tokens as the report card's); each round's reward models (Llama-2 eq. 4)
pick one (camelid/rlhf/best_of_n.py). Each pick is judged as the report card judges greedy answers (correct =
full credit) and compared with greedy SFT prompt by prompt, beside two controls: a random sample (the first)
and the sample the judges score best (the most any picker could get). With --logprob-weight W, each round also
picks by reward + W * log pi_SFT(answer), W in the helpfulness RM's preference units (regularized best-of-n, as
`rs.logprob_weight`; the quickstart's report card row uses rs's own), beside the likeliest sample alone (the
policy's own belief, no reward). --prompt-seed asks 540 other held-out prompts instead (the SFT model's greedy
answers to them judged here), a check on prompts no setting was chosen on. Not a test: under a minute per seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

N_PROMPTS = 540


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished quickstart output directory")
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--prompt-seed", type=int, default=0,
                   help="0: the report card's prompts; another: as many other held-out prompts (the test split drawn "
                        "with this seed), against the SFT model's greedy answers to them")
    p.add_argument("--reward", nargs="*", default=[], metavar="NAME=DIR",
                   help="more helpfulness reward models to pick with (beside the run's rounds, with its safety RM)")
    p.add_argument("--logprob-weight", type=float, nargs="*", default=[], metavar="W",
                   help="also pick by reward + W * log-probability of the answer under the SFT model")
    p.add_argument("--out", help="write the figures here as JSON")
    a = p.parse_args()
    import torch

    from camelid.checkpoint import load_checkpoint
    from camelid.report_card import PROMPTS_FILE
    from camelid.rlhf.best_of_n import pick, rewards, sample_candidates
    from camelid.rlhf.rewards import load_prompts
    from camelid.rlhf.rs import load_scorer
    from camelid.tasks.stats import format_diff, paired_diff_by_prompt, pooled_paired_diff

    run = Path(a.run)
    ckpt = load_checkpoint(run / "sft" / "model")
    model, tok = ckpt.model.eval(), ckpt.tokenizer()
    prompts = load_prompts("proving-ground", "test", N_PROMPTS, seed=a.prompt_seed)  # 0: evaluate(split="test")'s
    if a.prompt_seed == 0:
        greedy = json.loads((run / PROMPTS_FILE).read_text())["stages"]["sft"]["correct"]
    else:
        greedy = sample_candidates(model, tok, prompts, 1, 0.0).correct()[:, 0].tolist()
    rounds = {name: load_scorer(str(run / name / "model"), str(run / "rm-safety" / "model"), tok, "cpu")
              for name in ("rm-helpful", "rm-helpful-2") if (run / name / "model").exists()}
    for spec in a.reward:
        name, _, path = spec.rpartition("=")
        rounds[name or path] = load_scorer(path, str(run / "rm-safety" / "model"), tok, "cpu")

    weighted = [f"{name} + {w:g} logp" for name in rounds for w in a.logprob_weight]
    picks: dict[str, list[list[int]]] = {k: [] for k in ["random", *rounds, *weighted,
                                                         *(["likeliest"] if a.logprob_weight else []), "judges"]}
    for seed in a.seeds:
        cands = sample_candidates(model, tok, prompts, a.n, a.temperature, seed)
        chosen = {"random": torch.zeros(N_PROMPTS, dtype=torch.long), "judges": cands.gold.argmax(1),
                  "likeliest": cands.logp.argmax(1)}
        for name, scorer in rounds.items():
            reward = rewards(cands, scorer)
            chosen[name] = pick(cands, scorer, 0.0, reward)
            for w in a.logprob_weight:
                chosen[f"{name} + {w:g} logp"] = pick(cands, scorer, w, reward)
        correct = cands.correct()
        for name in picks:
            picks[name].append(correct.gather(1, chosen[name][:, None]).squeeze(1).tolist())
            print(f"seed {seed}: {name:13} {100 * sum(picks[name][-1]) / N_PROMPTS:.1f}%", flush=True)
    where = "the report card's" if a.prompt_seed == 0 else f"other held-out (prompt seed {a.prompt_seed})"
    print(f"\nbest of {a.n} (T {a.temperature}) vs greedy SFT ({100 * sum(greedy) / N_PROMPTS:.1f}%) on {where} "
          f"{N_PROMPTS} prompts, seeds {a.seeds}: accuracy, difference [95% paired interval] in points")
    result = {"n": a.n, "temperature": a.temperature, "seeds": a.seeds, "logprob_weight": a.logprob_weight,
              "prompt_seed": a.prompt_seed, "greedy_sft": sum(greedy) / N_PROMPTS}
    for name, ms in picks.items():
        pairs = [(m, greedy) for m in ms]
        pooled, by_prompt = pooled_paired_diff(pairs), paired_diff_by_prompt(pairs)
        acc = sum(map(sum, ms)) / (N_PROMPTS * len(ms))
        result[name] = {"accuracy": acc, "pooled": pooled.to_dict(), "by_prompt": by_prompt.to_dict()}
        print(f"{name:13} {100 * acc:5.1f}%   pooled {format_diff(pooled)}   by prompt {format_diff(by_prompt)}")
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
