"""PPO (Llama-2 §3.2.3): `camelid ppo --policy CKPT --reward-helpful RM --reward-safety RM --prompts ...`

Each iteration samples answers from the policy with the batched engine, scores them with the combined
reward (eq. 4), whitens logit(R_c), subtracts beta * KL(pi || pi_ref) per token (eq. 6), estimates
advantages with GAE, and takes one gradient step per minibatch on the clipped surrogate (0.2) plus a
clipped value loss. The policy and the value model (initialised from the helpfulness RM) train
together as one module on the shared loop, which supplies accumulation, the loss normalisation by the
response tokens of the whole minibatch, clipping, NaN skipping, checkpoints and resume. The reference
policy and both reward models are frozen and kept out of autograd. Early stopping watches the
combined reward on held-out prompts; the best policy is the result.

Under torchrun the policy and the value model are sharded with FSDP and train on the global minibatch;
the frozen reference and the reward models are replicated. Each rollout phase gathers the policy's full
weights, every rank samples its share of the prompts (each prompt seeded by its global index, so the
samples do not depend on the number of ranks), and the rewards, whitening, KL and advantages are taken
over the gathered global batch (camelid/rlhf/rollout.py).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from camelid.config import CheckpointConfig, ConfigError, LogConfig, StageConfig, TrainConfig, load_config
from camelid.parallel.collectives import barrier
from camelid.reward_model import RewardModel, whiten
from camelid.rlhf.gold import gold_scores, plot_ppo_gold
from camelid.rlhf.ppo_math import entropy, gae, group_whiten, kl_per_token, masked_whiten, penalized_rewards, \
    policy_loss, token_logprobs, value_loss
from camelid.rlhf.rewards import Prompt, RewardScorer, load_prompts
from camelid.rlhf.rollout import answer_batch, batch_positions, encode_prompts, heldout_shares, rows_of_share, \
    sample_seeds, sample_shares, score_shares, sequence_logprobs
from camelid.runlog import read_metrics
from camelid.train.loop import Trainer
from camelid.train.metrics import MetricsLog
from camelid.train.stage import RunContext, Stage, run_stage


@dataclass
class PPOSection:
    reward_helpful: str = ""
    reward_safety: str = ""  # empty: helpfulness reward alone
    prompts: str = "proving-ground"
    eval_prompts: str = ""  # default: the proving ground's test split (or the prompts file)
    iterations: int = 200  # Llama-2: 200-400, with early stopping
    rollout_batch: int = 512  # sequences per iteration (Llama-2's batch)
    minibatch: int = 64  # sequences per gradient step; one step per minibatch
    max_new_tokens: int = 64
    temperature: float = 1.0
    group_size: int = 1  # rollouts per prompt; > 1 scores each against its prompt's mean (group_whiten)
    beta: float = -1.0  # KL penalty; -1: Llama-2's 0.01 up to 13B parameters, 0.005 above
    gamma: float = 1.0
    lam: float = 0.95
    clip: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.1
    value_lr: float = 0.0  # the value model's learning rate; 0: 10x the policy's (train.lr)
    missing_eos_penalty: float = 1.0  # subtracted from the whitened score of an answer cut off at max_new_tokens
    eval_every: int = 5  # iterations between held-out evaluations (early stopping)
    eval_n: int = 128
    patience: int = 4  # evaluations without a gain of min_delta before stopping (0: never stop early)
    min_delta: float = 0.0  # held-out gain (of `select`) that counts as an improvement
    # What picks the best policy and stops early: "reward", the combined reward on held-out prompts, or "gold",
    # the proving-ground judges' score (Gao et al.'s gold reward) on validation prompts: dialogs of the train
    # split's items that PPO does not roll out on, so choosing by gold never looks at the test split.
    select: str = "reward"
    save_every: int = 1  # iterations between checkpoints (resume continues from the newest)
    seed: int = 0


@dataclass
class PPOConfig(StageConfig):
    """PPO; model.init_from is the policy (an SFT or rejection-sampling checkpoint). The defaults are
    Llama-2's: AdamW (0.9, 0.95, eps 1e-5), weight decay 0.1, clipping 1.0, constant LR 1e-6."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=1e-6, schedule="constant", warmup_steps=0, weight_decay=0.1, micro_batch=8, dtype="fp32"))
    log: LogConfig = field(default_factory=lambda: LogConfig(every=1))
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=0, keep=1))
    ppo: PPOSection = field(default_factory=PPOSection)

    def check(self) -> None:
        p = self.ppo
        if p.group_size < 1 or p.rollout_batch % p.group_size:
            raise ConfigError(f"ppo.group_size: {p.group_size} must be >= 1 and divide ppo.rollout_batch {p.rollout_batch}")
        if p.rollout_batch % p.minibatch:
            raise ConfigError(f"ppo.rollout_batch: {p.rollout_batch} is not a multiple of ppo.minibatch {p.minibatch}")
        if p.select not in ("reward", "gold"):
            raise ConfigError(f"ppo.select: {p.select!r} is neither 'reward' nor 'gold'")
        if p.select == "gold" and (p.prompts != "proving-ground" or p.eval_prompts):
            raise ConfigError("ppo.select: 'gold' judges answers with the proving ground's judges, so it needs "
                              "ppo.prompts = 'proving-ground' and no ppo.eval_prompts file; use 'reward'")
        if p.minibatch % self.train.micro_batch:
            raise ConfigError(f"ppo.minibatch: {p.minibatch} is not a multiple of train.micro_batch "
                              f"{self.train.micro_batch}")
        if self.train.tp > 1:
            raise ConfigError("train.tp: PPO shards its policy and value model with FSDP only (keep train.tp=1); "
                              "the value model's scalar head has no tensor-parallel plan")


