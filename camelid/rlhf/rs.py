"""Rejection-sampling fine-tuning (Llama-2 §3.2.3): `camelid rs --policy CKPT --reward-helpful RM ...`

Each iteration samples K answers per prompt from the newest policy with the batched engine, scores
them with the combined reward (eq. 4), keeps the best of each prompt, pools the best answers of all
iterations so far (a prompt keeps its best answer ever seen), and fine-tunes the policy on the pool with
the SFT objective (the `camelid sft` stage itself, on a JSONL of the pool). Each iteration lives in
RUN_DIR/iter_N/ (pool.jsonl, the SFT run, model/), so an interrupted run resumes at the first
unfinished iteration.

Under torchrun each rank samples and scores its share of the K x prompts samples (each sample seeded by
its global index, so the samples do not depend on the number of ranks; camelid/rlhf/rollout.py), every
rank holds the gathered pool, rank 0 writes it, and the fine-tuning is the SFT stage sharded with FSDP.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from camelid.config import CheckpointConfig, ConfigError, LogConfig, ModelConfig, StageConfig, TrainConfig, load_config
from camelid.fsutil import atomic_write_json, atomic_write_text
from camelid.parallel.collectives import barrier
from camelid.rlhf.gold import iteration_gold, plot_best_of_n
from camelid.rlhf.rewards import Prompt, RewardScorer, load_prompts, preference_scale
from camelid.rlhf.rollout import (answer_logprobs, encode_prompts, heldout_shares, rows_of_share, sample_seeds,
                                   sample_shares, score_shares)
from camelid.train.sft import SFTConfig, SFTSection, sft, sft_train_defaults
from camelid.train.stage import RunContext, Stage, run_stage


@dataclass
class RSSection:
    reward_helpful: str = ""
    reward_safety: str = ""
    prompts: str = "proving-ground"
    eval_prompts: str = ""
    iterations: int = 3
    prompts_per_iteration: int = 512
    k: int = 10  # samples per prompt (Llama-2: 10-100)
    temperature: float = 1.2  # Llama-2: about 1.2-1.3 for K of 10-100
    max_new_tokens: int = 64
    # keep a best answer only if its combined reward reaches this (None: always); the reward is a calibrated logit,
    # 0 meaning even odds that the answer is good
    min_reward: float | None = None
    min_gain: float | None = None  # keep it only if it beats its prompt's mean reward by more (None: always)
    # choose by reward + logprob_weight * log pi(answer), pi the sampling policy: regularized best-of-K (Jinnai et
    # al. 2024), which trusts the reward model only where it outweighs what the policy already believes. The reward
    # here is the helpfulness RM's preference logit (its raw score: a gap d is odds e^d of preferring one answer),
    # so that 1 weighs a nat of log pi against a nat of preference, whatever the calibration
    logprob_weight: float = 0.0
    epochs: float = 1.0  # fine-tuning epochs over the pool, per iteration
    batch_size: int = 64  # packed sequences per optimizer step
    eval_n: int = 64
    seed: int = 0


@dataclass
class RSConfig(StageConfig):
    """Rejection sampling; the fine-tuning on the pool uses Llama-2's SFT settings (cosine from 2e-5, weight
    decay 0.1, batch 64), and this stage's train, log and checkpoint sections are handed to it whole."""
    train: TrainConfig = field(default_factory=sft_train_defaults)
    log: LogConfig = field(default_factory=lambda: LogConfig(every=5))
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=0, keep=1))
    rs: RSSection = field(default_factory=RSSection)

    def check(self) -> None:
        if self.rs.k < 1:
            raise ConfigError("rs.k: must be >= 1")
        if self.rs.batch_size % self.train.micro_batch:
            raise ConfigError(f"rs.batch_size: {self.rs.batch_size} is not a multiple of train.micro_batch "
                              f"{self.train.micro_batch}")


def load_rs_config(path=None, overrides=None) -> RSConfig:
    return load_config(path, overrides, cls=RSConfig)


def best_of_k(scores: torch.Tensor) -> torch.Tensor:
    """scores [N, K] -> index of the best sample of each prompt [N] (the first, on ties)."""
    return scores.argmax(dim=1)


def selection_scores(reward: torch.Tensor, cut: torch.Tensor, logp: torch.Tensor | None = None,
                     logprob_weight: float = 0.0, min_reward: float | None = None) -> torch.Tensor:
    """What best-of-K maximises, [N, K]: the reward, plus logprob_weight * log pi(answer) when given (regularized
    best-of-N: a sample the policy itself finds unlikely needs a larger reward to win); -inf for answers cut off
    at max_new_tokens and, with `min_reward`, for answers whose reward (not counting log pi) is below it."""
    out = reward.masked_fill(cut, float("-inf"))
    if min_reward is not None:
        out = out.masked_fill(reward < min_reward, float("-inf"))
    return out if logp is None else out + logprob_weight * logp


