"""What a crash, a full disk or a crafted file leaves behind: loading never runs code from a checkpoint, resume
falls back past a damaged checkpoint and a torn metrics line, a full disk is one line and nothing half-written is
trusted, and bad settings or data are one-line errors naming the file, line or key."""

import errno
import json
import os
import pickle
import shutil

import pytest
import torch

from camelid.checkpoint import CheckpointError
from camelid.config import ConfigError, load_config
from camelid.errors import CamelidError, DiskFull
from camelid.fsutil import iter_jsonl
from camelid.model import ModelArgs, Transformer
from camelid.train import checkpointing as ckpt
from camelid.train import metrics as metrics_module
from camelid.train.export import export_checkpoint
from camelid.train.loop import Trainer, resolve_device
from camelid.train.objectives import LanguageModeling
from camelid.train.synthetic import SyntheticTokens
from tests.conftest import camelid
from tests.test_train_loop import ARGS, make_trainer

STEPS = 6


def fit_with_checkpoints(run_dir, steps=STEPS, on_step=None, **kw):
    """A trainer checkpointing every 2 steps (keep 2), fitted; returns it."""
    t = make_trainer(run_dir, steps=steps, **kw)
    t.cfg.checkpoint.every, t.cfg.checkpoint.keep = 2, 2
    t.fit(on_step=on_step)
    return t


def resumed(run_dir, steps=STEPS, **kw):
    t = make_trainer(run_dir, steps=steps, **kw)
    t.cfg.checkpoint.every, t.cfg.checkpoint.keep = 2, 2
    return t


def train_losses(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "split" not in r]


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run every interrupted one must match bitwise."""
    run = tmp_path_factory.mktemp("straight")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = fit_with_checkpoints(run)
    finally:
        torch.set_num_threads(n)
    return run, train_losses(run), params(t.model)


# ---------------------------------------------------------------------------------- no code from a checkpoint

class Marker:
    """A pickle that, if loaded, creates a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


@pytest.mark.parametrize("how", ["export", "resume", "cli-export"])
def test_crafted_metadata_is_refused_without_running_it(tmp_path, how, one_thread):
    run = tmp_path / "run"
    run.mkdir()
    make_trainer(run, steps=2).fit()
    step = ckpt.latest_checkpoint(run)
    marker = tmp_path / "MARKER"
    (step / ".metadata").write_bytes(pickle.dumps(Marker(marker)))
    if how == "export":
        with pytest.raises(CheckpointError, match=r"\.metadata: refused to load: it asks for posix\.system"):
            export_checkpoint(run, tmp_path / "out")
    elif how == "resume":
        with pytest.raises(CheckpointError, match=r"\.metadata: refused to load: it asks for posix\.system"):
            make_trainer(run, steps=4).resume()
    else:
        r = camelid("export", step, tmp_path / "out")
        assert r.returncode == 2 and "refused to load" in r.stderr and "posix.system" in r.stderr
        assert "Traceback" not in r.stderr
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_crafted_bytes_in_a_shard_are_refused(tmp_path, one_thread):
    """Non-tensor values (optimizer param_groups) are read weights-only, never as arbitrary pickles."""
    run = tmp_path / "run"
    run.mkdir()
    t = make_trainer(run, steps=1)
    t.fit()
    marker = tmp_path / "MARKER"
    from torch.distributed.checkpoint.state_dict import get_state_dict
    import torch.distributed.checkpoint as dcp

    model_sd, optim_sd = get_state_dict(t.model, t.optimizer)
    optim_sd["param_groups"][0]["lr"] = Marker(marker)
    step = ckpt.latest_checkpoint(run)
    for f in step.glob("*.distcp"):
        f.unlink()
    (step / ".metadata").unlink()
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(step))
    with pytest.raises(CheckpointError, match="refused to load optim.param_groups"):
        ckpt.load_checkpoint(step, t.model, t.optimizer)
    assert not marker.exists()


