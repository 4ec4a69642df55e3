"""Supervised fine-tuning of a chat model (Llama-2 §3.1) on the shared training loop.

`camelid sft --model CKPT --data FILE_OR_NAME --out RUN_DIR`

* Data: JSONL dialogs (`camelid.data.chat`: OpenAI-style `messages` or prompt/response pairs; several
  files comma-separated) or `proving-ground`: the proving ground's train split (camelid.tasks), plus
  single-turn dialogs under a system instruction and, with `sft.gatt > 0`, Ghost Attention dialogs
  (camelid.data.gatt).
* Loss: next-token cross-entropy on the assistant answers and their EOS only, normalised by the answer
  tokens of the whole global batch; dialogs packed into rows of the model's context, each attending
  only to itself (sft.cross_attention = true lets them see each other).
* Defaults are Llama-2's: cosine from 2e-5, weight decay 0.1, 64 sequences per batch, 2 epochs,
  sequence length = the model's context (SFTConfig below). The quickstart departs from them and
  says why (camelid/configs/quickstart-sft.toml).

The run directory gets config.toml, metrics.jsonl (train rows and held-out answer loss), checkpoints/
(resume with --resume), model/ (final weights with the tokenizer), summary.json and, for the proving
ground, eval.json (held-out accuracy per task, refusals, GAtt adherence).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from camelid.config import CheckpointConfig, ConfigError, LogConfig, StageConfig, TrainConfig, load_config
from camelid.fsutil import atomic_write_json
from camelid.train.loop import Trainer
from camelid.train.objectives import LanguageModeling
from camelid.train.stage import RunContext, Stage, flag_overrides, run_stage, stage_config

PROVING_GROUND = "proving-ground"


@dataclass
class SFTSection:
    data: str = PROVING_GROUND  # JSONL file(s), comma-separated, or "proving-ground"
    val_data: str = ""  # JSONL for the held-out answer loss; the proving ground uses its test split
    epochs: float = 2.0
    batch_size: int = 64  # packed sequences per optimizer step (Llama-2: 64 x 4,096 tokens)
    seq_len: int = 0  # 0: the model's context length
    cross_attention: bool = False  # let packed dialogs attend to each other (plain concatenation)
    last_turn_only: bool = False  # train only each dialog's final answer
    seed: int = 0  # data order and the proving ground's dialogs
    # The proving ground's mix (data = "proving-ground"):
    dialogs: int = 4000  # task dialogs (train split; some multi-turn, some with a system prompt)
    instruction_dialogs: int = 400  # single-turn dialogs under a GAtt-style system instruction
    gatt: int = 0  # Ghost Attention dialogs (instruction in turn 1 only, loss on the last turn only)
    gatt_turns: int = 5
    gatt_sample: bool = False  # sample GAtt answers from the starting model where they adhere (else by program)
    val_n: int = 64  # held-out proving-ground dialogs for the validation loss
    eval_n: int = 180  # held-out proving-ground questions evaluated after training (0: none)
    eval_gatt: int = 24  # held-out GAtt dialogs evaluated after training


def sft_train_defaults() -> TrainConfig:
    # Llama-2 §3.1: cosine from 2e-5 to 10% (the pre-training convention; the paper does not say), weight
    # decay 0.1, AdamW (0.9, 0.95, eps 1e-5) and clipping 1.0 as in pre-training; the paper gives no SFT
    # warmup, so none. batch_tokens is derived: sft.batch_size x the sequence length.
    return TrainConfig(lr=2e-5, weight_decay=0.1, warmup_steps=0, min_lr_ratio=0.1, micro_batch=8)


@dataclass
class SFTConfig(StageConfig):
    """Supervised fine-tuning; the defaults are Llama-2's recipe, a TOML file or --set overrides them."""
    train: TrainConfig = field(default_factory=sft_train_defaults)
    log: LogConfig = field(default_factory=lambda: LogConfig(every=5))
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=0, keep=1))
    sft: SFTSection = field(default_factory=SFTSection)

    def check(self) -> None:
        s = self.sft
        if s.epochs <= 0:
            raise ConfigError("sft.epochs: must be positive")
        if s.batch_size <= 0:
            raise ConfigError("sft.batch_size: must be positive")
        if s.batch_size % self.train.micro_batch:
            raise ConfigError(f"sft.batch_size: {s.batch_size} is not a multiple of train.micro_batch "
                              f"{self.train.micro_batch}")