def load_ppo_config(path=None, overrides=None) -> PPOConfig:
    return load_config(path, overrides, cls=PPOConfig)


def default_beta(n_params: int) -> float:
    return 0.01 if n_params <= 13.5e9 else 0.005


class ValueModel(RewardModel):
    """PPO's critic: a reward model read at every position, plus a bias. The reward model's scores are
    fixed only up to an offset (its loss sees differences), so before training the head is rescaled to
    give the returns' scale (whitened: mean 0, spread 1) on the first rollouts."""

    kind = "value"
    fsdp_forward_methods = ("token_scores",)  # called instead of forward: FSDP must gather the weights for it

    def __init__(self, args):
        super().__init__(args)
        # shape [1], not a scalar: FSDP shards parameters along their first dimension
        self.value_bias = nn.Parameter(torch.zeros(1, device=self.reward_head.weight.device))

    @classmethod
    def from_reward_model(cls, rm: RewardModel) -> "ValueModel":
        with torch.device("meta"):
            vm = cls(rm.args)
        sd = {k: v.detach().clone() for k, v in rm.state_dict().items()}
        sd["value_bias"] = torch.zeros(1, device=rm.reward_head.weight.device)
        vm.load_state_dict(sd, assign=True)
        return vm

    def token_scores(self, tokens, mask=None):
        return super().token_scores(tokens, mask) + self.value_bias

    @torch.no_grad()
    def rescale(self, values: torch.Tensor) -> None:
        """Make `values` (this model's outputs) come out with mean 0 and standard deviation 1. In place, by
        Python numbers, so it works the same on FSDP-sharded weights."""
        mean, std = values.mean().item(), values.std().clamp(min=1e-3).item()
        self.reward_head.weight.div_(std)
        self.value_bias.sub_(mean).div_(std)


class ActorCritic(nn.Module):
    """The two trained models as one module: one optimizer, one clipping, one checkpoint."""

    def __init__(self, policy: nn.Module, value: RewardModel):
        super().__init__()
        self.policy, self.value = policy, value

    def set_requires_gradient_sync(self, sync: bool) -> None:
        """FSDP2's switch, passed to both sharded models: reduce-scatter gradients once per optimizer step."""
        for m in (self.policy, self.value):
            if hasattr(m, "set_requires_gradient_sync"):
                m.set_requires_gradient_sync(sync)