def test_safe_reader_admits_real_metadata(tmp_path, one_thread):
    make_trainer(tmp_path, steps=1).fit()
    md = ckpt.read_dcp_metadata(ckpt.latest_checkpoint(tmp_path) / ".metadata")
    assert any(k.startswith("model.") for k in md.state_dict_metadata)
    assert isinstance(ckpt.SafeFileSystemReader(str(tmp_path)), torch.distributed.checkpoint.FileSystemReader)


# -------------------------------------------------------------------------- damaged newest checkpoint: fall back

def _missing_shard(step):
    next(step.glob("*.distcp")).unlink()


def _truncated_shard(step):
    f = next(step.glob("*.distcp"))
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _corrupt_state(step):
    (step / "trainer_state.json").write_text('{"stage": "train", "st')


def _missing_metadata(step):
    (step / ".metadata").unlink()


def _corrupt_metadata(step):
    (step / ".metadata").write_bytes(b"\x80\x04garbage")


@pytest.mark.parametrize("damage, message", [
    (_missing_shard, "shard missing"),
    (_truncated_shard, "shard truncated"),
    (_corrupt_state, "trainer_state.json: corrupt"),
    (_missing_metadata, ".metadata: missing"),
    (_corrupt_metadata, ".metadata: corrupt"),
])
def test_damaged_newest_checkpoint_falls_back(tmp_path, straight, damage, message, capsys, one_thread):
    run = tmp_path / "run"
    run.mkdir()
    fit_with_checkpoints(run, steps=4)  # checkpoints at steps 2 and 4
    newest = ckpt.latest_checkpoint(run)
    assert newest.name == "step_00000004"
    damage(newest)
    t = resumed(run)
    assert t.resume() and t.step == 2  # the previous complete one, with a warning naming what was wrong
    out = capsys.readouterr().out
    assert "step_00000004 is not usable" in out and message in out
    t.fit()
    assert train_losses(run) == straight[1]  # bitwise the uninterrupted run
    assert all(torch.equal(p, straight[2][n]) for n, p in t.model.named_parameters())


