"""What every stage shares, owned in one place: the run directory, the device, the starting model and its
tokenizer, config.toml saved and reread on resume, "already done" detection, timing and the end of a stage.

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

import hashlib
import json
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


@dataclass
class RunContext:
    """Where and how a stage runs. `say` is print on rank 0 unless the stage runs quietly inside another."""
    run_dir: Path
    resume: bool
    device: torch.device
    dist: DistInfo
    quiet: bool = False

    @property
    def is_main(self) -> bool:
        return self.dist.rank == 0

    def say(self, *args, **kw) -> None:
        if self.is_main and not self.quiet:
            print(*args, **kw)

    def write_config(self, cfg) -> None:
        """RUN_DIR/config.toml, the resolved settings (a stage rewrites it after deriving batch sizes)."""
        if self.is_main:
            atomic_write_text(self.run_dir / "config.toml", cfg.to_toml())

    def load_start_model(self, path: str | Path, dtype=torch.float32):
        """The model a stage starts from and its tokenizer; both must be there."""
        from camelid.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path, device=self.device, dtype=dtype)
        return ckpt.model, ckpt.tokenizer()

    def finish(self, model, tokenizer_path, result: dict, name: str = "summary.json") -> dict:
        """The end of every stage: the final weights (gathered from every rank's shards when distributed) with
        the tokenizer into model/, then the result file; rank 0 writes."""
        from camelid.checkpoint import save_model, save_state_dict

        if torch.distributed.is_initialized():
            from camelid.parallel.distributed import full_state_dict

            weights = full_state_dict(model)  # a collective: every rank takes part
            if self.is_main:
                info = {"kind": getattr(model, "kind", "lm"), "calibration": getattr(model, "calibration", None)}
                save_state_dict(weights, model.args, self.run_dir / "model", tokenizer_path=tokenizer_path, info=info)
        elif self.is_main:
            save_model(model, self.run_dir / "model", tokenizer_path=tokenizer_path)
        if self.is_main:
            atomic_write_json(self.run_dir / name, result)
        return result


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
              dist_info: DistInfo | None = None) -> dict:
    """Run (or resume, or find finished) one stage; returns its result (the summary it wrote)."""
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
    ctx = RunContext(run_dir, resume, resolve_device(cfg.train.device), dist_info or DistInfo.current(), quiet)
    ctx.write_config(cfg)
    start = time.perf_counter()
    result = stage.body(cfg, ctx)
    if ctx.is_main:
        atomic_write_text(run_dir / "complete.key", key)
    ctx.say(f"{stage.name}: finished in {time.perf_counter() - start:.0f}s; results in {run_dir}")
    return result


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