def update_pool(pool: dict, prompts: list[Prompt], answers: list[list[str]], scores: torch.Tensor,
                iteration: int, min_gain: float | None = None) -> int:
    """Keep, for every prompt, the best answer over all iterations (-inf scores never enter: answers cut off at
    max_new_tokens, or below rs.min_reward; see `selection_scores`). With `min_gain`, a best answer enters only if
    it beats the mean of its prompt's finished answers by more than that: a comparison within the prompt, the one
    thing a reward model that ranks prompts by its own biases still gets right (a threshold across prompts kept 83
    of 768 answers, most of them the parity answer the reward model favours whatever the number, and fine-tuning on
    them took parity from 80% to 31%). With min_gain 0, prompts whose answers all scored alike (K copies of one
    answer) add nothing. Returns how many prompts improved."""
    if min_gain is not None:
        finite = scores.isfinite()
        mean = scores.where(finite, 0.0).sum(1) / finite.sum(1).clamp(min=1)
        scores = scores.masked_fill(scores <= (mean + min_gain)[:, None], float("-inf"))
    improved = 0
    for p, cands, s, b in zip(prompts, answers, scores, best_of_k(scores).tolist()):
        key = json.dumps(p.messages, sort_keys=True)
        score = float(s[b])
        if score == float("-inf"):
            continue
        if key not in pool or score > pool[key]["score"]:
            pool[key] = {"messages": p.messages, "answer": cands[b], "score": score, "iteration": iteration}
            improved += 1
    return improved


def sample_k(ctx: RunContext, policy, tokenizer, prompts: list[Prompt], k: int, temperature: float,
             max_new_tokens: int, seeds: list[int], logprobs: bool = False):
    """k answers per prompt ([N][k] strings), [N][k] flags of answers cut off at max_new_tokens and, with
    `logprobs`, the policy's log-probability of each answer with its EOS ([N, k]; else None); sample j of
    prompt i draws with seeds[i * k + j]. Each rank samples (and scores) its share; every rank gets them all."""
    ids = encode_prompts(tokenizer, prompts, policy.args.max_seq_len - max_new_tokens)
    flat_ids = [i for i in ids for _ in range(k)]
    outs = sample_shares(ctx, policy, flat_ids, max_new_tokens, temperature, tokenizer.eos_id, seeds)
    texts = [tokenizer.decode(o).strip() for o in outs]
    cut = [len(o) >= max_new_tokens for o in outs]
    logp = None
    if logprobs:
        answers = [o + [tokenizer.eos_id] for o in outs]
        with ctx.full_copy(policy) as full:
            logp = rows_of_share(lambda r: answer_logprobs(full, flat_ids[r], answers[r], ctx.device),
                                 len(outs)).view(len(prompts), k).cpu()
    return ([texts[i * k:(i + 1) * k] for i in range(len(prompts))],
            [cut[i * k:(i + 1) * k] for i in range(len(prompts))], logp)


def load_scorer(helpful_path: str, safety_path: str, tokenizer, device) -> RewardScorer:
    from camelid.checkpoint import load_model
    from camelid.reward_model import RewardModel

    if not helpful_path:
        raise ConfigError("reward_helpful: pass --reward-helpful RM_CKPT (and --reward-safety RM_CKPT)")
    models = []
    for path in (helpful_path, safety_path):
        if not path:
            models.append(None)
            continue
        m = load_model(path, device=device, dtype=torch.float32)
        if not isinstance(m, RewardModel):
            raise ConfigError(f"{path}: a language model, not a reward model")
        models.append(m)
    return RewardScorer(models[0], models[1], tokenizer)


