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
def process_group(device: str = "auto"):
    """The torchrun process group (NCCL on GPUs, else gloo), opened here unless it already is; closed on the way
    out only by the session that opened it (so a pipeline holds one group across all its stages)."""
    if dist.is_initialized():
        yield
        return
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        yield
        dist.barrier()  # rank 0 may still be writing files: leave together, or gloo aborts the others
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def distributed_session(cfg):
    """A stage's `parallelize(model) -> (model, DistInfo)` from its train section, inside the process group."""
    world = int(os.environ["WORLD_SIZE"])
    with process_group(cfg.train.device):
        use_cuda = dist.get_backend() == "nccl"
        dims = ParallelDims(world, tp=cfg.train.tp, dp_shard=cfg.train.dp_shard).resolved()
        mesh, dp_mesh = build_mesh(dims, "cuda" if use_cuda else "cpu")
        t = cfg.train
        # On GPUs FSDP gathers bf16 copies (half the traffic). On CPU the gathers stay fp32 and autocast rounds
        # each matmul's inputs as a single process does, so a CPU run under torchrun computes what one process
        # computes (the quickstart's report card is the same on 1 and 2 ranks).
        param_dtype = torch.bfloat16 if t.dtype == "bf16" and use_cuda else None

        def parallelize(model):
            return parallelize_model(model, mesh, dp_mesh, dims, activation_checkpointing=t.activation_checkpointing,
                                     compile=t.compile, param_dtype=param_dtype,
                                     loss_parallel=t.loss_parallel and dims.tp > 1)

        yield parallelize
        dist.barrier()  # a stage inside a pipeline: rank 0 may still be writing its final model


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
    """The whole model's state dict on CPU, on rank 0 (the other ranks help gather it and get an empty dict);
    in one process, the model's own state dict on CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not dist.is_initialized():
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def is_sharded(model) -> bool:
    """Whether any of the model's parameters is a DTensor (sharded by FSDP or split by TP)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_copy(model):
    """A plain (unwrapped) copy of the whole model on EVERY rank, on the model's device: FSDP / TP shards gathered
    (a collective). What a rank generates with: sampling from sharded weights would all-gather every layer at
    every decoded token (Llama-2 §3.2.3 measured ~20x slower)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from camelid.checkpoint import plain_names

    weights = plain_names(get_model_state_dict(model, options=StateDictOptions(full_state_dict=True)))
    return plain_model(model, weights)


def plain_model(model, weights: dict):
    """A plain model of `model`'s class and size holding `weights` (full tensors, plain names)."""
    from camelid.checkpoint import model_class

    with torch.device("meta"):
        # a reward model may hold the LM head while it trains (rm.lm_weight): the copy holds what the model holds
        plain = model_class(getattr(model, "kind", "lm"))(model.args, lm_head="output.weight" in weights)
    plain.load_state_dict(weights, strict=True, assign=True)
    if hasattr(model, "calibration"):
        plain.calibration = dict(model.calibration)
    return plain
