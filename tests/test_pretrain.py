"""Pre-training end to end on the embedded corpus: the quickstart smoke run, exact resume after SIGKILL, CLI errors."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from camelid.quickstart import SMOKE
from tests.conftest import ENV, camelid


def test_quickstart_smoke_learns(smoke_run):
    out, stdout = smoke_run
    report = json.loads((out / "quickstart.json").read_text())
    pre = report["pretrain"]
    assert pre["val_ppl_after"] < 0.7 * pre["val_ppl_before"]
    assert (out / "pretrain" / "loss.png").stat().st_size > 10_000
    assert (out / "pretrain" / "model" / "tokenizer.model").exists()
    rows = [json.loads(x) for x in (out / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "split" not in r]
    assert {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu"} <= set(train[-1])
    assert train[-1]["loss"] < train[0]["loss"]
    val = [r for r in rows if r.get("split") == "val"]
    assert set(val[-1]["sources"]) == {"python-docs", "stdlib-docstrings", "stdlib-code", "kjv-bible"}
    assert "validation perplexity" in stdout and "sample:" in stdout


def test_quickstart_rerun_skips_finished_stages(smoke_run):
    out, _ = smoke_run
    before = (out / "pretrain" / "metrics.jsonl").read_text()
    r = camelid("quickstart", "--smoke", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "pretrain" / "metrics.jsonl").read_text() == before


def pretrain_args(data_dir, out, steps):
    sets = [s for s in SMOKE["pretrain"] if not s.startswith(("train.max_steps", "log.", "checkpoint."))]
    sets += [f"data.dir={data_dir}", "log.every=1", "log.val_every=0", "checkpoint.every=3", "checkpoint.keep=2",
             "log.progress=false", "train.dtype=fp32"]
    return ["pretrain", "--out", out, "--max-steps", steps] + [x for s in sets for x in ("--set", s)]


def losses(run_dir):
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "split" not in r]


def test_sigkill_then_resume_is_bitwise_identical(smoke_run, tmp_path):
    data = smoke_run[0] / "data"
    steps = 9
    r = camelid(*pretrain_args(data, tmp_path / "straight", steps))
    assert r.returncode == 0, r.stderr[-2000:]

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "camelid", *map(str, pretrain_args(data, run, steps))], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill after step 5 is logged: past the step-3 checkpoint, before step 6's
        if metrics.exists() and any(json.loads(x).get("step", 0) >= 5 for x in metrics.read_text().splitlines()):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (run / "checkpoints").is_dir()

    r = camelid(*pretrain_args(data, run, steps), "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    got, want = losses(run), losses(tmp_path / "straight")
    assert [s for s, _ in got] == list(range(1, steps + 1))  # rows after the checkpoint replaced, not duplicated
    assert got == want  # bitwise: exact float equality


def test_existing_run_needs_resume(smoke_run, tmp_path):
    r = camelid("pretrain", "--out", smoke_run[0] / "pretrain", "--config", "quickstart",
                "--set", f"data.dir={smoke_run[0] / 'data'}")
    assert r.returncode == 2 and "--resume" in r.stderr


@pytest.mark.parametrize("sets, message", [
    (["train.batch_size=3"], "train.batch_size: unknown key"),
    (["train.batch_tokens=1000"], "train.batch_tokens: 1000 is not divisible"),
    (["train.lr=fast"], "train.lr: expected float"),
    (["data.seq_len=4096"], "data.seq_len: 4096 exceeds the model's context"),
    ([], "data.dir"),
])
def test_bad_settings_are_refused_by_name(smoke_run, tmp_path, sets, message):
    base = [] if not sets else ["--set", f"data.dir={smoke_run[0] / 'data'}"]
    r = camelid("pretrain", "--out", tmp_path / "r", "--max-steps", 1, *base, *[x for s in sets for x in ("--set", s)])
    assert r.returncode == 2, r.stderr[-2000:]
    assert message in r.stderr and "Traceback" not in r.stderr
