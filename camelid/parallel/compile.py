"""torch.compile per TransformerBlock (torchtitan's `apply_compile`): every block shares one graph,
so compile time does not grow with depth, and parameter names stay unchanged."""

from __future__ import annotations

import torch


def apply_compile(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    for block in model.layers:
        block.compile(**kwargs)
    return model
