"""`camelid rs` and `camelid ppo`: rejection sampling (camelid.rlhf.rs) and PPO (camelid.rlhf.ppo), with the
flags they share: the policy, both reward models, prompts, iterations, recipe and output."""

from __future__ import annotations

import json
from pathlib import Path

from camelid.cli import Command


def add_policy_arguments(p, stage: str, policy_help: str) -> None:
    """The flags rejection sampling and PPO share: the policy, both reward models, prompts, recipe, output."""
    p.add_argument("--policy", help=policy_help)
    p.add_argument("--reward-helpful", help="helpfulness reward model")
    p.add_argument("--reward-safety", help="safety reward model (optional)")
    p.add_argument("--prompts", default=None, help="'proving-ground' or a JSONL of prompts")
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--config", default=None, help="recipe file or name (default: Llama-2's settings, the stage's config class)")
    p.add_argument("--out", default=f"runs/{stage}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def policy_config(stage, args, resume: bool, **extra):
    """The stage's config from the shared flags (and `extra` keys of its section), then --set."""
    from camelid.rlhf.rewards import policy_overrides
    from camelid.train.stage import stage_config

    sets = policy_overrides(stage.name, policy=args.policy, reward_helpful=args.reward_helpful,
                            reward_safety=args.reward_safety, prompts=args.prompts, iterations=args.iterations,
                            overrides=args.overrides, **extra)
    return stage_config(stage, args.config, sets, args.out, resume)


def add_rs_arguments(p) -> None:
    p.description = ("Rejection-sampling fine-tuning (Llama-2 §3.2.3): K samples per prompt from the newest policy, "
                     "scored by the combined reward; the best of each prompt, pooled over iterations, fine-tunes "
                     "the policy with the SFT objective. Defaults: Llama-2's (RSConfig).")
    add_policy_arguments(p, "rs", policy_help="the starting policy (an SFT checkpoint)")
    p.add_argument("-k", type=int, default=None, help="samples per prompt")


def run_rs(args) -> int:
    from camelid.rlhf.rs import RS, rejection_sampling

    cfg = policy_config(RS, args, resume=True, k=args.k)
    summary = rejection_sampling(cfg, args.out)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    print(f"policy: {Path(args.out) / 'model'} (resume: run the same command again)")
    return 0


def add_ppo_arguments(p) -> None:
    p.description = ("PPO with the combined helpfulness/safety reward and a per-token KL penalty to the starting "
                     "policy (Llama-2 §3.2.3). Defaults (PPOConfig): batch 512, minibatch 64, clip 0.2, "
                     "constant LR 1e-6, beta 0.01 up to 13B.")
    add_policy_arguments(p, "ppo", policy_help="the starting policy (SFT or rejection-sampling checkpoint)")
    p.add_argument("--resume", action="store_true")


def run_ppo(args) -> int:
    from camelid.rlhf.ppo import PPO
    from camelid.rlhf.ppo import ppo as train_ppo  # `ppo` here is the command

    cfg = policy_config(PPO, args, args.resume)
    summary = train_ppo(cfg, args.out, resume=args.resume)
    print(json.dumps(summary, indent=2))
    chosen = summary.get("selected_by", "reward")
    print(f"policy: {Path(args.out) / 'model'} (best held-out {chosen}, iteration {summary['best_iteration']})")
    return 0


rs = Command(add_rs_arguments, run_rs)
ppo = Command(add_ppo_arguments, run_ppo)
