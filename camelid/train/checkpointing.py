"""Training checkpoints through torch.distributed.checkpoint (DCP): model, optimizer, trainer state.

Layout: RUN_DIR/checkpoints/step_00000100/ holds DCP's files (one per rank plus .metadata),
trainer_state.json (step, tokens, data-sampler state, ...) and rng_rankN.pt. A checkpoint is written
under a `.partial` name and renamed only once every rank has finished, so a crash mid-write never
replaces the last good one, and resume only ever sees complete checkpoints. DCP reshards on load, so a
run can resume on a different number of ranks or layout.

Loading never runs code from a checkpoint: DCP's .metadata (a pickle) is read by an unpickler that admits
only DCP's metadata classes (SafeFileSystemReader), non-tensor values are read weights-only
(SafeLoadPlanner). A checkpoint that is complete by name but damaged later (a shard missing or shorter than
.metadata says, a corrupt trainer_state.json or .metadata) raises DamagedCheckpoint, and Trainer.resume
falls back to the previous one. A full disk while saving is "disk full while writing PATH" (DiskFull), and
the half-written .partial is removed.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from camelid.checkpoint import CheckpointError
from camelid.errors import CamelidError
from camelid.fsutil import atomic_write_json, fsync_dir, fsync_tree, reporting_disk_full

# DCP works without a process group; it only warns that it assumes a single process, which is right.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")

STEP_DIR = re.compile(r"^step_(\d{8})$")


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier():
    if dist.is_initialized():
        dist.barrier()


class DamagedCheckpoint(CheckpointError):
    """A checkpoint that a crash or a full disk left incomplete or corrupt: resume falls back to an older one."""


# ------------------------------------------------------------------------------------- reading DCP safely
# DCP's .metadata is a pickle. Only these globals occur in one (found by unpickling real checkpoints of
# every kind camelid writes: single-process, FSDP and TP); anything else is refused before it is called.
_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_SAFE_GLOBALS = {
    (_DCP_METADATA, n) for n in ("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "ChunkStorageMetadata",
                                 "TensorStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a lookup of torch.strided & co. by name
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "tuple"), ("builtins", "list"), ("builtins", "dict"),
    ("builtins", "bytearray"), ("builtins", "slice"), ("builtins", "complex"),
}


class RefusedGlobal(pickle.UnpicklingError):
    pass


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_GLOBALS or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise RefusedGlobal(f"{module}.{name}")


def read_dcp_metadata(path: str | Path):
    """Unpickle a DCP .metadata file admitting only what DCP metadata contains: loading a checkpoint never runs
    code from it. A CheckpointError names the file and the refused global; a DamagedCheckpoint if it is no pickle."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DamagedCheckpoint(f"{path}: missing (the checkpoint is incomplete)") from None
    try:
        return _MetadataUnpickler(io.BytesIO(data)).load()
    except RefusedGlobal as e:
        raise CheckpointError(f"{path}: refused to load: it asks for {e}, which DCP checkpoint metadata never "
                              f"contains (a tampered or foreign file); nothing from it was run") from None
    except Exception as e:
        raise DamagedCheckpoint(f"{path}: corrupt ({type(e).__name__}: {e})") from None


class SafeFileSystemReader(FileSystemReader):
    """DCP's FileSystemReader with .metadata read through the restricted unpickler (read_dcp_metadata)."""

    def read_metadata(self, *args, **kwargs):
        metadata = read_dcp_metadata(self._get_metadata_path(kwargs.get("rank")))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, but non-tensor values (optimizer param_groups, ...) are read with
    torch.load(weights_only=True), not as arbitrary pickles."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            if "Weights only load failed" not in str(e):
                raise
            unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
            raise CheckpointError(f"refused to load {read_item.dest_index.fqn}: it asks for "
                                  f"{unsafe.group(1) if unsafe else 'a global outside the weights-only allowlist'}, "
                                  f"which a training checkpoint never contains; nothing from it was run") from None
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def _first_failure(e: BaseException) -> BaseException:
    """The underlying error of a DCP CheckpointException (which wraps each rank's)."""
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict) and failures:
        f = next(iter(failures.values()))
        return f[0] if isinstance(f, tuple) else f
    return e


