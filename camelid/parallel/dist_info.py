"""Which rank this process is and how the data is split: what the training loop needs to know about parallelism."""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    dp_rank: int = 0  # which slice of the data this rank takes
    dp_world: int = 1
    grad_average: bool = False  # True when the wrapper averages gradients over dp ranks (FSDP/DDP)
    dp_group: object = None
    loss_parallel: bool = False  # logits come vocabulary-sharded: loss and backward run under loss_parallel()

    @classmethod
    def current(cls) -> "DistInfo":
        if not dist.is_initialized():
            return cls()
        r, w = dist.get_rank(), dist.get_world_size()
        return cls(rank=r, world=w, dp_rank=r, dp_world=w)
