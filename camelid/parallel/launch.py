"""Single process or torchrun: the training entry points call `maybe_distributed(cfg)`."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def maybe_distributed(cfg):
    """Yield None in a plain process; under torchrun, yield a `parallelize(model) -> (model, DistInfo)`
    that applies the configured parallelism, and tear the process group down afterwards."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield None
        return
    from camelid.parallel.distributed import distributed_session

    with distributed_session(cfg) as parallelize:
        yield parallelize


@contextlib.contextmanager
def pipeline_session():
    """A pipeline of stages (the quickstart): under torchrun, one process group held across all of them (each
    stage builds its own mesh in it); yields this process's rank (0 in a plain process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield 0
        return
    import torch.distributed as dist

    from camelid.parallel.distributed import process_group

    with process_group():
        yield dist.get_rank()
