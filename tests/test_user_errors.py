"""The catalogue of user errors through the command line: each is one line on stderr that names the file,
line, key or field, exit code 2, no traceback, and no run folder left claiming to be a finished run.
(The server's bad requests are catalogued in tests/test_serve.py; pre-training's in
tests/test_resume_robustness.py.)"""

import json

import pytest

from tests.conftest import camelid

SFT_SMALL = ["--set", "sft.batch_size=8", "--set", "train.micro_batch=8", "--set", "train.max_steps=1",
             "--set", "log.progress=false"]


def _write(path, text: bytes):
    path.write_bytes(text)
    return path


CASES = {
    # name: (argv builder, words the one line must hold)
    "sft-jsonl-not-utf8": (
        lambda run, tmp: ["sft", "--model", run / "pretrain" / "model", "--out", tmp / "out", "--data",
                          _write(tmp / "chat.jsonl", b'{"prompt": "hi", "response": "ok"}\n'
                                                     b'{"prompt": "caf\xe9", "response": "ok"}\n'), *SFT_SMALL],
        ["chat.jsonl:2", "UTF-8"]),
    "rm-rating-out-of-range": (
        lambda run, tmp: ["rm", "--model", run / "sft" / "model", "--out", tmp / "out", "--data",
                          _write(tmp / "pairs.jsonl", (json.dumps({"prompt": "q", "chosen": "a", "rejected": "b",
                                                                   "rating": 7}) + "\n").encode())],
        ["pairs.jsonl:1", "rating 7"]),
    "sft-log-every-zero": (
        lambda run, tmp: ["sft", "--model", run / "pretrain" / "model", "--out", tmp / "out", "--set", "log.every=0"],
        ["log.every"]),
    "sft-unknown-key": (
        lambda run, tmp: ["sft", "--model", run / "pretrain" / "model", "--out", tmp / "out", "--set", "sft.epoch=1"],
        ["sft.epoch", "did you mean sft.epochs"]),
    "sft-out-is-a-file": (
        lambda run, tmp: ["sft", "--model", run / "pretrain" / "model", "--data", "proving-ground",
                          "--out", _write(tmp / "afile", b"x"), *SFT_SMALL],
        ["afile"]),
    "rm-reward-model-as-start-of-sft": (
        lambda run, tmp: ["sft", "--model", run / "rm-safety" / "model", "--out", tmp / "out", *SFT_SMALL],
        ["rm-safety", "reward model"]),
    "quickstart-set-without-stage": (
        lambda run, tmp: ["quickstart", "--out", tmp / "qs", "--set", "train.lr=1"],
        ["--set train.lr=1", "STAGE.section.key=value"]),
    "generate-no-such-checkpoint": (
        lambda run, tmp: ["generate", "--model", tmp / "nowhere", "--prompt", "hi"],
        ["nowhere"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line_exit_2(smoke_run, tmp_path, case):
    build, words = CASES[case]
    argv = build(smoke_run[0], tmp_path)
    r = camelid(*argv, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"camelid {argv[0]}: error:"), r.stderr[-3000:]
    assert all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "out" / "complete.key").exists() and not (tmp_path / "out" / "model").exists()
