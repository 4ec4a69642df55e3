"""Training checkpoints through torch.distributed.checkpoint (DCP): model, optimizer, trainer state.

Layout: RUN_DIR/checkpoints/step_00000100/ holds DCP's files (one per rank plus .metadata),
trainer_state.json (step, tokens, data-sampler state, ...) and rng_rankN.pt. A checkpoint is written
under a `.partial` name and renamed only once every rank has finished, so a crash mid-write never
replaces the last good one, and resume only ever sees complete checkpoints. DCP reshards on load, so a
run can resume on a different number of ranks or layout.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from camelid.fsutil import atomic_write_json, fsync_dir, fsync_tree

# DCP works without a process group; it only warns that it assumes a single process, which is right.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")

STEP_DIR = re.compile(r"^step_(\d{8})$")


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / "trainer_state.json").exists()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(run_dir: Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(run_dir: Path, step: int, model, optimizer, trainer_state: dict, keep: int = 2) -> Path:
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:08d}"
    partial = root / f".step_{step:08d}.partial"
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)  # left by a crash
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(partial))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, partial / f"rng_rank{_rank()}.pt")
    _barrier()
    if _rank() == 0:
        (partial / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2) + "\n")
        fsync_tree(partial)
        if final.exists():  # re-saving the same step (e.g. after a resume): swap atomically
            shutil.rmtree(final)
        partial.rename(final)
        fsync_dir(root)
        for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Restore model and optimizer (resharding as needed) and this rank's RNG; return trainer_state."""
    path = Path(path)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=StateDictOptions(strict=True))
    rng_file = path / f"rng_rank{_rank()}.pt"
    if rng_file.exists():  # a rank that did not exist when this was saved keeps its seeded state
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return json.loads((path / "trainer_state.json").read_text())


def load_model_weights(path: Path, model) -> None:
    """Only the model part of a training checkpoint (for evaluation or export)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    sd = get_model_state_dict(model)
    dcp.load({"model": sd}, checkpoint_id=str(path))
    set_model_state_dict(model, sd)


def write_json(path: Path, obj) -> None:
    if _rank() == 0:
        atomic_write_json(path, obj)
