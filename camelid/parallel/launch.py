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
