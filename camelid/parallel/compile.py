"""torch.compile for the Transformer, in one of two scopes.

- "blocks" (torchtitan's `apply_compile`): each TransformerBlock compiled on its own. Every block shares
  one graph, so compile time does not grow with depth, parameter names stay unchanged, and FSDP's
  per-block hooks sit between graphs, where they must.
- "model": the whole forward as one graph, so the embedding, final norm and output projection fuse
  too. Only where nothing wraps the blocks (one process, or plain DDP); on this project's CPU it was no
  faster than per block and took twice as long to compile (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import torch

SCOPES = ("blocks", "model")


def apply_compile(model: torch.nn.Module, scope: str = "blocks", **kwargs) -> torch.nn.Module:
    if scope not in SCOPES:
        raise ValueError(f"compile scope must be one of {SCOPES}, got {scope!r}")
    if scope == "model":
        model.compile(**kwargs)
        return model
    for block in model.layers:
        block.compile(**kwargs)
    return model