class Rollouts:
    """The newest iteration's experience as a loop Dataset: sample g of the run is row g - base of the
    buffer, which `refill` replaces at the start of every iteration."""

    def __init__(self, batch: dict | None = None, base: int = 0):
        self.batch, self.base = batch or {}, base

    def refill(self, batch: dict, base: int) -> None:
        self.batch, self.base = batch, base

    def fetch(self, indices) -> dict:
        idx = torch.tensor([g - self.base for g in indices])
        return {k: v[idx] for k, v in self.batch.items()}

    def state_dict(self) -> dict:
        return {"kind": "ppo-rollouts"}


class PPOObjective:
    def __init__(self, clip: float, value_clip: float, vf_coef: float, temperature: float = 1.0):
        self.clip, self.value_clip, self.vf_coef, self.temperature = clip, value_clip, vf_coef, temperature

    def count_targets(self, batch: dict) -> int:
        return int(batch["rmask"].sum())

    def __call__(self, model: ActorCritic, batch: dict):
        inp, mask, rmask = batch["input"], batch["mask"], batch["rmask"]
        pos = batch_positions(mask)
        logits = model.policy(inp, positions=pos, mask=mask) / self.temperature  # the distribution sampled from
        logp = token_logprobs(logits, batch["target"])
        pl, stats = policy_loss(logp, batch["logp_old"], batch["adv"], rmask, self.clip)
        values = model.value.token_scores(inp, mask)
        vl = value_loss(values, batch["values_old"], batch["returns"], rmask, self.value_clip)
        n = rmask.float().sum().clamp(min=1)
        with torch.no_grad():
            ent = (entropy(logits) * rmask).sum() / n
        return pl + self.vf_coef * vl, {"policy_loss": pl.item() / n.item(), "value_loss": vl.item() / n.item(),
                                        "entropy": ent.item(), **stats}


@torch.no_grad()
def make_rollouts(ctx: RunContext, policy, ref, value, scorer: RewardScorer, tokenizer, prompts: list[Prompt],
                  p: PPOSection, beta: float, seeds: list[int], device, autocast=None) -> tuple[dict, dict]:
    """Sample, score and assemble one iteration's experience (everything PPO's update needs), over the global
    batch: each rank samples, scores and runs the models on its share of the prompts; the pieces are gathered
    before the statistics (whitening, KL, advantages) are taken."""
    was_training = policy.training
    policy.eval()
    prompt_ids = encode_prompts(tokenizer, prompts, policy.args.max_seq_len - p.max_new_tokens)
    t0 = time.perf_counter()
    outs = sample_shares(ctx, policy, prompt_ids, p.max_new_tokens, p.temperature, tokenizer.eos_id, seeds)
    rollout_s = time.perf_counter() - t0  # the gather of the full weights included: it is the price of a rollout
    responses = [o + [tokenizer.eos_id] if len(o) < p.max_new_tokens else o for o in outs]  # learn to stop
    texts = [tokenizer.decode([t for t in o if t != tokenizer.eos_id]) for o in outs]
    tokens, mask, resp = answer_batch(prompt_ids, responses)
    inp, target, imask, rmask = tokens[:, :-1], tokens[:, 1:], mask[:, :-1], resp[:, 1:]
    inp, target, imask, rmask = (x.to(device) for x in (inp, target, imask, rmask))
    n = len(prompts)
    # the same precision and weights as the training step, so the first ratio is exactly 1 and the KL starts at 0
    with (autocast() if autocast is not None else contextlib.nullcontext()):
        logp_old = rows_of_share(lambda r: sequence_logprobs(policy, inp[r], target[r], imask[r],
                                                             temperature=p.temperature), n)
        logp_ref = rows_of_share(lambda r: sequence_logprobs(ref, inp[r], target[r], imask[r],
                                                             temperature=p.temperature), n)
        values_old = rows_of_share(lambda r: sequence_values(value, inp[r], imask[r]), n)
    scores = score_shares(scorer, prompts, texts)
    combined = scores["combined"].to(device)
    truncated = torch.tensor([len(o) >= p.max_new_tokens for o in outs], device=device)
    centered = group_whiten(combined, p.group_size) if p.group_size > 1 else whiten(combined)
    score = centered - p.missing_eos_penalty * truncated.float()  # an unfinished answer is not a good one
    rewards = penalized_rewards(score, logp_old, logp_ref, rmask.float(), beta)
    adv, returns = gae(rewards, values_old * rmask, rmask, p.gamma, p.lam)
    adv = masked_whiten(adv, rmask)
    kl = (kl_per_token(logp_old, logp_ref) * rmask).sum(1)
    batch = {"input": inp, "target": target, "mask": imask, "rmask": rmask, "logp_old": logp_old,
             "values_old": values_old, "adv": adv, "returns": returns}
    stats = {"reward": combined.mean().item(), "reward_helpful": scores["helpful"].mean().item(),
             "kl": kl.mean().item(), "response_length": rmask.float().sum(1).mean().item(),
             "truncated": truncated.float().mean().item(),
             "rollout_tokens_per_s": sum(map(len, outs)) / max(rollout_s, 1e-9)}  # all ranks together
    if scores["safety"] is not None:
        stats["reward_safety"] = scores["safety"].mean().item()
    gold = gold_scores(prompts, texts)  # the judges' score of the same rollouts (None for prompts from a file)
    if gold is not None:
        stats["gold"] = gold.mean().item()
    policy.train(was_training)
    return batch, stats