def load_sft_config(path=None, overrides=None) -> SFTConfig:
    return load_config(path, overrides, cls=SFTConfig)


# ------------------------------------------------------------------------------------------------------ data

def proving_ground_samples(tokenizer, s: SFTSection, log=print) -> tuple[list, dict]:
    """(ids, mask) samples of the proving ground's SFT mix, and what went into it."""
    from camelid.chat_format import encode_dialog_with_mask
    from camelid.tasks import make_dialogs, make_instruction_dialogs

    samples = []
    for ex in make_dialogs("train", s.dialogs, s.seed):
        samples.append(encode_dialog_with_mask(tokenizer, ex.messages + [{"role": "assistant", "content": ex.reference}],
                                               last_turn_only=s.last_turn_only))
    for d in make_instruction_dialogs("train", s.instruction_dialogs, s.seed, turns=1):
        samples.append(encode_dialog_with_mask(tokenizer, d.messages(d.references())))
    info = {"dialogs": s.dialogs, "instruction_dialogs": s.instruction_dialogs, "gatt": s.gatt}
    return samples, info


def gatt_samples(tokenizer, s: SFTSection, model=None) -> tuple[list, dict]:
    from camelid.train.gatt_answers import build_gatt, model_answerer
    from camelid.tasks import make_instruction_dialogs

    if not s.gatt:
        return [], {}
    dialogs = make_instruction_dialogs("train", s.gatt, s.seed + 7919, turns=s.gatt_turns)
    answerer = model_answerer(model, tokenizer, seed=s.seed) if (s.gatt_sample and model is not None) else None
    return build_gatt(tokenizer, dialogs, answerer, seed=s.seed)


def load_samples(tokenizer, spec: str, last_turn_only: bool) -> list:
    from camelid.data.chat import encode_samples, load_chat_jsonl

    files = [p.strip() for p in spec.split(",") if p.strip()]
    if not files:
        raise ConfigError("sft.data: empty; give a JSONL file or 'proving-ground'")
    samples = []
    for f in files:
        samples += encode_samples(tokenizer, load_chat_jsonl(f), last_turn_only=last_turn_only)
    return samples


def answer_loss_evaluator(rows, micro_batch: int, cross_attention: bool):
    """Held-out loss per answer token (the SFT objective on unseen dialogs)."""
    objective = LanguageModeling()

    def evaluate(model) -> dict:
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for start in range(0, len(rows), micro_batch):
            idx = torch.arange(start, min(start + micro_batch, len(rows)))
            batch = {k: v.to(device) for k, v in rows.batch(idx, cross_attention).items()}
            loss, _ = objective(model, batch)
            total += loss.item()
            count += objective.count_targets(batch)
        mean = total / max(count, 1)
        return {"loss": mean, "ppl": math.exp(min(mean, 50))}

    return evaluate


# ------------------------------------------------------------------------------------------------------- run

