"""Post-training stages under torchrun on CPU with gloo: 2-rank SFT and reward-model runs log the
single-process losses (same global batch, fp32), and a 2-rank checkpoint resumes on one rank on the same
curve. The stage runner opens the process group and shards the model (FSDP2); rank 0 writes run files."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ENV
from tests.test_distributed import assert_same_losses

STAGES = {
    "sft": ["--data", "proving-ground", "--set", "sft.dialogs=64", "--set", "sft.instruction_dialogs=8",
            "--set", "sft.batch_size=8", "--set", "sft.seq_len=128", "--set", "sft.val_n=8",
            "--set", "sft.eval_n=0", "--set", "sft.eval_gatt=0",
            "--set", "train.warmup_steps=4"],  # LR in warmup: the same whether a run is 2 or 4 steps long
    "rm": ["--data", "proving-ground", "--kind", "helpful", "--set", "rm.prompts=16", "--set", "rm.val_prompts=8",
           "--set", "rm.samples=1", "--set", "rm.batch_pairs=8", "--set", "rm.max_len=96"],  # warmup >= 5 steps
}
START = {"sft": "pretrain", "rm": "sft"}  # the smoke run's model each stage starts from


def run_stage_cli(smoke_run, stage, out, nproc=1, steps=4, resume=False):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    cmd = launcher + ["-m", "camelid", stage, "--model", str(smoke_run[0] / START[stage] / "model"), "--out", str(out),
                      *STAGES[stage], "--set", "train.micro_batch=2", "--set", f"train.max_steps={steps}",
                      "--set", "train.dtype=fp32", "--set", "log.every=1", "--set", "log.progress=false",
                      "--set", "checkpoint.every=2"] + (["--resume"] if resume else [])
    r = subprocess.run(cmd, env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    done = [ln for ln in r.stdout.splitlines() if ln.startswith(("weights:", "reward model:"))]
    assert len(done) == 1, r.stdout  # rank 0 speaks for all ranks
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "split" not in r}, rows


@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_two_ranks_match_one_process_and_resume_on_one(smoke_run, tmp_path, stage):
    want, want_rows = run_stage_cli(smoke_run, stage, tmp_path / "one")
    got, got_rows = run_stage_cli(smoke_run, stage, tmp_path / "two", nproc=2)
    assert_same_losses(got, want)
    val = {r["step"]: r["loss"] for r in want_rows if r.get("split") == "val"}
    assert val
    assert_same_losses({r["step"]: r["loss"] for r in got_rows if r.get("split") == "val"}, val)
    assert (tmp_path / "two" / "model" / "config.json").exists()  # rank 0 saved the gathered weights
    # a 2-rank checkpoint (step 2 of 4) goes on in one process, on the same curve
    run_stage_cli(smoke_run, stage, tmp_path / "resumed", nproc=2, steps=2)
    assert (tmp_path / "resumed" / "checkpoints" / "step_00000002" / ".metadata").exists()
    resumed, _ = run_stage_cli(smoke_run, stage, tmp_path / "resumed", steps=4, resume=True)
    assert_same_losses(resumed, want)
