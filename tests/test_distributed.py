"""Distributed training on CPU with gloo: every layout logs the single-process losses (torchtitan's parity checks)."""

import json
import subprocess
import sys

import pytest
import torch

from camelid.quickstart import SMOKE
from tests.conftest import ENV

STEPS = 5


def run_pretrain(data_dir, out, *sets, nproc=1, steps=STEPS, resume=False):
    sets = [s for s in SMOKE["pretrain"] if not s.startswith(("train.max_steps", "log.", "checkpoint."))] + [
        f"data.dir={data_dir}", "log.every=1", "log.val_every=0", "log.progress=false", "train.dtype=fp32",
        "checkpoint.every=3", *sets]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    cmd = launcher + ["-m", "camelid", "pretrain", "--out", str(out), "--max-steps", str(steps)] + \
        (["--resume"] if resume else []) + [x for s in sets for x in ("--set", s)]
    r = subprocess.run(cmd, env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "split" not in r}


@pytest.fixture(scope="module")
def baseline(smoke_run, tmp_path_factory):
    return run_pretrain(smoke_run[0] / "data", tmp_path_factory.mktemp("single"))


def assert_same_losses(got, want, rel=1e-5):
    assert sorted(got) == sorted(want)
    for step in want:
        assert abs(got[step] - want[step]) <= rel * abs(want[step]), (step, got[step], want[step])


@pytest.mark.parametrize("layout", [
    ["train.dp_shard=2"],                                            # FSDP2
    ["train.tp=2", "train.dp_shard=1"],                              # tensor + sequence parallel
    ["train.tp=2", "train.dp_shard=1", "train.loss_parallel=true"],  # ... with vocabulary-parallel loss
    ["train.dp_shard=2", "train.activation_checkpointing=\"full\""],  # FSDP with activation checkpointing
], ids=["fsdp", "tp-sp", "tp-loss-parallel", "fsdp-ac"])
def test_two_ranks_match_single_process(smoke_run, baseline, tmp_path, layout):
    got = run_pretrain(smoke_run[0] / "data", tmp_path / "run", *layout, nproc=2)
    assert_same_losses(got, baseline)


def test_checkpoint_from_two_ranks_resumes_on_one(smoke_run, baseline, tmp_path):
    run = tmp_path / "run"
    run_pretrain(smoke_run[0] / "data", run, "train.dp_shard=2", nproc=2, steps=3)
    assert (run / "checkpoints" / "step_00000003" / ".metadata").exists()
    got = run_pretrain(smoke_run[0] / "data", run, steps=STEPS, resume=True)
    assert_same_losses(got, baseline)


def test_sharded_checkpoint_exports_to_hf(smoke_run, tmp_path):
    from camelid.checkpoint import load_model
    from camelid.train.export import export_checkpoint

    run = tmp_path / "run"
    run_pretrain(smoke_run[0] / "data", run, "train.tp=2", "train.dp_shard=1", nproc=2, steps=3)
    out = export_checkpoint(run, tmp_path / "hf", to="hf")
    final = load_model(run / "model")  # the weights the run itself saved at its end
    exported = load_model(out)
    for name, p in final.state_dict().items():
        assert torch.equal(exported.state_dict()[name], p), name
    assert (out / "tokenizer.model").exists()


def test_checkpoint_from_one_rank_resumes_with_tensor_parallel(smoke_run, baseline, tmp_path):
    run = tmp_path / "run"
    run_pretrain(smoke_run[0] / "data", run, steps=3)
    got = run_pretrain(smoke_run[0] / "data", run, "train.tp=2", "train.dp_shard=1", nproc=2, steps=STEPS, resume=True)
    assert_same_losses(got, baseline)


def test_world_size_that_does_not_factor(smoke_run, tmp_path):
    from camelid.errors import CamelidError
    from camelid.parallel.mesh import ParallelDims

    with pytest.raises(CamelidError, match="not divisible by tp 2"):
        ParallelDims(3, tp=2).resolved()
    with pytest.raises(CamelidError, match="must multiply"):
        ParallelDims(4, tp=1, dp_shard=3).resolved()
    assert ParallelDims(8, tp=2).resolved().dp_shard == 4


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_leaves_gradients_unchanged(mode):
    from camelid.model import ModelArgs, Transformer
    from camelid.parallel import apply_ac

    args = ModelArgs(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=96, ffn_hidden_dim=100)
    x = torch.randint(0, 96, (2, 24))
    torch.manual_seed(0)
    plain = Transformer(args)
    torch.manual_seed(0)
    wrapped = apply_ac(Transformer(args), mode)
    assert list(wrapped.state_dict()) == list(plain.state_dict())  # names unchanged: checkpoints interoperate
    for m in (plain, wrapped):
        torch.nn.functional.cross_entropy(m(x).flatten(0, 1), x.roll(-1, 1).flatten()).backward()
    grads = dict(plain.named_parameters())
    for name, p in wrapped.named_parameters():
        assert torch.equal(p.grad, grads[name.replace("_checkpoint_wrapped_module.", "")].grad), name