def sft_body(cfg: SFTConfig, ctx: RunContext) -> dict:
    """Fine-tune cfg.model.init_from on cfg.sft.data; returns the summary written to RUN_DIR/summary.json."""
    from camelid.data.chat import PackedChatData, encode_samples, pack
    from camelid.tasks import make_dialogs

    s, t = cfg.sft, cfg.train
    model, tok = ctx.load_start_model(cfg.model.init_from)
    args = model.args
    seq_len = s.seq_len or args.max_seq_len
    if seq_len > args.max_seq_len:
        raise ConfigError(f"sft.seq_len: {seq_len} exceeds the model's context {args.max_seq_len}")

    t0 = time.perf_counter()
    info: dict = {}
    if s.data == PROVING_GROUND:
        samples, info = proving_ground_samples(tok, s)
        g_samples, g_info = gatt_samples(tok, s, model)
        samples += g_samples
        info["gatt_answers"] = g_info
        val_dialogs = [ex.messages + [{"role": "assistant", "content": ex.reference}]
                       for ex in make_dialogs("test", s.val_n, s.seed)]
        val_samples = encode_samples(tok, val_dialogs)
    else:
        samples = load_samples(tok, s.data, s.last_turn_only)
        val_samples = load_samples(tok, s.val_data, False) if s.val_data else []
    rows = pack(samples, seq_len, seed=s.seed)
    data = PackedChatData(rows, seed=s.seed, cross_attention=s.cross_attention, name=s.data)
    evaluate = answer_loss_evaluator(pack(val_samples, seq_len, shuffle=False), t.micro_batch, s.cross_attention) \
        if val_samples else None
    st = rows.stats
    ctx.say(f"sft data: {st['packed']:,} dialogs packed into {st['rows']:,} rows of {seq_len} tokens "
            f"({100 * st['fill']:.0f}% full, {st['target_tokens']:,} answer tokens, {st['truncated']} truncated) "
            f"in {time.perf_counter() - t0:.1f}s")

    model = ctx.parallelize(model)  # FSDP (and TP) under torchrun
    per_step = t.micro_batch * ctx.dist.dp_world
    if s.batch_size % per_step:
        raise ConfigError(f"sft.batch_size: {s.batch_size} is not a multiple of micro_batch x ranks = {per_step}")
    accum = s.batch_size // per_step
    t.batch_tokens = s.batch_size * seq_len  # for the record (config.toml)
    steps = t.max_steps or max(1, math.ceil(s.epochs * len(rows) / s.batch_size))
    ctx.write_config(cfg)
    trainer = Trainer(model=model, objective=LanguageModeling(), data=data, cfg=cfg, run_dir=ctx.run_dir,
                      total_steps=steps, seq_len=seq_len, accum=accum, dist_info=ctx.dist, evaluate=evaluate,
                      stage="sft", model_args=args,
                      extra_state={"model_args": args.to_dict(), "tokenizer": str(tok.model_path)})
    resumed = trainer.resume() if ctx.resume else False
    ctx.say(f"sft: {args.num_params() / 1e6:.2f}M parameters from {cfg.model.init_from}; {steps} steps of "
            f"{s.batch_size} rows ({t.micro_batch} x {accum} accumulation), {steps * s.batch_size / len(rows):.2f} "
            f"epochs, lr {t.lr:g} cosine to {t.min_lr_ratio:g}x, {t.dtype} on {ctx.device}"
            + (f"; resumed at step {trainer.step}" if resumed else ""))
    start = time.perf_counter()
    out_rows = trainer.fit()
    seconds = time.perf_counter() - start
    val = [r for r in out_rows if r.get("split") == "val"]
    summary = {"steps": trainer.step, "tokens": trainer.tokens, "seconds": seconds, "rows": len(rows),
               "epochs": trainer.step * s.batch_size / len(rows), "data": info or {"files": s.data},
               "packing": st, "final_train_loss": next((r["loss"] for r in reversed(out_rows) if "split" not in r), None),
               "val_loss_before": val[0]["loss"] if val else None, "val_loss_after": val[-1]["loss"] if val else None,
               "model_args": args.to_dict()}
    final = ctx.gathered(model)  # rank 0 evaluates and saves the whole model
    if ctx.is_main and s.data == PROVING_GROUND and s.eval_n:
        from camelid.tasks import evaluate as pg_evaluate
        report = pg_evaluate(final.eval(), tok, split="test", n=s.eval_n, seed=0, gatt_dialogs=s.eval_gatt)
        atomic_write_json(ctx.run_dir / "eval.json", report)
        summary["eval"] = {k: report[k] for k in ("accuracy", "tasks", "refusal_rate", "over_refusal_rate",
                                                  "gatt_adherence", "gatt_adherence_3plus")}
    return ctx.finish(final, tok.model_path, summary)


SFT = Stage("sft", SFTConfig, sft_body, needs="which model to fine-tune? pass --model CKPT", distributed=True)


def sft(cfg: SFTConfig, run_dir: str | Path, resume: bool = False, quiet: bool = False) -> dict:
    return run_stage(SFT, cfg, run_dir, resume=resume, quiet=quiet)


def sft_config(recipe: str | Path | None = None, out: str | Path = "runs/sft", resume: bool = False, *,
               model: str | None = None, data: str | None = None, epochs: float | None = None,
               max_steps: int | None = None, gatt: int | None = None, overrides: list[str] | None = None) -> SFTConfig:
    """SFT's config as `camelid sft` makes it: SFTConfig's defaults < the recipe (on resume without one, the
    run's own config.toml) < the model to fine-tune, data, epochs, max_steps and GAtt dialogs when given < `overrides`."""
    flags = {"model.init_from": model, "sft.data": data, "sft.epochs": epochs, "train.max_steps": max_steps,
             "sft.gatt": gatt}
    return stage_config(SFT, recipe, flag_overrides(flags) + list(overrides or []), out, resume)
