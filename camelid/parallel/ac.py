"""Activation checkpointing, applied from outside the model (torchtitan's `apply_ac`).

full:      each TransformerBlock keeps only its input and recomputes everything in backward.
selective: LLaMA-1 §2.4's choice — keep the expensive activations (matmul and attention outputs) and
           recompute the cheap elementwise ones (norms, rotary, SiLU, products).
"""

from __future__ import annotations

from functools import partial

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

_aten = torch.ops.aten
SAVE_OPS = {
    _aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.linear.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_cudnn_attention.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
}


def _policy(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def apply_ac(model: torch.nn.Module, mode: str = "selective") -> torch.nn.Module:
    """Wrap every block of `model.layers` in place. Parameter names in state dicts are unchanged."""
    if mode == "none":
        return model
    if mode not in ("full", "selective"):
        raise ValueError(f"activation checkpointing must be none, selective or full, got {mode!r}")
    for name, block in list(model.layers.named_children()):
        if mode == "full":
            wrapped = checkpoint_wrapper(block, preserve_rng_state=False)
        else:
            wrapped = checkpoint_wrapper(block, preserve_rng_state=False,
                                         context_fn=partial(create_selective_checkpoint_contexts, _policy))
        model.layers.register_module(name, wrapped)
    return model
