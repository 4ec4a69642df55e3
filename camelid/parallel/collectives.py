"""Splitting work that is not a training step (generation, scoring, evaluation) across torchrun ranks, and
putting the pieces back together in global order. In one process every function is the identity: the
rank's share is everything and a gather returns its input.

Shares are contiguous blocks (rank r of W takes items [r*n/W, (r+1)*n/W)), so concatenating the ranks'
results in rank order gives the global order back, and a statistic over the gathered whole is the one a
single process computes.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist


def _rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def share(n: int) -> range:
    """This rank's block of n items."""
    rank, world = _rank_world()
    return range(rank * n // world, (rank + 1) * n // world)


def gather_objects(items: list) -> list:
    """Every rank's list (picklable items: texts, token lists), concatenated in rank order, on every rank."""
    if not dist.is_initialized():
        return list(items)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows (dim 0; the other dims equal on all ranks, the row counts may differ), concatenated in
    rank order, on every rank, on t's device. all_gather needs equal shapes, so each part is padded to the
    longest first (and NCCL needs GPU tensors, gloo CPU ones)."""
    if not dist.is_initialized():
        return t
    world = dist.get_world_size()
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    counts = torch.zeros(world, dtype=torch.long, device=dev)
    counts[dist.get_rank()] = t.shape[0]
    dist.all_reduce(counts)
    counts = counts.tolist()
    padded = torch.zeros((max(counts), *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[:t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:c] for part, c in zip(parts, counts)]).to(t.device)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rank0_first(make):
    """`make()` on rank 0, then on the others once it is done: rank 0 writes a file (a tokenizer, data shards, a
    cache of sampled pairs) that the other ranks then find and read instead of making it again."""
    if not dist.is_initialized():
        return make()
    out = make() if dist.get_rank() == 0 else None
    dist.barrier()
    return out if dist.get_rank() == 0 else make()


@contextlib.contextmanager
def rank0_only():
    """Around a step that rank 0 runs alone (it writes files and cannot split its work): the ranks meet at its
    end, so the others, waiting at their own `barrier()`, go on only once the files are there."""
    try:
        yield
    finally:
        barrier()
