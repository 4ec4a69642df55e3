"""The one training loop every stage uses (pretrain, SFT, reward models, rejection sampling).

A stage supplies an `Objective` (its loss) and a `Dataset` (its batches by global index); the loop
does the rest: gradient accumulation, loss normalisation by the target count of the whole global
batch (all micro-batches, all ranks), bf16 autocast with fp32 master weights, clipping, the LR
schedule, NaN/Inf skipping, logging, validation, DCP checkpoints and exact resume.

Data is addressed by global sample index: optimizer step s consumes samples
[s*G, (s+1)*G) with G = micro_batch x accumulation x data-parallel ranks; micro-batch m of rank r
takes a fixed slice of them. So the samples of a step do not depend on how they are split, and a
run resumes, or changes its number of ranks, without any loader state but the step.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.distributed as dist

from camelid.config import ConfigError
from camelid.dtypes import DTYPES
from camelid.errors import CamelidError
from camelid.parallel.dist_info import DistInfo
from camelid.train import checkpointing as ckpt
from camelid.train.malloc import keep_freed_memory
from camelid.train.metrics import MetricsLog, flops_per_token, peak_flops
from camelid.train.optim import build_optimizer, clip_gradients, lr_at
from camelid.train.profiling import StepProfiler

class Dataset(Protocol):
    def fetch(self, indices: list[int]) -> dict[str, torch.Tensor]: ...
    def state_dict(self) -> dict: ...  # identifies the data, so a resume onto other data is refused


class Objective(Protocol):
    def count_targets(self, batch: dict) -> int: ...  # what the loss is normalised by
    def __call__(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]: ...  # (loss SUM, metric sums)


class TrainingDiverged(CamelidError):
    pass


def resolve_device(name: str) -> torch.device:
    """train.device as a torch.device; a ConfigError (one line) for a device this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"train.device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {name} asked for, but this machine has no usable CUDA GPU (torch "
                              f"{torch.__version__}); use train.device=cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device: {name} asked for, but this machine has {torch.cuda.device_count()} "
                              f"CUDA GPU(s) (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"train.device: {name} asked for, but MPS is not available here; use cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"train.device: {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


