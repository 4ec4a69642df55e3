"""A torchrun session: process group, device mesh, and the `parallelize` that wraps a model.

Order matters and follows torchtitan: tensor parallel first (it rewrites the linear layers), then
activation checkpointing and compile per block, then FSDP around the result.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

from camelid.parallel.ac import apply_ac
from camelid.parallel.compile import apply_compile
from camelid.parallel.dist_info import DistInfo
from camelid.parallel.fsdp import apply_fsdp
from camelid.parallel.mesh import ParallelDims, build_mesh
from camelid.parallel.tp import apply_tp


@contextlib.contextmanager
def distributed_session(cfg):
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and cfg.train.device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        dims = ParallelDims(world, tp=cfg.train.tp, dp_shard=cfg.train.dp_shard).resolved()
        mesh, dp_mesh = build_mesh(dims, "cuda" if use_cuda else "cpu")
        t = cfg.train

        def parallelize(model):
            return parallelize_model(model, mesh, dp_mesh, dims, activation_checkpointing=t.activation_checkpointing,
                                     compile=t.compile, param_dtype=torch.bfloat16 if t.dtype == "bf16" else None,
                                     loss_parallel=t.loss_parallel and dims.tp > 1)

        yield parallelize
        dist.barrier()  # rank 0 may still be writing the final model: leave together, or gloo aborts the others
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def parallelize_model(model, mesh, dp_mesh, dims: ParallelDims, activation_checkpointing="none", compile=False,
                      param_dtype=None, loss_parallel=False):
    if dims.tp > 1:
        apply_tp(model, mesh["tp"], loss_parallel=loss_parallel)
    apply_ac(model, activation_checkpointing)
    if compile:
        apply_compile(model)
    if dims.dp > 1:
        shard_mesh = mesh["dp_replicate", "dp_shard"] if dims.dp_replicate > 1 else mesh["dp_shard"]
        apply_fsdp(model, shard_mesh, param_dtype=param_dtype)
    info = DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), dp_rank=dp_mesh.get_local_rank(),
                    dp_world=dims.dp, grad_average=False, dp_group=dp_mesh.get_group(), loss_parallel=loss_parallel)
    return model, info


def full_state_dict(model) -> dict:
    """The whole model's state dict on CPU on every rank (gathers FSDP / TP shards); plain names."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not dist.is_initialized():
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