def _dcp_load(state: dict, path: Path) -> None:
    reader = SafeFileSystemReader(str(path))
    reader.read_metadata()  # refuse or report here, outside DCP's wrapping of errors
    try:
        dcp.load(state, storage_reader=reader, planner=SafeLoadPlanner())
    except (CamelidError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # DCP's CheckpointException is a BaseException
        cause = _first_failure(e)
        if isinstance(cause, CheckpointError):
            raise CheckpointError(f"{path}: {cause}") from None
        raise DamagedCheckpoint(f"{path}: could not be read ({type(cause).__name__}: {str(cause)[:300]})") from None


# ----------------------------------------------------------------------------------- finding checkpoints
def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints (renamed from .partial, with trainer_state.json), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / "trainer_state.json").exists()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(run_dir: Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def read_trainer_state(path: Path) -> dict:
    f = Path(path) / "trainer_state.json"
    try:
        state = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedCheckpoint(f"{f}: missing (the checkpoint is incomplete)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedCheckpoint(f"{f}: corrupt ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise DamagedCheckpoint(f"{f}: corrupt (not a trainer state with a step)")
    return state


def check_checkpoint(path: Path) -> dict:
    """Raise DamagedCheckpoint naming what is wrong if `path` is incomplete (trainer_state.json or .metadata
    missing or corrupt, a shard missing or shorter than its metadata says); else return its trainer state.
    A .metadata that asks for code is a CheckpointError (refused, never a fallback)."""
    path = Path(path)
    state = read_trainer_state(path)
    metadata = read_dcp_metadata(path / ".metadata")
    need: dict[str, int] = {}
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        rel = getattr(info, "relative_path", None)
        if isinstance(rel, str):
            need[rel] = max(need.get(rel, 0), int(info.offset) + int(info.length))
    for rel, size in sorted(need.items()):
        f = path / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise CheckpointError(f"{path / '.metadata'}: refers to a file outside the checkpoint ({rel})")
        if not f.is_file():
            raise DamagedCheckpoint(f"{f}: shard missing (the checkpoint is incomplete)")
        if f.stat().st_size < size:
            raise DamagedCheckpoint(f"{f}: shard truncated ({f.stat().st_size} bytes, its metadata needs {size})")
    return state


def usable_checkpoints(run_dir: Path, warn=print):
    """Complete checkpoints that pass check_checkpoint, newest first; each one skipped is reported by `warn`."""
    for path in reversed(checkpoint_dirs(run_dir)):
        try:
            check_checkpoint(path)
        except DamagedCheckpoint as e:
            warn(f"warning: skipping checkpoint {path.name}: {e}")
            continue
        yield path


def latest_usable_checkpoint(run_dir: Path, warn=print) -> Path | None:
    return next(iter(usable_checkpoints(run_dir, warn)), None)


# ------------------------------------------------------------------------------------------------ saving
def save_checkpoint(run_dir: Path, step: int, model, optimizer, trainer_state: dict, keep: int = 2) -> Path:
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:08d}"
    partial = root / f".step_{step:08d}.partial"
    try:
        with reporting_disk_full(partial):
            if _rank() == 0:
                root.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(partial, ignore_errors=True)  # left by a crash
            _barrier()
            model_sd, optim_sd = get_state_dict(model, optimizer)
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(partial))
            rng = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state()
            buf = io.BytesIO()  # serialised here, so that a full disk is an OSError, not torch's "unexpected pos"
            torch.save(rng, buf)
            (partial / f"rng_rank{_rank()}.pt").write_bytes(buf.getvalue())
            _barrier()
            if _rank() == 0:
                (partial / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2) + "\n")
                fsync_tree(partial)
                old = root / f".step_{step:08d}.old"
                if final.exists():  # re-saving the same step (e.g. after a resume): the old one goes only after
                    shutil.rmtree(old, ignore_errors=True)  # the new one is in place (a crash between the two
                    final.rename(old)  # renames leaves the previous checkpoint to resume from)
                partial.rename(final)
                fsync_dir(root)
                shutil.rmtree(old, ignore_errors=True)
    except CamelidError:
        if _rank() == 0:  # never renamed, so never trusted; removed to give the space back
            shutil.rmtree(partial, ignore_errors=True)
        raise
    if _rank() == 0:
        for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


# ----------------------------------------------------------------------------------------------- loading
def _check_shapes(path: Path, model_sd: dict) -> None:
    """A CheckpointError naming the tensor if the checkpoint holds another model shape than `model`'s."""
    md = read_dcp_metadata(path / ".metadata").state_dict_metadata
    saved = {k[len("model."):]: v for k, v in md.items() if k.startswith("model.")}
    for name, t in model_sd.items():
        if not isinstance(t, torch.Tensor):
            continue
        if name not in saved:
            raise CheckpointError(f"{path}: has no tensor {name} (saved from a model of another shape?); start a "
                                  f"new run directory, or restore the model settings the run was started with")
        size = getattr(saved[name], "size", None)
        if size is not None and tuple(size) != tuple(t.shape):
            raise CheckpointError(f"{path}: tensor {name} has shape {list(size)} in the checkpoint, {list(t.shape)} "
                                  f"in this model; start a new run directory, or restore the model settings the "
                                  f"run was started with")
    extra = sorted(set(saved) - set(model_sd))
    if extra:
        raise CheckpointError(f"{path}: holds tensors this model lacks ({', '.join(extra[:3])}"
                              f"{', ...' if len(extra) > 3 else ''}); saved from a model of another shape?")


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Restore model and optimizer (resharding as needed) and this rank's RNG; return trainer_state.

    A damaged checkpoint raises DamagedCheckpoint (Trainer.resume then tries an older one); another model
    shape, or a .metadata asking for code, raises CheckpointError."""
    path = Path(path)
    state_json = check_checkpoint(path)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    _check_shapes(path, model_sd)
    state = {"model": model_sd, "optim": optim_sd}
    _dcp_load(state, path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=StateDictOptions(strict=True))
    rng_file = path / f"rng_rank{_rank()}.pt"
    if rng_file.exists():  # a rank that did not exist when this was saved keeps its seeded state
        try:
            rng = torch.load(rng_file, weights_only=True)
        except Exception as e:
            raise DamagedCheckpoint(f"{rng_file}: corrupt ({type(e).__name__}: {str(e)[:200]})") from None
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return state_json


def load_model_weights(path: Path, model) -> None:
    """Only the model part of a training checkpoint (for evaluation or export)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    path = Path(path)
    check_checkpoint(path)
    sd = get_model_state_dict(model)
    _check_shapes(path, sd)
    _dcp_load({"model": sd}, path)
    set_model_state_dict(model, sd)


def write_json(path: Path, obj) -> None:
    if _rank() == 0:
        atomic_write_json(path, obj)
