"""Pre-training: next-token prediction on a weighted mixture of prepared sources (LLaMA-1 §2).

`camelid pretrain --config quickstart --out runs/x` (a shipped recipe name, e.g. `--config llama2-7b`, or a
TOML path). The run directory gets config.toml, metrics.jsonl, checkpoints/, model/ (the
final weights in camelid format, with the tokenizer) and summary.json.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from camelid.checkpoint import load_model
from camelid.config import Config, ConfigError, accumulation_steps, model_args_from
from camelid.model import Transformer
from camelid.parallel.dist_info import DistInfo
from camelid.train.loop import Trainer
from camelid.train.objectives import LanguageModeling
from camelid.train.stage import RunContext, Stage, flag_overrides, run_stage, stage_config


META_INIT_BYTES = 8 * 2**30  # fp32 weights above this are never materialised whole on one rank


class WindowData:
    """The mixture sampler as a loop Dataset: sample g is window g of the mixture stream."""

    def __init__(self, sampler):
        self.sampler = sampler

    def fetch(self, indices):
        return {"tokens": self.sampler.windows(indices)}

    def state_dict(self) -> dict:
        s = dict(self.sampler.state_dict())
        s.pop("consumed", None)  # the step says how far we are
        return s


def tokenizer_path(cfg: Config, manifest: dict) -> Path:
    """The tokenizer to train with and ship: data.tokenizer, else the one the data was prepared with. It must be
    the one the manifest records (same sha256), or the shards' ids would mean other pieces."""
    import hashlib

    recorded = manifest.get("tokenizer", {})
    p = Path(cfg.data.tokenizer or recorded.get("path", ""))
    if not p.is_file():
        raise ConfigError(f"data.tokenizer: {p} not found; set data.tokenizer to the tokenizer.model the data was "
                          f"prepared with")
    want = recorded.get("sha256")
    if want and hashlib.sha256(p.read_bytes()).hexdigest() != want:
        from camelid.tokenizer import Tokenizer

        try:
            vocab = f"{Tokenizer(p).vocab_size} pieces"
        except Exception:
            vocab = "not a tokenizer model"
        raise ConfigError(f"data.tokenizer: {p} ({vocab}, sha256 {hashlib.sha256(p.read_bytes()).hexdigest()[:12]}) "
                          f"is not the tokenizer the data in {cfg.data.dir} was prepared with "
                          f"({recorded.get('vocab_size', '?')} pieces, sha256 {want[:12]}, {recorded.get('path')}); "
                          f"leave data.tokenizer unset, or prepare the data with this tokenizer")
    return p


def lm_evaluator(sampler, micro_batch: int, n_batches: int):
    """Validation loss and perplexity per source, on fixed held-out windows."""
    per_source = {s: sampler.val_windows(s, n=micro_batch * n_batches) for s in sampler.sources
                  if sampler.weights.get(s, 0) > 0}
    objective = LanguageModeling()

    def evaluate(model) -> dict:
        device = next(model.parameters()).device
        losses = {}
        for source, windows in per_source.items():
            total, count = 0.0, 0
            for chunk in windows.split(micro_batch):
                batch = {"tokens": chunk.to(device)}
                loss, _ = objective(model, batch)
                total += loss.item()
                count += objective.count_targets(batch)
            losses[source] = total / max(count, 1)
        # The mixture's loss: sources weighted as they are sampled.
        mean = sum(sampler.weights[s] * v for s, v in losses.items()) / sum(sampler.weights[s] for s in losses)
        return {"loss": mean, "ppl": math.exp(min(mean, 50)), "sources": losses}

    return evaluate


def build_model(cfg: Config, vocab_size: int, device) -> Transformer:
    if cfg.model.init_from:
        model = load_model(cfg.model.init_from, device=device, dtype=torch.float32)
        if model.args.vocab_size != vocab_size:
            raise ConfigError(f"model.init_from: {cfg.model.init_from} has vocabulary {model.args.vocab_size}, "
                              f"the data's tokenizer has {vocab_size}")
        return model
    args = model_args_from(cfg.model, vocab_size=vocab_size)
    if args.vocab_size != vocab_size:
        raise ConfigError(f"model.vocab_size: {args.vocab_size} differs from the tokenizer's {vocab_size}")
    torch.manual_seed(cfg.train.seed)
    with torch.device(device):
        return Transformer(args)


def total_steps(cfg: Config) -> int:
    t = cfg.train
    if t.max_steps:
        return t.max_steps
    if t.max_tokens:
        return math.ceil(t.max_tokens / t.batch_tokens)
    raise ConfigError("train.max_steps / train.max_tokens: set one of them (e.g. --max-steps 100)")