def rs_body(cfg: RSConfig, ctx: RunContext, scorer=None) -> dict:
    from camelid.checkpoint import load_model
    from camelid.train.metrics import MetricsLog

    r, run_dir, device = cfg.rs, ctx.run_dir, ctx.device
    policy_path = Path(cfg.model.init_from)
    policy, tok = ctx.load_start_model(policy_path)
    scorer = scorer or load_scorer(r.reward_helpful, r.reward_safety, tok, device)
    eval_prompts = load_prompts(r.eval_prompts or r.prompts, "test", n=r.eval_n, seed=r.seed + 1)[:r.eval_n]
    finished = 0
    while (run_dir / f"iter_{finished + 1}" / "iteration.json").exists():
        finished += 1
    log = MetricsLog(run_dir, resume_step=finished, enabled=ctx.is_main)  # rows of unfinished iterations are redone
    pool: dict = {}
    history = []
    t0 = time.perf_counter()

    def heldout(model) -> float:
        return heldout_shares(ctx, model, None, scorer, tok, eval_prompts, r.max_new_tokens, device)["reward"]

    start = heldout(policy)
    for it in range(1, r.iterations + 1):
        it_dir = run_dir / f"iter_{it}"
        if it <= finished:
            pool = {json.dumps(row["messages"], sort_keys=True): row
                    for row in map(json.loads, (it_dir / "pool.jsonl").read_text().splitlines())}
            if pool:  # an empty pool fine-tuned nothing: the policy stayed as it was
                policy_path = it_dir / "sft" / "model"
                policy = load_model(policy_path, device=device, dtype=torch.float32)
            history.append(json.loads((it_dir / "iteration.json").read_text()))
            continue
        prompts = load_prompts(r.prompts, "train", n=r.prompts_per_iteration, seed=r.seed * 1000 + it)
        ts = time.perf_counter()
        answers, cut, logp = sample_k(ctx, policy, tok, prompts, r.k, r.temperature, r.max_new_tokens,
                                      sample_seeds(r.seed, it, len(prompts) * r.k), bool(r.logprob_weight))
        flat = score_shares(scorer, [p for p in prompts for _ in range(r.k)], [a for cands in answers for a in cands])
        raw = flat["combined"].view(len(prompts), r.k)
        # the weight is in preference units (RewardScorer.preference_scale); the scores stay calibrated logits
        scores = selection_scores(raw, torch.tensor(cut), logp, r.logprob_weight * preference_scale(scorer),
                                  r.min_reward)
        improved = update_pool(pool, prompts, answers, scores, it, min_gain=r.min_gain)  # same pool on every rank
        if ctx.is_main:
            write_pool(it_dir, pool)
        barrier()  # every rank's SFT reads sft.jsonl
        sampling_s = time.perf_counter() - ts
        # Fine-tune the newest policy on the pool with the SFT stage itself.
        if pool:
            sft(pool_sft_config(cfg, policy_path, it_dir / "sft.jsonl", it), it_dir / "sft", resume=True, quiet=True)
            policy_path = it_dir / "sft" / "model"
            policy = load_model(policy_path, device=device, dtype=torch.float32)
        elif all(map(all, cut)):
            ctx.say(f"rs iteration {it}: every sample was cut off at {r.max_new_tokens} tokens; nothing to fine-tune "
                    f"on (raise rs.max_new_tokens); the policy is unchanged")
        else:
            ctx.say(f"rs iteration {it}: no prompt's best answer passed rs.min_reward / rs.min_gain; nothing to "
                    f"fine-tune on (lower them); the policy is unchanged")
        finite = scores.max(1).values.isfinite()
        row = {"iteration": it, "sample_mean": raw.mean().item(), "truncated": float(torch.tensor(cut).float().mean()),
               "best_mean": scores.max(1).values[finite].mean().item() if finite.any() else float("nan"),
               "pool_size": len(pool),
               "pool_mean": sum(v["score"] for v in pool.values()) / len(pool) if pool else float("nan"),
               "improved": improved, "heldout_reward": heldout(policy),
               "sampling_seconds": sampling_s}
        # Gold-reward curves (Gao et al. 2022; Llama-2 Figure 7): the judges score the same samples.
        row.update(iteration_gold(prompts, answers, scores))
        if ctx.is_main:
            plot_best_of_n(row["best_of_n"], it_dir / "best_of_n.png", title=f"rs iteration {it}")
        log.write({"step": it, **row})
        if ctx.is_main:
            atomic_write_json(it_dir / "iteration.json", row)  # written last: marks the iteration finished
        history.append(row)
        ctx.say(f"rs iteration {it}: best-of-{r.k} reward {row['best_mean']:.3f} (samples {row['sample_mean']:.3f}), "
                f"pool {len(pool)}, held-out reward {row['heldout_reward']:.3f}")
    log.close()
    summary = {"iterations": len(history), "heldout_reward_before": start,
               "heldout_reward_after": history[-1]["heldout_reward"] if history else start,
               "history": history, "seconds": time.perf_counter() - t0}
    return ctx.finish(policy, tok.model_path, summary)


def write_pool(it_dir: Path, pool: dict) -> None:
    """The pool (best answer of every prompt so far) and the same as SFT dialogs, in the iteration's folder."""
    it_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(it_dir / "pool.jsonl", "".join(json.dumps(v) + "\n" for v in pool.values()))
    atomic_write_text(it_dir / "sft.jsonl", "".join(json.dumps({"messages": v["messages"] + [
        {"role": "assistant", "content": v["answer"]}]}) + "\n" for v in pool.values()))


def pool_sft_config(cfg: RSConfig, policy_path: Path, pool_file: Path, iteration: int) -> SFTConfig:
    """The SFT stage that fine-tunes the newest policy on the pool: this stage's train, log and checkpoint
    sections, SFT's own defaults for the rest."""
    r = cfg.rs
    return SFTConfig(model=ModelConfig(init_from=str(policy_path)), train=replace(cfg.train), log=replace(cfg.log),
                     checkpoint=replace(cfg.checkpoint),
                     sft=SFTSection(data=str(pool_file), epochs=r.epochs, batch_size=r.batch_size, eval_n=0,
                                    seed=r.seed + iteration))


RS = Stage("rs", RSConfig, rs_body, needs="which policy to improve? pass --policy CKPT", distributed=True)


def rejection_sampling(cfg: RSConfig, run_dir: str | Path, scorer=None) -> dict:
    """Run or continue rejection sampling (finished iterations are kept; a rerun continues after them).
    `scorer` replaces the reward models (tests use a known reward)."""
    return run_stage(RS, cfg, run_dir, resume=True, scorer=scorer)
