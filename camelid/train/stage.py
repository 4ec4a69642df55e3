"""What every stage shares, owned in one place: the run directory, the device, the starting model and its
tokenizer, config.toml saved and reread on resume, "already done" detection, timing, the end of a stage
and, for a stage that runs distributed, the torchrun session (process group, sharding, rank 0 writing).

A stage (pretrain, sft, rm, rs, ppo) is a typed config (a `StageConfig` subclass whose field defaults
are the paper's recipe; TOML recipes and `--set` only override) and a function `body(cfg, ctx) -> dict`
that trains and returns its summary. `run_stage` wraps the body:

    cfg = load_config(recipe, overrides, cls=SFTConfig)        # or dataclasses.replace(...) from another stage
    summary = run_stage(SFT, cfg, "runs/sft", resume=True)

and writes, in this order, RUN_DIR/config.toml, (the body's) checkpoints and metrics.jsonl, model/, the
stage's result file and last `complete.key`, the hash of the settings the run was given: a resumed run
with the same settings returns the saved result without training again; changed settings (more PPO
iterations, say) continue from the newest checkpoint instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from camelid.config import ConfigError, load_config
from camelid.errors import CamelidError
from camelid.fsutil import atomic_write_json, atomic_write_text, ensure_writable_dir
from camelid.parallel.dist_info import DistInfo
from camelid.train import checkpointing as ckpt
from camelid.train.loop import resolve_device


@dataclass(frozen=True)
class Stage:
    name: str  # the command and the run's default folder name
    config: type  # a StageConfig subclass
    body: Callable  # body(cfg, ctx) -> summary dict
    result: str = "summary.json"  # written last; marks the run complete
    needs: str = "which model to start from? pass --model CKPT"  # what to say when model.init_from is empty
    recipe: str = ""  # the shipped recipe a command starts from when given no --config (else the defaults)
    distributed: bool = False  # runs under torchrun (data split by rank, weights sharded); else it refuses


@dataclass
class RunContext:
    """Where and how a stage runs. `say` is print on rank 0 unless the stage runs quietly inside another."""
    run_dir: Path
    resume: bool
    device: torch.device
    dist: DistInfo
    quiet: bool = False
    shard: Callable | None = None  # under torchrun: parallelize(model) -> (model, DistInfo) from camelid.parallel

    @property
    def is_main(self) -> bool:
        return self.dist.rank == 0

    def parallelize(self, model):
        """The model wrapped for this launch (FSDP / TP under torchrun; as it is in one process)."""
        if self.shard is None:
            return model
        model, self.dist = self.shard(model)
        return model

    def rank0_first(self, make):
        """`make()` on rank 0, then on the others once it is done: rank 0 writes a cache file (sampled
        preference pairs, say) that the other ranks then read instead of making it again."""
        from camelid.parallel.collectives import rank0_first

        return rank0_first(make)

    def gathered(self, model):
        """The whole model, unsharded, on rank 0 (None on the other ranks, which help gather it): what the
        end of a stage evaluates and saves. In one process, the model itself."""
        if not torch.distributed.is_initialized():
            return model
        from camelid.checkpoint import plain_names
        from camelid.parallel.distributed import full_state_dict, plain_model

        weights = plain_names(full_state_dict(model))  # a collective: every rank takes part
        return plain_model(model, weights) if self.is_main else None

    @contextlib.contextmanager
    def full_copy(self, model):
        """The whole model, unsharded, on every rank for the length of the block (a rollout phase: each rank
        generates its share of prompts from it), freed afterwards. In one process, the model itself."""
        from camelid.parallel.distributed import full_copy, is_sharded

        if not is_sharded(model):  # one process, or a model every rank holds whole already
            yield model
            return

        copy = full_copy(model).eval()
        try:
            yield copy
        finally:
            del copy

    def say(self, *args, **kw) -> None:
        if self.is_main and not self.quiet:
            print(*args, **kw)

    def write_config(self, cfg) -> None:
        """RUN_DIR/config.toml, the resolved settings (a stage rewrites it after deriving batch sizes)."""
        if self.is_main:
            atomic_write_text(self.run_dir / "config.toml", cfg.to_toml())

    def load_start_model(self, path: str | Path, dtype=torch.float32, language_model: bool = True):
        """The model a stage starts from and its tokenizer; both must be there, and a stage that generates or
        trains next-token prediction needs a language model, not a reward model."""
        from camelid.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path, device=self.device, dtype=dtype)
        if language_model and ckpt.kind != "lm":
            raise ConfigError(f"model.init_from: {path} is a {ckpt.kind} model; this stage needs a language model "
                              f"(an SFT or pre-trained checkpoint)")
        return ckpt.model, ckpt.tokenizer()

    def finish(self, model, tokenizer_path, result: dict, name: str = "summary.json") -> dict:
        """The end of every stage: rank 0 writes the final weights (`model` as `gathered` returns it) with the
        tokenizer into model/, then the result file."""
        if self.is_main:
            from camelid.checkpoint import save_model

            save_model(model, self.run_dir / "model", tokenizer_path=tokenizer_path)
            atomic_write_json(self.run_dir / name, result)
        return result


def launched_ranks() -> int:
    """How many processes torchrun started for this job (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def refuse_unsupported_launch(name: str, distributed: bool) -> None:
    """No silent wrong run: a stage that cannot yet split its work across ranks refuses to start under
    torchrun, instead of training one unsynchronised full copy per rank into the same folder."""
    if launched_ranks() > 1 and not distributed:
        raise ConfigError(f"camelid {name} runs in one process for now: under torchrun each of the "
                          f"{launched_ranks()} ranks would train its own copy into the same run folder. "
                          f"Run it without torchrun")


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    if not resume and ckpt.latest_checkpoint(run_dir) is not None:
        raise CamelidError(f"{run_dir} already holds checkpoints of a run: pass --resume to continue it, "
                           f"or choose a new --out")
    ensure_writable_dir(run_dir, "run directory (--out)")


def settings_key(cfg) -> str:
    return hashlib.sha256(cfg.to_toml().encode()).hexdigest()[:16]


def completed(run_dir: str | Path, cfg, result: str = "summary.json") -> dict | None:
    """The saved result of a run that finished with these settings, else None."""
    run_dir = Path(run_dir)
    key = run_dir / "complete.key"
    if key.is_file() and key.read_text() == settings_key(cfg) and (run_dir / result).is_file():
        return json.loads((run_dir / result).read_text())
    return None


def run_stage(stage: Stage, cfg, run_dir: str | Path, resume: bool = False, quiet: bool = False,
              dist_info: DistInfo | None = None, parallelize=None, **body_args) -> dict:
    """Run (or resume, or find finished) one stage; returns its result (the summary it wrote).
    `body_args` go to the stage's body (a test's known reward instead of the reward models, say)."""
    refuse_unsupported_launch(stage.name, stage.distributed)
    run_dir = Path(run_dir)
    key = settings_key(cfg)  # before the body derives anything into cfg
    if resume and (done := completed(run_dir, cfg, stage.result)) is not None:
        if not quiet:
            print(f"{stage.name}: {run_dir} is complete; skipped (delete {run_dir / 'complete.key'} to run it again)")
        return done
    prepare_run_dir(run_dir, resume)
    if hasattr(cfg, "model") and not cfg.model.init_from and stage.needs:
        raise ConfigError(f"model.init_from: {stage.needs}")
    cfg.check()
    with parallel_session(stage, cfg, parallelize) as shard:
        ctx = RunContext(run_dir, resume, resolve_device(cfg.train.device), dist_info or DistInfo.current(), quiet,
                         shard)
        ctx.write_config(cfg)
        start = time.perf_counter()
        result = stage.body(cfg, ctx, **body_args)
        if ctx.is_main:
            atomic_write_text(run_dir / "complete.key", key)
        ctx.say(f"{stage.name}: finished in {time.perf_counter() - start:.0f}s; results in {run_dir}")
    return result


@contextlib.contextmanager
def parallel_session(stage: Stage, cfg, parallelize=None):
    """The `parallelize` a distributed stage wraps its model with: the caller's, else one made from this stage's
    train section under torchrun (in the process group a pipeline or an outer stage holds, or one opened for this
    stage), else None in one process."""
    if parallelize is not None or not stage.distributed:
        yield parallelize
        return
    from camelid.parallel.launch import maybe_distributed

    with maybe_distributed(cfg) as shard:
        yield shard


def flag_overrides(flags: dict) -> list[str]:
    """Command-line flags given (not None) as `key=value` overrides, before any --set."""
    return [f"{k}={v}" for k, v in flags.items() if v is not None and v != ""]


def stage_config(stage: Stage, recipe: str | Path | None, overrides: list[str], out: str | Path, resume: bool):
    """A stage's config for the command line: its defaults < the recipe < overrides. On --resume without
    --config, the run's own config.toml is the recipe, so the run goes on with the settings it started with."""
    saved = Path(out) / "config.toml"
    if recipe is None and resume and saved.exists():
        recipe = saved
    return load_config(recipe or stage.recipe or None, overrides, cls=stage.config)