def pretrain_body(cfg: Config, ctx: RunContext) -> dict:
    from camelid.data import MixtureSampler, read_manifest
    from camelid.parallel import apply_ac, apply_compile

    if not cfg.data.dir:
        raise ConfigError("data.dir: no prepared data; run `camelid data prepare --tokenizer TOK --out DIR` and "
                          "pass --set data.dir=DIR (or run `camelid quickstart`, which does it all)")
    manifest = read_manifest(cfg.data.dir)
    tok_path = tokenizer_path(cfg, manifest)
    vocab = manifest["tokenizer"]["vocab_size"]
    device, t = ctx.device, cfg.train
    sampler = MixtureSampler(cfg.data.dir, cfg.data.seq_len, seed=cfg.data.seed, weights=cfg.data.weights or None)

    # A model too big for one device is built on the meta device and materialised shard by shard.
    on_meta = ctx.shard is not None and not cfg.model.init_from and \
        model_args_from(cfg.model, vocab_size=vocab).num_params() * 4 > META_INIT_BYTES
    model = build_model(cfg, vocab, "meta" if on_meta else device)
    args = model.args
    if args.max_seq_len < cfg.data.seq_len:
        raise ConfigError(f"data.seq_len: {cfg.data.seq_len} exceeds the model's context (model.max_seq_len "
                          f"{args.max_seq_len})")
    if ctx.shard is not None:
        model = ctx.parallelize(model)
        if on_meta:
            model.to_empty(device=device)
            model.init_weights()
    else:
        apply_ac(model, t.activation_checkpointing)
        if t.compile:
            apply_compile(model)
    dist_info = ctx.dist
    accum = accumulation_steps(t.batch_tokens, t.micro_batch, cfg.data.seq_len, dist_info.dp_world)
    steps = total_steps(cfg)
    # vocabulary-sharded logits (loss parallel) are DTensors, which the compiled loss does not take
    objective = LanguageModeling(compile_loss=t.compile and not dist_info.loss_parallel)
    trainer = Trainer(model=model, objective=objective, data=WindowData(sampler), cfg=cfg, run_dir=ctx.run_dir,
                      total_steps=steps, seq_len=cfg.data.seq_len, accum=accum, dist_info=dist_info,
                      evaluate=lm_evaluator(sampler, t.micro_batch, cfg.log.val_batches), stage="pretrain",
                      model_args=args, extra_state={"model_args": args.to_dict(), "tokenizer": str(tok_path)})
    resumed = trainer.resume() if ctx.resume else False
    ctx.say(f"pretrain: {args.num_params() / 1e6:.2f}M parameters, {steps} steps of {t.batch_tokens:,} tokens "
            f"({t.micro_batch} x {cfg.data.seq_len} x {accum} accumulation x {dist_info.dp_world} ranks), "
            f"{t.dtype} on {device}" + (f"; resumed at step {trainer.step}" if resumed else ""))
    start = time.perf_counter()
    rows = trainer.fit()
    seconds = time.perf_counter() - start
    val = [r for r in rows if r.get("split") == "val"]
    summary = {
        "n_params": args.num_params(), "n_params_non_embedding": args.num_params(include_embedding=False),
        "steps": trainer.step, "tokens": trainer.tokens, "seconds": seconds,
        "final_train_loss": next((r["loss"] for r in reversed(rows) if "split" not in r), None),
        "final_val_loss": val[-1]["loss"] if val else None, "final_val_ppl": val[-1]["ppl"] if val else None,
        "epochs": sampler.epochs(trainer.step * trainer.samples_per_step),
        "model_args": args.to_dict(),
    }
    return ctx.finish(ctx.gathered(model), tok_path, summary)


PRETRAIN = Stage("pretrain", Config, pretrain_body, needs="", recipe="quickstart", distributed=True)


def pretrain(cfg: Config, run_dir: str | Path, resume: bool = False, dist_info: DistInfo | None = None,
             parallelize=None) -> dict:
    """Run (or resume) pre-training; return the summary written to RUN_DIR/summary.json.

    `parallelize(model) -> (model, DistInfo)` is how distributed runs wrap the model (camelid.parallel)."""
    return run_stage(PRETRAIN, cfg, run_dir, resume=resume, dist_info=dist_info, parallelize=parallelize)


def pretrain_config(recipe: str | Path | None = None, out: str | Path = "runs/pretrain", resume: bool = False, *,
                    max_steps: int | None = None, ckpt_every: int | None = None, profile: bool = False,
                    overrides: list[str] | None = None) -> Config:
    """Pre-training's config as `camelid pretrain` makes it: the recipe (default: quickstart; on resume, the
    run's own config.toml), then max_steps, ckpt_every and profile (3 steps traced) when given, then `overrides`."""
    flags = {"train.max_steps": max_steps, "checkpoint.every": ckpt_every,
             "log.profile_steps": 3 if profile else None}
    return stage_config(PRETRAIN, recipe, flag_overrides(flags) + list(overrides or []), out, resume)