@torch.no_grad()
def sequence_values(value, inp, mask, chunk: int = 16) -> torch.Tensor:
    return torch.cat([value.token_scores(inp[i:i + chunk], mask[i:i + chunk]) for i in range(0, len(inp), chunk)])


def frozen(model, dtype=None):
    """Evaluation mode, no gradients (it never enters autograd), optionally cast."""
    model = model.eval().requires_grad_(False)
    return model.to(dtype) if dtype is not None else model


def heldout_prompts(p: PPOSection, train_prompts: list[Prompt]) -> list[Prompt]:
    """The prompts of the held-out evaluations. Choosing by reward: the test split (or ppo.eval_prompts).
    Choosing by gold: validation dialogs of train-split items, none of them a rollout prompt, so the test
    split, on which the report card measures the result, plays no part in choosing it."""
    if p.select != "gold":
        return load_prompts(p.eval_prompts or p.prompts, "test", n=p.eval_n, seed=p.seed + 1)[:p.eval_n]
    seen = {repr(x.messages) for x in train_prompts}
    return [x for x in load_prompts(p.prompts, "train", n=2 * p.eval_n, seed=p.seed + 1)
            if repr(x.messages) not in seen][:p.eval_n]


def ppo_body(cfg: PPOConfig, ctx: RunContext, scorer=None) -> dict:
    """PPO on the shared loop: each iteration's rollouts refill the loop's data before its first minibatch
    step, and its statistics, held-out evaluation, early stopping and checkpoint follow its last one."""
    from camelid.checkpoint import load_model, save_model

    p, t, run_dir, device = cfg.ppo, cfg.train, ctx.run_dir, ctx.device
    if not p.reward_helpful and scorer is None:
        raise ConfigError("ppo.reward_helpful: pass --reward-helpful RM_CKPT (and --reward-safety RM_CKPT)")
    torch.manual_seed(t.seed)
    policy, tok = ctx.load_start_model(cfg.model.init_from)
    # The reference runs in the policy's precision (a bf16 reference would show a KL before any update);
    # the reward models only score, so bf16 is fine where it is fast.
    ref = frozen(load_model(cfg.model.init_from, device=device, dtype=torch.float32))
    rm_dtype = torch.bfloat16 if device.type == "cuda" else None
    if scorer is None:
        helpful = load_model(p.reward_helpful, device=device, dtype=torch.float32)
        safety = load_model(p.reward_safety, device=device, dtype=torch.float32) if p.reward_safety else None
        for name, path, m in (("ppo.reward_helpful", p.reward_helpful, helpful),
                              ("ppo.reward_safety", p.reward_safety, safety)):
            if m is not None and not isinstance(m, RewardModel):
                raise ConfigError(f"{name}: {path} is a language model, not a reward model")
        value = ValueModel.from_reward_model(helpful)  # the critic starts as the helpfulness RM
        scorer = RewardScorer(frozen(helpful, rm_dtype), frozen(safety, rm_dtype) if safety else None, tok)
    else:
        value = ValueModel.from_reward_model(RewardModel.from_lm(policy))
    value.train().requires_grad_(True)
    # Under torchrun the two trained models are sharded (FSDP); the frozen reference and reward models stay
    # whole on every rank (they only score this rank's share of each batch).
    policy, value = ctx.parallelize(policy), ctx.parallelize(value)
    per_step = t.micro_batch * ctx.dist.dp_world
    if p.minibatch % per_step:
        raise ConfigError(f"ppo.minibatch: {p.minibatch} is not a multiple of train.micro_batch x ranks = {per_step}")
    beta = p.beta if p.beta >= 0 else default_beta(policy.args.num_params())
    # prompts drawn with their own seed offset, apart from the ones the reward models were trained on
    train_prompts = load_prompts(p.prompts, "train", n=max(p.rollout_batch * 8, 512), seed=p.seed + 17)
    eval_prompts = heldout_prompts(p, train_prompts)

    model = ActorCritic(policy, value)
    # One AdamW for both; the critic learns value_lr / lr times faster (it starts far from the returns).
    from camelid.train.optim import param_groups
    value_scale = (p.value_lr / t.lr) if p.value_lr else 10.0
    groups = param_groups(policy, t.weight_decay) + \
        [dict(g, lr_scale=value_scale) for g in param_groups(value, t.weight_decay)]
    optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps,
                                  **({"fused": True} if device.type == "cuda" else {"foreach": True}))
    steps_per_iter = p.rollout_batch // p.minibatch
    accum = p.minibatch // per_step
    data = Rollouts()
    trainer = Trainer(model=model, objective=PPOObjective(p.clip, p.value_clip, p.vf_coef, p.temperature),
                      data=data, cfg=cfg, run_dir=run_dir, total_steps=p.iterations * steps_per_iter,
                      accum=accum, dist_info=ctx.dist, stage="ppo", model_args=policy.args, optimizer=optimizer,
                      extra_state={"model_args": policy.args.to_dict(), "tokenizer": str(tok.model_path)},
                      progress_keys=("reward", "kl", "clip_fraction"))
    state = {"best": -math.inf, "best_iteration": -1, "bad_evals": 0, "stopped_early": False}
    if ctx.resume and trainer.resume():
        state.update(trainer.resumed_state.get("ppo_state", {}))
    trainer.stop_requested = state["stopped_early"]
    trainer.extra_state["ppo_state"] = state  # every checkpoint carries the early-stopping state
    log = MetricsLog(run_dir, resume_step=trainer.step if trainer.step else None, tensorboard=cfg.log.tensorboard,
                     enabled=ctx.is_main)
    ctx.say(f"ppo: {policy.args.num_params() / 1e6:.2f}M policy, beta {beta}, {p.iterations} iterations of "
            f"{p.rollout_batch} rollouts, {steps_per_iter} minibatches of {p.minibatch}, lr {t.lr:g} constant "
            f"(critic {t.lr * value_scale:g})")
    best_dir = run_dir / "best_policy"

    def rollouts(it: int):
        g = torch.Generator().manual_seed(p.seed * 100_003 + it)
        pick = torch.randperm(len(train_prompts), generator=g)[:p.rollout_batch // p.group_size].tolist()
        pick = [i for i in pick for _ in range(p.group_size)]  # a prompt's group_size rollouts side by side
        return make_rollouts(ctx, policy, ref, value, scorer, tok, [train_prompts[i] for i in pick], p, beta,
                             seeds=sample_seeds(p.seed, it, len(pick)), device=device, autocast=trainer.autocast)

    def heldout(model) -> dict:
        return heldout_shares(ctx, model, ref, scorer, tok, eval_prompts, p.max_new_tokens, device)

    def save_best() -> None:
        best = ctx.gathered(policy)  # a collective; rank 0 writes
        if ctx.is_main:
            save_model(best, best_dir, tokenizer_path=tok.model_path)

    def evaluate(iteration: int) -> None:
        # every rank computes the same numbers (gathered in one order), so all ranks stop at the same iteration
        ev = heldout(policy)
        log.write({"step": trainer.step, "split": "val", "iteration": iteration, **ev})
        if ev[p.select] > state["best"] + p.min_delta:
            state.update(best=ev[p.select], best_iteration=iteration, bad_evals=0)
            save_best()
            return
        state["bad_evals"] += 1
        if p.patience and state["bad_evals"] >= p.patience:
            state["stopped_early"] = trainer.stop_requested = True
            ctx.say(f"\nearly stop at iteration {iteration}: held-out {p.select} has not improved for {p.patience} "
                    f"evaluations (best {state['best']:.3f} at iteration {state['best_iteration']})")

    iteration: dict = {}  # the current iteration's rollout statistics and minibatch rows

    def before_step() -> None:
        if trainer.step % steps_per_iter == 0:
            batch, stats = rollouts(trainer.step // steps_per_iter)
            data.refill(batch, base=trainer.step * trainer.samples_per_step)
            iteration.update(stats=stats, rows=[])

    def after_step(row: dict) -> None:
        iteration["rows"].append(row)
        if trainer.step % steps_per_iter:
            return
        it = trainer.step // steps_per_iter
        keys = ("loss", "policy_loss", "value_loss", "entropy", "clip_fraction", "ratio", "grad_norm")
        good = [r for r in iteration["rows"] if not r.get("skipped")] or iteration["rows"]
        row.update({"iteration": it, **iteration["stats"],
                    **{k: sum(r[k] for r in good) / len(good) for k in keys if k in good[0]}})
        if p.eval_every and it % p.eval_every == 0:
            evaluate(it)
        if p.save_every and it % p.save_every == 0:
            trainer.save()

    t_start = time.perf_counter()
    if trainer.step == 0:
        batch, _ = rollouts(0)  # put the critic on the returns' scale before it is trained
        value.rescale(batch["values_old"][batch["rmask"]])
        if p.eval_every:
            ev = heldout(policy)
            log.write({"step": 0, "split": "val", "iteration": 0, **ev})
            state.update(best=ev[p.select], best_iteration=0)
            save_best()
    trainer.fit(log=log, before_step=before_step, on_step=after_step, log_every=steps_per_iter)
    if trainer.stop_requested:  # fit() saves at its last step; an early stop ends before it
        trainer.save()
    if ctx.is_main:  # proxy and gold reward against KL, one point per iteration of the whole run (resumes included)
        plot_ppo_gold(read_metrics(run_dir), run_dir / "gold_vs_kl.png")
    # with held-out evaluations, the result is the best policy they saw (whole, on every rank); without, the last
    barrier()  # rank 0 has written best_dir
    final = load_model(best_dir, device=device, dtype=torch.float32) if p.eval_every else policy
    end = heldout(final)
    final = final if p.eval_every else ctx.gathered(policy)
    summary = {"iterations": trainer.step // steps_per_iter, "seconds": time.perf_counter() - t_start, "beta": beta,
               "best_iteration": state["best_iteration"], "stopped_early": state["stopped_early"],
               "selected_by": p.select, "heldout_reward": end["reward"], "heldout_kl": end["kl"],
               "heldout_gold": end.get("gold")}
    return ctx.finish(final, tok.model_path, summary)


PPO = Stage("ppo", PPOConfig, ppo_body, needs="which policy to train? pass --policy CKPT", distributed=True)


def ppo(cfg: PPOConfig, run_dir: str | Path, resume: bool = False, scorer=None) -> dict:
    """Run (or resume) PPO; returns the summary written to RUN_DIR/summary.json.

    `scorer` replaces the reward models with any object whose `score(prompts, answers)` returns
    {"combined": tensor, "helpful": tensor, "safety": tensor | None} (tests use a known reward)."""
    return run_stage(PPO, cfg, run_dir, resume=resume, scorer=scorer)
