"""Reward models (Llama-2 §3.2.2) on the shared training loop: `camelid rm`.

`camelid rm --model SFT_CKPT --data FILE_OR_NAME --kind helpful|safety --margin none|small|large`

* The model: the SFT checkpoint with its next-token head replaced by a scalar head (RewardModel).
* The loss: -log sigmoid(r_chosen - r_rejected - m(rating)), summed over pairs and divided by the pairs
  of the whole global batch; margins from Llama-2 Table 27 (`--margin`).
* Defaults (RMConfig below): one epoch, peak LR 1e-5 with cosine to 10%, warmup 3% of the steps (at
  least 5), 512 pairs per batch through accumulation.
* Data: JSONL pairs (camelid.data.preferences) or `proving-ground`: pairs of answers sampled from the
  SFT model (and the base model, with --base) rated by the proving ground's judges.

The run directory gets config.toml, metrics.jsonl, checkpoints/, model/ (the reward model, with its
calibration), rm_report.json (held-out accuracy per rating, Llama-2 Table 8 layout) and scores.png.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from camelid.config import CheckpointConfig, ConfigError, LogConfig, StageConfig, TrainConfig, load_config
from camelid.data.preferences import PreferencePair, load_pairs, pairs_hash, rating_counts, save_pairs
from camelid.data.padding import pad_right
from camelid.errors import CamelidError
from camelid.fsutil import atomic_write_text
from camelid.plot import save_figure
from camelid.reward_model import MARGINS, RATINGS, RewardModel, ranking_loss
from camelid.train.loop import Trainer
from camelid.train.rm_checks import accuracy_by_rating, on_policy_report
from camelid.train.rm_pairs import balanced_pairs, proving_ground_pairs
from camelid.train.stage import RunContext, Stage, flag_overrides, run_stage, stage_config

PROVING_GROUND = "proving-ground"


@dataclass
class RMSection:
    data: str = PROVING_GROUND  # JSONL pairs or "proving-ground"
    val_data: str = ""  # held-out JSONL pairs; default: the proving ground's test split, or 5% of data
    kind: str = "helpful"  # helpful | safety
    margin: str = "none"  # none | small | large (Llama-2 Table 27)
    epochs: float = 1.0
    batch_pairs: int = 512
    warmup_fraction: float = 0.03  # of the steps, at least min_warmup
    min_warmup: int = 5
    max_len: int = 0  # tokens per sequence; 0: the model's context
    seed: int = 0
    base_model: str = ""  # proving ground: also sample answers from this (pre-trained) model
    prompts: int = 1500  # proving ground: training prompts
    val_prompts: int = 300  # proving ground: held-out prompts
    samples: int = 2  # proving ground: answers sampled per prompt per model
    temperature: float = 1.0
    temperatures: list = field(default_factory=list)  # sample s at temperatures[s % len]; empty: [temperature]
    reference: bool = True  # proving ground: the reference answer is a candidate too
    policy: str = ""  # proving ground: sample the answers from this policy (default: the model trained from)
    per_task: int = 0  # proving ground: > 0 draws prompts task by task until each has this many pairs
    max_prompts_per_task: int = 0  # with per_task: at most this many prompts of a task (0: 2 x per_task)
    val_share: float = 0.25  # with per_task: held-out pairs (and prompts) of a task, as a share of per_task
    # > 0: plus this weight x the language-modelling loss on the chosen answers (per answer token, the LM head kept
    # while training), which keeps the SFT model's knowledge in the reward model (Yang et al. 2024, GRM)
    lm_weight: float = 0.0
    previous: str = ""  # JSONL pairs of earlier rounds, trained on with the new ones (Llama-2 keeps all)
    onpolicy_prompts: int = 240  # held-out prompts answered 4 times by the policy: accuracy_on_policy, shortcuts
    skip_bad: bool = False


@dataclass
class RMConfig(StageConfig):
    """A reward model; the defaults are Llama-2's (§3.2.2): one epoch, peak LR 1e-5 (5e-6 for 70B) cosine to
    10%, warmup 3% of the steps (at least 5), 512 pairs per batch by accumulation, AdamW 0.9/0.95, weight
    decay 0.1, clipping 1.0."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-5, min_lr_ratio=0.1, weight_decay=0.1,
                                                                   micro_batch=8))
    log: LogConfig = field(default_factory=lambda: LogConfig(every=5))
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=0, keep=1))
    rm: RMSection = field(default_factory=RMSection)

    def check(self) -> None:
        r = self.rm
        if r.kind not in ("helpful", "safety"):
            raise ConfigError(f"rm.kind: must be helpful or safety, got {r.kind!r}")
        if r.margin not in MARGINS:
            raise ConfigError(f"rm.margin: must be none, small or large, got {r.margin!r}")
        if r.lm_weight < 0:
            raise ConfigError(f"rm.lm_weight: must be >= 0, got {r.lm_weight}")
        if not 0 < r.val_share <= 1:
            raise ConfigError(f"rm.val_share: must be in (0, 1], got {r.val_share}")
        if self.train.tp != 1:
            raise ConfigError("train.tp: reward models train with FSDP only (their scalar head has no "
                              "tensor-parallel plan); set train.tp=1")
        if r.batch_pairs % self.train.micro_batch:
            raise ConfigError(f"rm.batch_pairs: {r.batch_pairs} is not a multiple of train.micro_batch "
                              f"{self.train.micro_batch}")


