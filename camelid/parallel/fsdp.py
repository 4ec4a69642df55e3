"""FSDP2 (`fully_shard`) per TransformerBlock and at the root (torchtitan's `apply_fsdp`)."""

from __future__ import annotations

import torch
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method


def apply_fsdp(model, dp_mesh, param_dtype: torch.dtype | None = torch.bfloat16,
               reduce_dtype: torch.dtype = torch.float32, reshard_after_forward: bool = True):
    """Shard parameters, gradients and optimizer state over `dp_mesh`.

    Parameters are gathered in `param_dtype` (bf16) and gradients reduced in fp32; the sharded fp32
    copy is the master. Blocks are wrapped one by one so that the all-gather of block i+1 overlaps
    the compute of block i (FSDP2 prefetches the next block in forward and backward).

    Gradients are reduced as a SUM (divide factor 1): the training loop already divides each rank's
    loss by the target count of the whole global batch, so the sum is the global mean. This also
    sidesteps gloo reduce-scatter builds that summed where they should have averaged.
    """
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    blocks = list(model.layers)
    for i, block in enumerate(blocks):
        # The last block is needed again at the start of backward: keeping it gathered saves an all-gather.
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward and i < len(blocks) - 1)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    for name in getattr(model, "fsdp_forward_methods", ()):  # methods a caller runs instead of forward
        register_fsdp_forward_method(model, name)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM
    return model
