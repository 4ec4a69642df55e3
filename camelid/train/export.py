"""`camelid export`: a (sharded) training checkpoint -> one camelid, Hugging Face or Meta checkpoint.

DCP reshards on load, so a checkpoint written by any number of ranks in any FSDP/TP layout is read
into a plain single-process model here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from camelid.checkpoint import save_model
from camelid.errors import CamelidError
from camelid.model import ModelArgs, Transformer
from camelid.train import checkpointing as ckpt


def resolve_checkpoint(path: str | Path, warn=print) -> Path:
    """A checkpoints/step_N directory as given, or a run directory's newest usable checkpoint (an incomplete
    or corrupt newer one is skipped with a warning)."""
    path = Path(path)
    if (path / "trainer_state.json").exists():
        return path
    latest = ckpt.latest_usable_checkpoint(path, warn=warn)
    if latest is None:
        raise CamelidError(f"{path}: neither a training checkpoint (step_N with trainer_state.json) nor a run "
                           f"directory with complete checkpoints")
    return latest


def export_checkpoint(src: str | Path, dst: str | Path, to: str = "camelid", dtype: torch.dtype | None = None) -> Path:
    step_dir = resolve_checkpoint(src)
    state = ckpt.check_checkpoint(step_dir)  # a damaged or tampered checkpoint is refused before any loading
    if "model_args" not in state:
        raise CamelidError(f"{step_dir}/trainer_state.json: no model_args (written by an older camelid?)")
    with torch.device("meta"):
        model = Transformer(ModelArgs.from_dict(state["model_args"]))
    model.to_empty(device="cpu")
    ckpt.load_model_weights(step_dir, model)
    tok = state.get("tokenizer")
    return save_model(model, dst, format=to, tokenizer_path=tok if tok and Path(tok).exists() else None, dtype=dtype)
