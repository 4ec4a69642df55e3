"""`camelid sft` and `camelid eval` end to end on the quickstart's smoke model, and the quickstart's SFT stage."""

import json

import pytest
import torch

from camelid.tasks import TASKS
from tests.conftest import camelid


def test_quickstart_sft_stage(smoke_run):
    out, stdout = smoke_run
    assert "supervised fine-tuning" in stdout and "held-out proving ground" in stdout
    assert "overall" in stdout and "GAtt t>=3" in stdout
    report = json.loads((out / "quickstart.json").read_text())["sft"]
    for key in ("accuracy_base", "accuracy_sft", "tasks_base", "tasks_sft", "gatt_adherence_sft"):
        assert key in report
    assert (out / "sft" / "model" / "tokenizer.model").exists()
    summary = json.loads((out / "sft" / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["packing"]["packed"] == 264


def _write_chat(path, n=40):
    lines = []
    for i in range(n):
        if i % 2:
            lines.append({"prompt": f"Say {i}.", "response": f"{i}"})
        else:
            lines.append({"messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": f"Double {i}?"},
                                       {"role": "assistant", "content": f"{2 * i}"},
                                       {"role": "user", "content": "Thanks."},
                                       {"role": "assistant", "content": "You are welcome."}]})
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def test_sft_cli_jsonl_resume_and_eval(smoke_run, tmp_path):
    out, _ = smoke_run
    base = out / "pretrain" / "model"
    data = tmp_path / "chat.jsonl"
    _write_chat(data)
    run = tmp_path / "run"
    common = ["--model", base, "--data", data, "--out", run, "--set", "sft.batch_size=8", "--set", "train.lr=1e-3",
              "--set", "log.progress=false", "--set", "log.every=1"]
    r = camelid("sft", *common, "--max-steps", 2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "dialogs packed into" in r.stdout
    r = camelid("sft", *common, "--max-steps", 2)
    assert r.returncode == 2 and "--resume" in r.stderr  # a second run into the same folder is refused
    r = camelid("sft", *common, "--max-steps", 3, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed at step 2" in r.stdout
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows if "split" not in x] == [1, 2, 3]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["packing"]["packed"] == 40
    from camelid.checkpoint import load_model
    before, after = load_model(base), load_model(run / "model")
    assert not torch.equal(before.output.weight, after.output.weight)  # something was learnt

    rep = tmp_path / "eval.json"
    r = camelid("eval", "--model", run / "model", "--tasks", "proving-ground", "--n", 18, "--gatt-dialogs", 2,
                "--turns", 3, "--out", rep)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(rep.read_text())
    assert {"accuracy", "tasks", "refusal_rate", "gatt_adherence"} <= set(report)
    assert len(report["tasks"]) == len(TASKS) and set(report["gatt_adherence"]) == {"1", "2", "3"}
    assert "refusal rate" in r.stdout
    bad = camelid("eval", "--model", run / "model", "--tasks", "add,nope")
    assert bad.returncode == 2 and "unknown task" in bad.stderr


def test_sft_bad_data_is_refused(smoke_run, tmp_path):
    out, _ = smoke_run
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "hi", "response": "yo"}\n{"prompt": "x"}\n')
    r = camelid("sft", "--model", out / "pretrain" / "model", "--data", data, "--out", tmp_path / "r")
    assert r.returncode == 2 and "bad.jsonl:2" in r.stderr
    r = camelid("sft", "--out", tmp_path / "r2")
    assert r.returncode == 2 and "--model" in r.stderr


def test_stages_that_cannot_run_distributed_refuse_under_torchrun(tmp_path, monkeypatch):
    """No silent wrong run: under torchrun (WORLD_SIZE > 1) a one-process stage refuses before touching files,
    and so does an option a distributed stage cannot honour (PPO's value head has no tensor-parallel plan)."""
    from dataclasses import replace

    from camelid.config import ConfigError
    from camelid.quickstart import stages
    from camelid.rlhf.ppo import PPO
    from camelid.train.stage import run_stage

    # every stage runs under torchrun (tests/test_distributed_stages.py), the quickstart with them
    assert all(stage.distributed for stage in stages().values())
    monkeypatch.setenv("WORLD_SIZE", "2")
    one_process = replace(PPO, distributed=False)
    with pytest.raises(ConfigError, match="camelid ppo runs in one process for now"):
        run_stage(one_process, PPO.config(), tmp_path / "ppo")
    assert not (tmp_path / "ppo").exists()
    cfg = PPO.config()
    cfg.model.init_from, cfg.ppo.reward_helpful, cfg.train.tp = "policy", "rm", 2
    with pytest.raises(ConfigError, match="train.tp: PPO shards its policy and value model with FSDP only"):
        run_stage(PPO, cfg, tmp_path / "ppo-tp")
