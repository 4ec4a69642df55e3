import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# One thread per process: the machine has 2 cores, and bitwise checks need a fixed thread count.
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def camelid(*args, **kw):
    return subprocess.run([sys.executable, "-m", "camelid", *map(str, args)], env=ENV, capture_output=True,
                          text=True, check=False, **kw)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """`camelid quickstart --smoke`: the main job at toy size (tokenizer, data, pre-training, plot, sample)."""
    out = tmp_path_factory.mktemp("quickstart")
    r = camelid("quickstart", "--smoke", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r.stdout


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and a busy machine does not stall them; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