def load_rm_config(path=None, overrides=None) -> RMConfig:
    return load_config(path, overrides, cls=RMConfig)


# ------------------------------------------------------------------------------------------------------ data

def encode_pair(tokenizer, pair: PreferencePair, max_len: int) -> tuple[list[int], list[int]]:
    from camelid.chat_format import encode_reply

    return (encode_reply(tokenizer, pair.prompt, pair.chosen, max_len),
            encode_reply(tokenizer, pair.prompt, pair.rejected, max_len))


class PairData:
    """Encoded pairs as a loop Dataset: sample g is pair order_e[g % N] of epoch e = g // N.

    Each epoch shuffles the prompts and keeps every prompt's pairs next to each other (InstructGPT trains all
    comparisons of a prompt in one batch element), and a batch runs each distinct (prompt, answer) sequence once:
    the answers of one prompt make up to K(K-1)/2 pairs from K sequences, and one prompt's sequences have about
    one length, so a batch pads little. Pairs stay the unit of the loss and of the step count. With `lm_targets`
    a batch also carries the chosen answers' tokens for the LM regularizer (rm.lm_weight)."""

    def __init__(self, pairs: list[PreferencePair], tokenizer, max_len: int, margin: str, seed: int = 0,
                 lm_targets: bool = False):
        from camelid.chat_format import encode_reply_with_mask

        self.pairs = pairs
        seq_ids: dict[tuple[str, str], int] = {}
        self.sequences: list[list[int]] = []
        self.answer_masks: list[list[int]] | None = [] if lm_targets else None  # 1 on the answer's tokens and EOS
        group_ids: dict[str, int] = {}
        self.groups: list[list[int]] = []
        sides = []
        for i, p in enumerate(pairs):
            prompt = json.dumps(p.prompt, sort_keys=True)
            if prompt not in group_ids:
                group_ids[prompt] = len(self.groups)
                self.groups.append([])
            self.groups[group_ids[prompt]].append(i)
            for answer in (p.chosen, p.rejected):
                if (prompt, answer) not in seq_ids:
                    seq_ids[(prompt, answer)] = len(self.sequences)
                    ids, answer_mask = encode_reply_with_mask(tokenizer, p.prompt, answer, max_len)
                    self.sequences.append(ids)
                    if self.answer_masks is not None:
                        self.answer_masks.append(answer_mask)
            sides.append((seq_ids[(prompt, p.chosen)], seq_ids[(prompt, p.rejected)]))
        self.sides = torch.tensor(sides, dtype=torch.long).view(-1, 2)
        self.margins = torch.tensor([MARGINS[margin][p.rating] for p in pairs])
        self.rating_ids = torch.tensor([RATINGS.index(p.rating) for p in pairs])
        self.seed, self.margin, self.hash = seed, margin, pairs_hash(pairs)
        self._orders: dict[int, torch.Tensor] = {}

    def __len__(self):
        return len(self.pairs)

    def order(self, epoch: int) -> torch.Tensor:
        """This epoch's pair order: the prompts shuffled, each prompt's pairs together (in a shuffled order)."""
        if epoch not in self._orders:
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            order = []
            for group in torch.randperm(len(self.groups), generator=g).tolist():
                members = self.groups[group]
                order += [members[j] for j in torch.randperm(len(members), generator=g).tolist()]
            self._orders[epoch] = torch.tensor(order, dtype=torch.long)
        return self._orders[epoch]

    def batch(self, idx: list[int]) -> dict:
        """Pairs idx -> the distinct sequences among them, padded (`tokens`, `mask`), and for each pair the rows
        of its `chosen` and `rejected` answers, its `margin` and `rating`; with `lm_targets`, `lm_rows`, the rows
        chosen in at least one pair, with `lm_mask` [len(lm_rows), T] on their answer tokens."""
        sides = self.sides[idx]
        unique, rows = torch.unique(sides.flatten(), return_inverse=True)
        tokens, mask = pad_right([self.sequences[i] for i in unique.tolist()])
        rows = rows.view(-1, 2)
        out = {"tokens": tokens, "mask": mask, "chosen": rows[:, 0], "rejected": rows[:, 1],
               "margin": self.margins[idx], "rating": self.rating_ids[idx]}
        if self.answer_masks is not None:
            out["lm_rows"] = torch.unique(rows[:, 0])
            out["lm_mask"] = pad_right([self.answer_masks[i] for i in unique[out["lm_rows"]].tolist()],
                                       length=tokens.shape[1])[0].bool()
        return out

    def fetch(self, indices) -> dict:
        n = len(self)
        return self.batch([int(self.order(g // n)[g % n]) for g in indices])

    def state_dict(self) -> dict:
        return {"kind": "preference-pairs", "pairs": len(self), "hash": self.hash, "seed": self.seed,
                "margin": self.margin, "order": "grouped by prompt"}


class RankingObjective:
    """Llama-2's binary ranking loss with a margin; the loss is a sum over pairs. With `lm_weight` > 0, plus
    lm_weight x the mean next-token loss on the chosen answers' tokens, once per pair (so that the step's mean is
    ranking loss + lm_weight x LM loss): the model must be a RewardModel kept with its LM head."""

    def __init__(self, lm_weight: float = 0.0):
        self.lm_weight = lm_weight

    def count_targets(self, batch: dict) -> int:
        return int(batch["margin"].numel())

    def __call__(self, model, batch: dict):
        if self.lm_weight:
            scores, logits = model(batch["tokens"], mask=batch["mask"], lm_rows=batch["lm_rows"])
        else:
            scores = model(batch["tokens"], mask=batch["mask"])
        chosen, rejected = scores[batch["chosen"]], scores[batch["rejected"]]
        loss = ranking_loss(chosen, rejected, batch["margin"].to(scores.dtype))
        metrics = {"accuracy": (chosen > rejected).float().mean().item(),
                   "margin_gap": (chosen - rejected).mean().item()}
        if self.lm_weight:
            lm = answer_lm_loss(logits, batch["tokens"][batch["lm_rows"]], batch["lm_mask"])
            loss = loss + self.lm_weight * lm * batch["margin"].numel()
            metrics["lm_loss"] = lm.item()
        return loss, metrics


def answer_lm_loss(logits: torch.Tensor, tokens: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting each answer token (answer_mask) from the tokens before it."""
    targets = answer_mask[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), tokens[:, 1:].flatten(),
                                            reduction="none").view_as(targets)
    return (nll * targets).sum() / targets.sum().clamp(min=1)


# ---------------------------------------------------------------------------------------------- evaluation

def length_batches(seqs: list[list[int]], batch_size: int) -> list[list[int]]:
    """The indices of `seqs` as a reward model reads them: shortest first (ties in order), `batch_size` at a
    time, so that each batch, padded to its own longest, pads little."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def score_sequences(model: RewardModel, seqs: list[list[int]], batch_size: int) -> torch.Tensor:
    """[len(seqs)] raw scores (fp32, CPU) of encoded sequences, in the caller's order, read in `length_batches`."""
    device = next(model.parameters()).device
    scores = torch.zeros(len(seqs))
    for idx in length_batches(seqs, batch_size):
        tokens, mask = pad_right([seqs[i] for i in idx])
        scores[idx] = model(tokens.to(device), mask=mask.to(device)).float().cpu()
    return scores


def score_pairs(model, data: PairData, micro_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) scores of every pair: each distinct answer scored once (`score_sequences`)."""
    scores = score_sequences(model, data.sequences, micro_batch)
    return scores[data.sides[:, 0]], scores[data.sides[:, 1]]


def reward_fn(model, tokenizer, max_len: int, micro_batch: int):
    """(dialogs, answers) -> [n] rewards of `model`, shortest first in batches (the sequences cut as in training)."""
    from camelid.chat_format import encode_reply

    def score(dialogs: list[list[dict]], answers: list[str]) -> torch.Tensor:
        return score_sequences(model, [encode_reply(tokenizer, d, a, max_len) for d, a in zip(dialogs, answers)],
                               micro_batch)
    return score


def fit_calibration(scores: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> dict:
    """Platt scaling: scale, bias with sigmoid(scale * score + bias) ~ P(label = 1)."""
    if labels.min() == labels.max():
        return {"scale": 1.0, "bias": 0.0, "fitted_on": 0}
    a = torch.ones((), requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([a, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a * scores + b, labels.float())
        loss.backward()
        return loss

    opt.step(closure)
    return {"scale": a.item(), "bias": b.item(), "fitted_on": len(scores)}


def calibration_data(chosen, rejected, pairs, kind: str = "helpful") -> tuple[torch.Tensor, torch.Tensor] | None:
    """Each response's score with its judge label (score >= 0.5), where the pairs carry judge scores. The
    safety RM is calibrated on "is this answer safe" (the label the 0.15 threshold is about)."""
    keys = ("safe_chosen", "safe_rejected") if kind == "safety" else ("chosen", "rejected")
    xs, ys, seen = [], [], set()
    for c, r, p in zip(chosen.tolist(), rejected.tolist(), pairs):
        if keys[0] not in p.scores:
            continue
        for score, answer, judged in ((c, p.chosen, p.scores[keys[0]]), (r, p.rejected, p.scores[keys[1]])):
            key = (json.dumps(p.prompt, sort_keys=True), answer)
            if key not in seen:  # an answer appears in several pairs: count it once
                seen.add(key)
                xs.append(score)
                ys.append(judged >= 0.5)
    return (torch.tensor(xs), torch.tensor(ys)) if xs else None


def format_table(acc: dict, title: str = "") -> str:
    head = ["Significantly Better", "Better", "Slightly Better", "Negligibly Better / Unsure", "Avg"]
    vals = [acc.get(r) for r in RATINGS] + [acc.get("average")]
    cells = [("-" if v is None else f"{100 * v:.1f}") for v in vals]
    width = [max(len(h), len(c)) for h, c in zip(head, cells)]
    line = " | ".join(h.rjust(w) for h, w in zip(head, width))
    return (title + "\n" if title else "") + line + "\n" + " | ".join(c.rjust(w) for c, w in zip(cells, width))


def format_report(report: dict, title: str) -> str:
    """The held-out accuracy table, the one on the policy's own answers and the shortcut check, as printed."""
    out = [format_table(report["accuracy"], title)] if "accuracy" in report else []
    if report.get("accuracy_on_policy"):
        out.append(format_table(report["accuracy_on_policy"], "on the policy's own answers (accuracy_on_policy):"))
    if report.get("shortcuts"):
        out.append("within-prompt rank correlation of reward and judge: " + ", ".join(
            f"{t} {v['spearman']:+.2f}" for t, v in report["shortcuts"].items()))
    return "\n".join(out)


def plot_scores(chosen: torch.Tensor, rejected: torch.Tensor, out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    lo, hi = float(min(chosen.min(), rejected.min())), float(max(chosen.max(), rejected.max()))
    bins = torch.linspace(lo, hi + 1e-6, 41).tolist()
    ax.hist(chosen.tolist(), bins=bins, alpha=0.6, label="chosen", color="C2")
    ax.hist(rejected.tolist(), bins=bins, alpha=0.6, label="rejected", color="C3")
    ax.set_xlabel("reward score")
    ax.set_ylabel("responses")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, out)


# ----------------------------------------------------------------------------------------------------- stage

def pair_policy(cfg: RMConfig, lm):
    """The policy whose answers make proving-ground pairs and the on-policy check: rm.policy, or the language
    model the reward model starts from (RewardModel.from_lm copies its weights, so it stays unchanged)."""
    from camelid.checkpoint import load_model

    r = cfg.rm
    if not r.policy and isinstance(lm, RewardModel):
        raise ConfigError(f"rm.policy: {cfg.model.init_from} is a reward model, which cannot answer prompts; pass the "
                          f"policy whose answers make the pairs (--set rm.policy=CKPT)")
    return load_model(r.policy, dtype=torch.float32) if r.policy else lm


def pair_models(cfg: RMConfig, lm) -> list:
    """The models whose samples make proving-ground pairs: the policy first, then the base model when given."""
    from camelid.checkpoint import load_model

    base = cfg.rm.base_model
    return [pair_policy(cfg, lm)] + ([load_model(base, dtype=torch.float32)] if base else [])


def make_pairs(cfg: RMConfig, models: list, tokenizer, split: str) -> list[PreferencePair]:
    r = cfg.rm
    temps = list(r.temperatures) or [r.temperature]
    seed = r.seed if split == "train" else r.seed + 10_000
    if r.per_task:
        share = 1.0 if split == "train" else r.val_share
        per_task = max(8, int(r.per_task * share))
        cap = max(16, int((r.max_prompts_per_task or 2 * r.per_task) * share))
        return balanced_pairs(models, tokenizer, r.kind, split, per_task, cap, seed=seed, samples=r.samples,
                              temperatures=temps, reference=r.reference)
    n = r.prompts if split == "train" else r.val_prompts
    return proving_ground_pairs(models, tokenizer, r.kind, split, n, seed=seed, samples=r.samples,
                                temperatures=temps, reference=r.reference)


def get_pairs(cfg: RMConfig, run_dir: Path, tokenizer, lm) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held-out) pairs; proving-ground pairs are generated once and cached in the run directory.
    rm.previous adds the training pairs of earlier rounds."""
    r = cfg.rm
    previous = load_pairs(r.previous, r.skip_bad) if r.previous else []
    if r.data != PROVING_GROUND:
        pairs = load_pairs(r.data, r.skip_bad)
        if r.val_data:
            return previous + pairs, load_pairs(r.val_data, r.skip_bad)
        n_val = max(1, len(pairs) // 20)
        return previous + pairs[n_val:], pairs[:n_val]
    cache = {split: run_dir / f"pairs_{split}.jsonl" for split in ("train", "test")}
    key = hashlib.sha256(json.dumps([r.kind, r.prompts, r.val_prompts, r.samples, r.temperature, r.seed,
                                     r.base_model, cfg.model.init_from, r.temperatures, r.reference, r.policy,
                                     r.per_task, r.max_prompts_per_task]
                                    + ([r.val_share] if r.val_share != 0.25 else [])).encode()).hexdigest()[:16]
    key_file = run_dir / "pairs.key"
    if all(p.exists() for p in cache.values()) and key_file.exists() and key_file.read_text() == key:
        return previous + load_pairs(cache["train"]), load_pairs(cache["test"])
    t0 = time.perf_counter()
    models = pair_models(cfg, lm)
    train, test = (make_pairs(cfg, models, tokenizer, split) for split in ("train", "test"))
    for split, pairs in (("train", train), ("test", test)):
        save_pairs(pairs, cache[split])
    atomic_write_text(key_file, key)
    print(f"rm data: {len(train):,} train / {len(test):,} held-out {r.kind} pairs from the proving ground in "
          f"{time.perf_counter() - t0:.0f}s; ratings {rating_counts(train)}"
          + (f"; {len(previous):,} pairs of earlier rounds" if previous else ""))
    return previous + train, test


def rm_body(cfg: RMConfig, ctx: RunContext) -> dict:
    r, t = cfg.rm, cfg.train
    run_dir = ctx.run_dir
    lm, tok = ctx.load_start_model(cfg.model.init_from, language_model=False)  # an RM may train on
    train_pairs, val_pairs = ctx.rank0_first(lambda: get_pairs(cfg, run_dir, tok, lm))
    if not train_pairs:
        raise CamelidError("no training pairs (every candidate answer scored the same)")
    torch.manual_seed(t.seed)
    model = lm if isinstance(lm, RewardModel) else RewardModel.from_lm(lm, keep_lm_head=r.lm_weight > 0)
    if r.lm_weight and getattr(model, "output", None) is None:
        raise ConfigError(f"rm.lm_weight: {cfg.model.init_from} is a reward model, which has no language-model head "
                          f"to keep; start from the SFT model or set rm.lm_weight=0")
    max_len = r.max_len or model.args.max_seq_len
    data = PairData(train_pairs, tok, max_len, r.margin, seed=r.seed, lm_targets=r.lm_weight > 0)
    val = PairData(val_pairs, tok, max_len, r.margin, seed=r.seed) if val_pairs else None

    model = ctx.parallelize(model)  # FSDP under torchrun
    per_step = t.micro_batch * ctx.dist.dp_world
    batch = min(r.batch_pairs, max(per_step, (len(data) // per_step) * per_step))  # small data: one batch at most
    if batch % per_step:
        raise ConfigError(f"rm.batch_pairs: {batch} is not a multiple of micro_batch x ranks = {per_step}")
    accum = batch // per_step
    steps = t.max_steps or max(1, math.ceil(r.epochs * len(data) / batch))
    t.warmup_steps = max(r.min_warmup, math.ceil(r.warmup_fraction * steps))  # Llama-2: 3% of steps, at least 5
    t.batch_tokens = batch * max_len
    ctx.write_config(cfg)

    last_val: dict = {}  # the scores of the latest validation: the final one serves the report

    def evaluate(m) -> dict:
        c, rj = score_pairs(m, val, t.micro_batch)
        last_val.update(step=trainer.step, scores=(c, rj))
        acc = accuracy_by_rating(c, rj, val.pairs)
        loss = ranking_loss(c, rj, val.margins, reduction="mean").item()
        return {"loss": loss, "accuracy": acc["average"], "accuracy_by_rating": acc}

    trainer = Trainer(model=model, objective=RankingObjective(r.lm_weight), data=data, cfg=cfg, run_dir=run_dir,
                      total_steps=steps, accum=accum, dist_info=ctx.dist, evaluate=evaluate if val else None,
                      stage=f"rm-{r.kind}", model_args=model.args,
                      extra_state={"model_args": model.args.to_dict(), "tokenizer": str(tok.model_path)})
    resumed = trainer.resume() if ctx.resume else False
    ctx.say(f"rm ({r.kind}, margin {r.margin}): {len(data):,} pairs, {steps} steps of {batch} pairs "
            f"({t.micro_batch} x {accum} accumulation), lr {t.lr:g}, warmup {t.warmup_steps}"
            + (f"; resumed at step {trainer.step}" if resumed else ""))
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    report = {"kind": r.kind, "margin": r.margin, "train_pairs": len(data), "seconds": seconds,
              "ratings_train": rating_counts(train_pairs)}
    model.eval()
    if val is not None:
        c, rj = last_val["scores"] if last_val.get("step") == trainer.step else score_pairs(model, val, t.micro_batch)
        report["accuracy"] = accuracy_by_rating(c, rj, val.pairs)
        report["val_pairs"] = len(val)
        report["ratings_val"] = rating_counts(val_pairs)
        cal = calibration_data(c, rj, val.pairs, r.kind)
        if cal is not None:
            model.calibration = fit_calibration(*cal)
            report["calibration"] = model.calibration
        if ctx.is_main:
            report["scores_plot"] = str(plot_scores(c, rj, run_dir / "scores.png",
                                                    f"{r.kind} reward model: held-out scores"))
    if r.onpolicy_prompts and (r.policy or not isinstance(lm, RewardModel)):
        report.update(on_policy_report(reward_fn(model, tok, max_len, t.micro_batch), pair_policy(cfg, lm), tok,
                                       r.kind, r.onpolicy_prompts, r.seed + 20_000,
                                       list(r.temperatures) or [r.temperature]))
    final = ctx.gathered(model)  # None on ranks > 0
    return ctx.finish(final.drop_lm_head() if final is not None else None, tok.model_path, report,
                      name="rm_report.json")


RM = Stage("rm", RMConfig, rm_body, result="rm_report.json", needs="which SFT model to start from? pass --model CKPT",
           distributed=True)


def train_reward_model(cfg: RMConfig, run_dir: str | Path, resume: bool = False) -> dict:
    return run_stage(RM, cfg, run_dir, resume=resume)


def rm_config(recipe: str | Path | None = None, out: str | Path = "runs/rm", resume: bool = False, *,
              model: str | None = None, data: str | None = None, kind: str | None = None, margin: str | None = None,
              base: str | None = None, max_steps: int | None = None, overrides: list[str] | None = None) -> RMConfig:
    """A reward model's config as `camelid rm` makes it: RMConfig's defaults < the recipe (on resume without one,
    the run's own config.toml) < the SFT model, data, kind, margin, base model and max_steps when given < `overrides`."""
    flags = {"model.init_from": model, "rm.data": data, "rm.kind": kind, "rm.margin": margin, "rm.base_model": base,
             "train.max_steps": max_steps}
    return stage_config(RM, recipe, flag_overrides(flags) + list(overrides or []), out, resume)