@dataclass
class Trainer:
    model: torch.nn.Module
    objective: Objective
    data: Dataset
    cfg: object  # Config-like: .train, .log, .checkpoint
    run_dir: Path
    total_steps: int
    seq_len: int = 0  # for MFU; 0: not reported
    evaluate: Callable[[torch.nn.Module], dict] | None = None  # validation rows (loss, per-source losses, ...)
    dist_info: DistInfo = field(default_factory=DistInfo.current)
    stage: str = "train"
    optimizer: torch.optim.Optimizer | None = None
    model_args: object = None  # the ModelArgs (for MFU) when `model` is wrapped
    accum: int = 1  # micro-batches per rank per optimizer step
    extra_state: dict = field(default_factory=dict)  # saved in trainer_state.json (e.g. model_args for export)
    progress_keys: tuple = ()  # row keys the progress bar shows besides loss and lr (e.g. PPO's reward)

    def __post_init__(self):
        t = self.cfg.train
        self.run_dir = Path(self.run_dir)
        self.device = next(self.model.parameters()).device
        self.amp_dtype = DTYPES[t.dtype]
        self.optimizer = self.optimizer or build_optimizer(self.model, t)
        if self.device.type == "cpu":
            keep_freed_memory()  # no page faults for the same activations every step
        self.step = 0
        self.tokens = 0
        self.bad_steps = 0
        self.stop_requested = False  # a stage's hook ends fit() early (PPO's early stopping)
        self.is_main = self.dist_info.rank == 0
        args = self.model_args or getattr(self.model, "args", None)
        self.flops_per_token = flops_per_token(args, self.seq_len) if (args is not None and self.seq_len) else 0
        self.peak = peak_flops(self.device, self.amp_dtype) * self.dist_info.world if self.flops_per_token else 0

    # ------------------------------------------------------------------------------------------------ setup
    @property
    def samples_per_step(self) -> int:
        return self.cfg.train.micro_batch * self.accum * self.dist_info.dp_world

    def micro_indices(self, step: int, micro: int) -> list[int]:
        mb, d = self.cfg.train.micro_batch, self.dist_info
        base = step * self.samples_per_step + (micro * d.dp_world + d.dp_rank) * mb
        return list(range(base, base + mb))

    def trainer_state(self) -> dict:
        return {"stage": self.stage, "step": self.step, "tokens": self.tokens, "bad_steps": self.bad_steps,
                "total_steps": self.total_steps, "samples_per_step": self.samples_per_step,
                "data": self.data.state_dict(), **self.extra_state}

    def resume(self, path: Path | None = None) -> bool:
        """Continue from `path` or the newest complete checkpoint of the run; False if there is none.

        Without `path`, a checkpoint that a crash or a full disk left incomplete or corrupt is skipped with a
        warning naming what is wrong, and the previous one is used (loading it overwrites every tensor)."""
        if path is None:
            candidates = ckpt.checkpoint_dirs(self.run_dir)[::-1]
            if not candidates:
                return False
            problems = []
            for candidate in candidates:
                try:
                    state = ckpt.load_checkpoint(candidate, self.model, self.optimizer)
                except ckpt.DamagedCheckpoint as e:
                    problems.append(str(e))
                    if self.is_main:
                        print(f"warning: checkpoint {candidate.name} is not usable, trying an older one: {e}")
                    continue
                path = candidate
                break
            else:
                raise CamelidError(f"{self.run_dir}: no usable checkpoint to resume from ({'; '.join(problems)}); "
                                   f"start a new run directory")
        else:
            state = ckpt.load_checkpoint(path, self.model, self.optimizer)
        saved, ours = state.get("data", {}), self.data.state_dict()
        diff = sorted(k for k in set(saved) | set(ours) if k != "consumed" and saved.get(k) != ours.get(k))
        if diff:
            raise CamelidError(f"{path}: checkpoint was trained on different data ({', '.join(diff)} differ); "
                               f"start a new run directory, or restore the original data settings")
        if state["samples_per_step"] != self.samples_per_step:
            raise CamelidError(f"{path}: global batch was {state['samples_per_step']} samples per step, now "
                               f"{self.samples_per_step}; keep train.batch_tokens and micro_batch x ranks consistent")
        self.step, self.tokens, self.bad_steps = state["step"], state["tokens"], state.get("bad_steps", 0)
        self.resumed_state = state  # the whole trainer_state.json, for a stage's own extra state
        return True

    def save(self) -> Path:
        return ckpt.save_checkpoint(self.run_dir, self.step, self.model, self.optimizer, self.trainer_state(),
                                    keep=self.cfg.checkpoint.keep)

    # ------------------------------------------------------------------------------------------------- step
    def autocast(self):
        if self.amp_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def loss_context(self):
        if not self.dist_info.loss_parallel:
            return contextlib.nullcontext()
        from torch.distributed.tensor.parallel import loss_parallel
        return loss_parallel()

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.dist_info.world > 1:
            dist.all_reduce(t, group=self.dist_info.dp_group)
        return t

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def forward_backward(self) -> tuple[float, float, dict[str, float]]:
        """Gradients of this step's global batch, left in `.grad`. Returns (mean loss, target count, metrics)."""
        batches = [self._to_device(self.data.fetch(self.micro_indices(self.step, m))) for m in range(self.accum)]
        counts = [self.objective.count_targets(b) for b in batches]
        totals = self._all_reduce(torch.tensor([float(sum(counts))], device=self.device))
        n_targets = max(totals.item(), 1.0)
        # FSDP/DDP average gradients over dp ranks; undo it so every rank's loss is a share of one global mean.
        scale = (self.dist_info.dp_world if self.dist_info.grad_average else 1) / n_targets
        loss_sum = torch.zeros((), device=self.device)
        extra: dict[str, float] = {}
        for m, batch in enumerate(batches):
            if hasattr(self.model, "set_requires_gradient_sync"):  # FSDP2: reduce-scatter once per step
                self.model.set_requires_gradient_sync(m == len(batches) - 1)
            with self.loss_context():
                with self.autocast():
                    loss, metrics = self.objective(self.model, batch)
                (loss.float() * scale).backward()
            loss = loss.full_tensor() if hasattr(loss, "full_tensor") else loss
            loss_sum += loss.detach().float()
            for k, v in metrics.items():
                extra[k] = extra.get(k, 0.0) + float(v) / len(batches)
        loss_value = self._all_reduce(loss_sum.reshape(1)).item() / n_targets
        return loss_value, n_targets, self._mean_over_ranks(extra)

    def _mean_over_ranks(self, metrics: dict[str, float]) -> dict[str, float]:
        """A stage's per-micro-batch metrics (each rank's mean over its micro-batches) as the mean over every
        micro-batch of the global step: each rank holds the same number of them."""
        if self.dist_info.dp_world <= 1 or not metrics:
            return metrics
        keys = sorted(metrics)
        total = self._all_reduce(torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.device))
        return {k: v / self.dist_info.dp_world for k, v in zip(keys, total.tolist())}

    def train_step(self) -> dict:
        """One optimizer step over the global batch. Returns the logged metrics."""
        loss_value, n_targets, extra = self.forward_backward()
        t = self.cfg.train
        grad_norm = clip_gradients(self.model.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf)
        lr = lr_at(self.step, lr=t.lr, warmup_steps=t.warmup_steps, total_steps=self.total_steps,
                   min_lr_ratio=t.min_lr_ratio, schedule=t.schedule)
        finite = math.isfinite(loss_value) and bool(torch.isfinite(grad_norm))
        if finite:
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)  # a stage may train some parameters faster
            self.optimizer.step()
            self.bad_steps = 0
        else:
            self.bad_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if finite:
            self.tokens += int(n_targets)
        row = {"step": self.step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm), "tokens": self.tokens,
               **extra}
        if not finite:
            row["skipped"] = True
        return row

    # -------------------------------------------------------------------------------------------------- fit
    def fit(self, log: MetricsLog | None = None, on_step: Callable[[dict], None] | None = None,
            before_step: Callable[[], None] | None = None, log_every: int | None = None) -> list[dict]:
        """Train to `total_steps` (or until a hook sets `stop_requested`); returns the rows logged.
        Checkpoints every `checkpoint.every` and at the end.

        A stage hooks in without a loop of its own: `before_step()` runs before each optimizer step (PPO
        refills its rollout buffer there), `on_step(row)` after it, before the row is logged, so it may add
        to the row (PPO's iteration statistics). `log_every` overrides `log.every`."""
        cfg = self.cfg
        log_every = log_every or cfg.log.every
        log = log or MetricsLog(self.run_dir, resume_step=self.step if self.step else None,
                                tensorboard=cfg.log.tensorboard, enabled=self.is_main)
        rows: list[dict] = []
        bar = None
        if self.is_main and cfg.log.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.total_steps, initial=self.step, desc=self.stage, unit="step", dynamic_ncols=True)
        if self.evaluate is not None and self.step == 0:  # the starting point of the validation curve
            val = self.validate()
            log.write(val)
            rows.append(val)
        self.model.train()
        profiler = StepProfiler(self.run_dir / "profile", cfg.log.profile_steps, rank=self.dist_info.rank)
        t0, tok0 = time.perf_counter(), self.tokens
        try:
            while self.step < self.total_steps and not self.stop_requested:
                if before_step is not None:
                    before_step()
                row = self.train_step()
                profiler.step()
                if row.get("skipped"):
                    msg = f"step {row['step']}: loss {row['loss']} / grad norm {row['grad_norm']} is not finite; skipped"
                    (bar.write if bar else print)(msg) if self.is_main else None
                    if self.bad_steps >= cfg.train.max_bad_steps:
                        path = self.save()
                        raise TrainingDiverged(
                            f"{self.bad_steps} consecutive non-finite steps (last at step {self.step}); the run stopped. "
                            f"The last good weights are in {path} (skipped steps never touched them). Lower "
                            f"train.lr, use train.dtype=bf16 rather than fp16, or check the data, then --resume.")
                if on_step is not None:
                    on_step(row)
                dt = time.perf_counter() - t0
                if self.step % log_every == 0 or self.step == self.total_steps:
                    row["tokens_per_s"] = (self.tokens - tok0) / dt if dt > 0 else 0.0
                    if self.peak:
                        row["mfu"] = row["tokens_per_s"] * self.flops_per_token / self.peak
                    log.write(row)
                    rows.append(row)
                    t0, tok0 = time.perf_counter(), self.tokens
                if bar is not None:
                    bar.update(1)
                    post = {"loss": f"{row['loss']:.3f}", "lr": f"{row['lr']:.2e}"}
                    if "tokens_per_s" in row:
                        post["tok/s"] = f"{row['tokens_per_s']:.0f}"
                    if "mfu" in row:
                        post["mfu"] = f"{100 * row['mfu']:.0f}%"
                    post.update({k: f"{row[k]:.3f}" for k in self.progress_keys if k in row})
                    bar.set_postfix(post, refresh=False)
                val_due = cfg.log.val_every and self.step % cfg.log.val_every == 0
                if self.evaluate is not None and (val_due or self.step == self.total_steps):
                    val = self.validate()
                    log.write(val)
                    rows.append(val)
                    if bar is not None:
                        bar.write(f"step {self.step}: val loss {val['loss']:.4f} (ppl {val.get('ppl', float('nan')):.1f})")
                    t0 = time.perf_counter()
                every = cfg.checkpoint.every
                if (every and self.step % every == 0) or self.step == self.total_steps:
                    self.save()
                    t0 = time.perf_counter()
        finally:
            profiler.close()
            if bar is not None:
                bar.close()
            log.close()
        return rows

    @torch.no_grad()
    def validate(self) -> dict:
        self.model.eval()
        with self.loss_context(), self.autocast():
            out = self.evaluate(self.model)
        self.model.train()
        return {"step": self.step, "split": "val", "tokens": self.tokens, **out}