def test_export_skips_a_damaged_newest_checkpoint(tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    run.mkdir()
    t = make_trainer(run, steps=4)
    t.cfg.checkpoint.every, t.extra_state = 2, {"model_args": t.model.args.to_dict()}
    t.fit()
    newest = ckpt.latest_checkpoint(run)
    _truncated_shard(newest)
    out = export_checkpoint(run, tmp_path / "exported")
    from camelid.checkpoint import load_model

    ref = Transformer(ModelArgs(**ARGS))
    ckpt.load_model_weights(run / "checkpoints" / "step_00000002", ref)
    assert all(torch.equal(p, ref.state_dict()[n]) for n, p in load_model(out, dtype=torch.float32).state_dict().items())
    assert "skipping checkpoint step_00000004" in capsys.readouterr().out
    with pytest.raises(CheckpointError, match="shard truncated"):
        export_checkpoint(newest, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_no_usable_checkpoint_is_one_error(tmp_path, one_thread):
    run = tmp_path / "run"
    run.mkdir()
    make_trainer(run, steps=2).fit()  # one checkpoint only
    _missing_shard(ckpt.latest_checkpoint(run))
    with pytest.raises(CamelidError, match="no usable checkpoint to resume from .*shard missing"):
        make_trainer(run, steps=4).resume()


def test_resume_with_another_model_shape_names_the_tensor(tmp_path, one_thread):
    run = tmp_path / "run"
    run.mkdir()
    make_trainer(run, steps=2).fit()
    cfg = make_trainer(run, steps=4).cfg
    other = Transformer(ModelArgs(**{**ARGS, "dim": 48, "ffn_hidden_dim": 96}))
    t = Trainer(model=other, objective=LanguageModeling(), data=SyntheticTokens(64, 16), cfg=cfg, run_dir=run,
                total_steps=4, seq_len=16)
    with pytest.raises(CheckpointError, match=r"tensor tok_embeddings.weight has shape \[64, 32\] in the "
                                              r"checkpoint, \[64, 48\] in this model"):
        t.resume()
    deeper = Transformer(ModelArgs(**{**ARGS, "n_layers": 3}))
    t = Trainer(model=deeper, objective=LanguageModeling(), data=SyntheticTokens(64, 16), cfg=cfg, run_dir=run,
                total_steps=4, seq_len=16)
    with pytest.raises(CheckpointError, match="has no tensor layers.2"):
        t.resume()


# ------------------------------------------------------------------------------------------- torn metrics line

def test_torn_metrics_line_is_dropped_on_resume(tmp_path, straight, capsys, one_thread):
    run = tmp_path / "run"
    run.mkdir()
    fit_with_checkpoints(run, steps=5)  # checkpoint at 4 (and 5)
    shutil.rmtree(ckpt.latest_checkpoint(run))  # as if killed between the step-5 row and its checkpoint
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss": 3.1')  # the disk filled mid-line
    t = resumed(run)
    assert t.resume() and t.step == 4
    t.fit()
    assert "dropped a torn last line" in capsys.readouterr().out
    assert train_losses(run) == straight[1]


def test_a_bad_line_inside_metrics_names_it(tmp_path, one_thread):
    run = tmp_path / "run"
    run.mkdir()
    fit_with_checkpoints(run, steps=4)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = "not json"
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    t = resumed(run)
    assert t.resume()
    with pytest.raises(CamelidError, match=r"metrics.jsonl:2: not a JSON object"):
        t.fit()


# --------------------------------------------------------------------------------------------------- disk full

def enospc(what):
    return OSError(errno.ENOSPC, "No space left on device", str(what))


class DiskFills:
    """Makes one kind of write fail with ENOSPC once `armed` (after writing part of its data, as a real full disk
    does): a DCP shard, the RNG file, trainer_state.json or a metrics row."""

    def __init__(self, monkeypatch, where):
        self.armed = False
        self.where = where
        if where == "shard":
            import torch.distributed.checkpoint.filesystem as fs

            real = fs._write_item

            def write_item(transforms, stream, data, *a, **kw):
                if self.armed:
                    stream.write(b"\0" * 100)
                    raise enospc(getattr(stream, "name", "shard"))
                return real(transforms, stream, data, *a, **kw)

            monkeypatch.setattr(fs, "_write_item", write_item)
        elif where in ("rng", "trainer_state"):
            from pathlib import Path

            real_bytes, real_text = Path.write_bytes, Path.write_text

            def write_bytes(path, data):
                if self.armed and path.name.startswith("rng_rank"):
                    real_bytes(path, data[:100])
                    raise enospc(path)
                return real_bytes(path, data)

            def write_text(path, data, *a, **kw):
                if self.armed and path.name == "trainer_state.json":
                    real_text(path, data[:10], *a, **kw)
                    raise enospc(path)
                return real_text(path, data, *a, **kw)

            monkeypatch.setattr(Path, "write_bytes", write_bytes)
            monkeypatch.setattr(Path, "write_text", write_text)
        else:  # metrics
            fills = self

            class FullOs:
                def __getattr__(self, name):
                    return getattr(os, name)

                def write(self, fd, data):
                    if fills.armed:
                        os.write(fd, bytes(data[: len(data) // 2]))
                        raise enospc("metrics.jsonl")
                    return os.write(fd, data)

            monkeypatch.setattr(metrics_module, "os", FullOs())

    def arm_at(self, step):
        return lambda row: setattr(self, "armed", True) if row["step"] == step else None


@pytest.mark.parametrize("where, last_good", [("shard", 2), ("rng", 2), ("trainer_state", 2), ("metrics", 4)])
def test_full_disk_is_reported_and_the_run_resumes_exactly(tmp_path, straight, monkeypatch, where, last_good,
                                                           one_thread):
    run = tmp_path / "run"
    run.mkdir()
    fills = DiskFills(monkeypatch, where)
    # the disk fills at step 4: while writing its checkpoint, or (metrics) the row of step 5 after it
    with pytest.raises(DiskFull, match="disk full while writing .*(partial|metrics.jsonl)"):
        fit_with_checkpoints(run, on_step=fills.arm_at(4 if where != "metrics" else 5))
    assert ckpt.latest_checkpoint(run).name == f"step_{last_good:08d}"
    assert not list((run / "checkpoints").glob(".*partial"))  # the half-written one is gone, never trusted
    text = (run / "metrics.jsonl").read_text()
    assert text.endswith("\n") and all(json.loads(x) for x in text.splitlines())  # no torn row
    monkeypatch.undo()  # space freed
    t = resumed(run)
    assert t.resume() and t.step == last_good
    t.fit()
    assert train_losses(run) == straight[1]  # the same final loss (every loss) as the uninterrupted run
    assert all(torch.equal(p, straight[2][n]) for n, p in t.model.named_parameters())


def test_torch_short_write_on_a_full_filesystem_is_disk_full(tmp_path, monkeypatch):
    """torch.save reports a full disk as "unexpected pos N vs M" (no errno); with no space left it is disk full."""
    from camelid import fsutil

    err = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert fsutil.disk_full_cause(err, tmp_path) is None  # plenty of space here: not blamed on the disk
    monkeypatch.setattr(fsutil, "_free_bytes", lambda path: 0)
    with pytest.raises(DiskFull, match=f"disk full while writing {tmp_path}"):
        with fsutil.reporting_disk_full(tmp_path):
            raise err


def test_real_full_tmpfs(tmp_path, one_thread):
    """On a real (tiny) tmpfs, where the machine allows mounting one: DCP's own failure, whichever form torch
    gives it, is reported as disk full and no partial checkpoint is left."""
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with pytest.raises(DiskFull, match="disk full while writing"):
            make_trainer(mnt, steps=1).fit()
        assert not list((mnt / "checkpoints").glob(".*partial")) and ckpt.latest_checkpoint(mnt) is None
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ------------------------------------------------------------------------------------------ one-line errors

@pytest.mark.parametrize("sets, message", [
    (["log.every=0"], "log.every: must be a positive number of steps, got 0"),
    (["log.val_batches=0"], "log.val_batches: must be positive"),
    (["checkpoint.every=-1"], "checkpoint.every: must be >= 0"),
])
def test_config_refuses_zero_or_negative_intervals(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)


def test_unavailable_device_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="train.device: cuda asked for, but this machine has no usable CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="train.device: 'gpu' is not a device"):
        resolve_device("gpu")
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")


def test_run_dir_that_cannot_be_written(tmp_path):
    from camelid.train.stage import prepare_run_dir

    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CamelidError, match=f"{f}: cannot be the run directory .*it is a file"):
        prepare_run_dir(f, resume=False)
    with pytest.raises(CamelidError, match=f"{f / 'sub'}: cannot be the run directory .*{f} is a file"):
        prepare_run_dir(f / "sub", resume=False)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.geteuid() == 0:  # root writes anywhere: make the probe see what a read-only filesystem says
            import tempfile

            def read_only(*a, **kw):
                raise OSError(errno.EROFS, "Read-only file system")

            mp = pytest.MonkeyPatch()
            mp.setattr(tempfile, "mkstemp", read_only)
        with pytest.raises(CamelidError, match=rf"{ro / 'run'}: cannot write the run directory \(--out\) there"):
            prepare_run_dir(ro / "run", resume=False)
    finally:
        if os.geteuid() == 0:
            mp.undo()
        ro.chmod(0o755)


def test_invalid_utf8_jsonl_names_file_and_line(tmp_path):
    from camelid.data.chat import ChatDataError, load_chat_jsonl

    p = tmp_path / "sft.jsonl"
    p.write_bytes(b'{"prompt": "hi", "response": "ok"}\n{"prompt": "caf\xe9", "response": "x"}\n')
    with pytest.raises(ChatDataError, match=f"{p}:2: not valid UTF-8 \\(byte 0xe9 at column 16\\)"):
        load_chat_jsonl(p)
    with pytest.raises(ValueError, match=f"{p}:2: not valid UTF-8"):
        list(iter_jsonl(p))
    skipped = []
    assert len(list(iter_jsonl(p, on_bad=lambda where, e: skipped.append((where, e.msg))))) == 1
    assert skipped == [(f"{p}:2", "not valid UTF-8 (byte 0xe9 at column 16)")]


@pytest.mark.parametrize("line, message", [
    (b'{"prompt": "q", "chosen": "a", "rejected": "b", "rating": 7}',
     r"pairs.jsonl:2: rating 7 is not one of the allowed ratings: significantly_better, better, slightly_better, "
     r"negligibly_better"),
    (b'{"prompt": "q", "chosen": "a", "rejected": "b", "rating": "great"}', r"pairs.jsonl:2: unknown rating 'great'"),
    (b'{"prompt": "q", "chosen": "a"', r"pairs.jsonl:2: invalid JSON .*--set rm.skip_bad=true"),
    (b'{"prompt": "\xff", "chosen": "a", "rejected": "b"}', r"pairs.jsonl:2: invalid JSON \(not valid UTF-8.*"
                                                            r"--set rm.skip_bad=true"),
])
def test_bad_preference_lines_name_file_line_and_the_fix(tmp_path, line, message):
    from camelid.data.preferences import load_pairs

    p = tmp_path / "pairs.jsonl"
    p.write_bytes(b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n' + line + b"\n")
    with pytest.raises(CamelidError, match=message):
        load_pairs(p)
    assert len(load_pairs(p, skip_bad=True)) == 1


# ------------------------------------------------------------------------------------ the same, from the CLI

@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory):
    from pydoc_data.topics import topics

    from camelid.tokenizer import Tokenizer

    return Tokenizer.train(list(topics.values()), tmp_path_factory.mktemp("tok512"), vocab_size=512).model_path


def test_pretrain_refuses_another_tokenizer_than_the_datas(smoke_run, small_tokenizer, tmp_path):
    data = smoke_run[0] / "data"
    want = json.loads((data / "manifest.json").read_text())["tokenizer"]
    r = camelid("pretrain", "--out", tmp_path / "r", "--max-steps", 1, "--set", f"data.dir={data}",
                "--set", f"data.tokenizer={small_tokenizer}")
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert f"data.tokenizer: {small_tokenizer} (512 pieces" in line
    assert f"is not the tokenizer the data in {data} was prepared with ({want['vocab_size']} pieces, " \
           f"sha256 {want['sha256'][:12]}" in line
    assert not (tmp_path / "r" / "model").exists() and not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.parametrize("case, message", [
    ("log.every=0", "log.every: must be a positive number of steps, got 0"),
    ("train.device=cuda", "train.device: cuda asked for, but this machine has no usable CUDA GPU"),
    ("out-is-a-file", "cannot be the run directory (--out): it is a file"),
    ("out-under-a-file", "is a file"),
])
def test_pretrain_one_line_errors(smoke_run, tmp_path, case, message):
    if case == "train.device=cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "r"
    if case.startswith("out-"):
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" if case == "out-is-a-file" else tmp_path / "f" / "r"
    sets = ["--set", f"data.dir={smoke_run[0] / 'data'}"] + ([] if case.startswith("out-") else ["--set", case])
    r = camelid("pretrain", "--out", out, "--max-steps", 1, *sets)
    assert r.returncode == 2, r.stderr[-2000:]
    assert message in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
