"""The shared training loop: schedule, accumulation invariance, NaN handling, atomic checkpoints, resume."""

import math
import subprocess
import sys

import pytest
import torch

from camelid.config import Config, ConfigError, accumulation_steps, load_config
from camelid.model import ModelArgs, Transformer
from camelid.train import checkpointing as ckpt
from camelid.train import malloc
from camelid.train.loop import Trainer, TrainingDiverged
from camelid.train.objectives import IGNORE, LanguageModeling
from camelid.train.optim import lr_at, param_groups
from camelid.train.synthetic import SyntheticTokens

ARGS = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, ffn_hidden_dim=64, max_seq_len=32)


def make_trainer(tmp_path, micro_batch=4, accum=1, steps=10, data=None, objective=None, **train):
    torch.manual_seed(0)
    cfg = load_config(None, [f"train.micro_batch={micro_batch}", "train.dtype='fp32'", "log.progress=false",
                             "log.every=1"] + [f"train.{k}={v!r}".replace("'", '"') for k, v in train.items()])
    model = Transformer(ModelArgs(**ARGS))
    return Trainer(model=model, objective=objective or LanguageModeling(), data=data or SyntheticTokens(64, 16),
                   cfg=cfg, run_dir=tmp_path, total_steps=steps, seq_len=16, accum=accum)


def test_lr_schedule_formula():
    kw = dict(lr=3e-4, warmup_steps=2000, total_steps=100_000, min_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(3e-4 / 2000)
    assert lr_at(999, **kw) == pytest.approx(3e-4 * 1000 / 2000)
    assert lr_at(2000, **kw) == pytest.approx(3e-4)
    mid = 2000 + (100_000 - 2000) // 2
    assert lr_at(mid, **kw) == pytest.approx(3e-5 + 0.5 * (3e-4 - 3e-5))
    assert lr_at(100_000, **kw) == pytest.approx(3e-5)
    assert lr_at(200_000, **kw) == pytest.approx(3e-5)  # flat after the end
    s = 30_000
    expected = 3e-5 + 0.5 * (1 + math.cos(math.pi * (s - 2000) / 98_000)) * (3e-4 - 3e-5)
    assert lr_at(s, **kw) == pytest.approx(expected)
    assert lr_at(5000, **{**kw, "min_lr_ratio": 0.1}, schedule="constant") == 3e-4


def test_logged_lr_follows_schedule(tmp_path):
    t = make_trainer(tmp_path, steps=6, warmup_steps=2, lr=1e-3)
    rows = t.fit()
    for r in (x for x in rows if "split" not in x):
        assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, lr=1e-3, warmup_steps=2, total_steps=6))


def test_weight_decay_only_on_matrices():
    model = Transformer(ModelArgs(**ARGS))
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.dim() == 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(no_decay["params"]) == 2 * ARGS["n_layers"] + 1


class RaggedTargets(SyntheticTokens):
    """Micro-batches with different numbers of target tokens: a prefix of each row is masked, by index."""

    def fetch(self, indices):
        tokens = super().fetch(indices)["tokens"]
        labels = tokens[:, 1:].clone()
        for row, g in enumerate(indices):
            labels[row, : (g * 5) % 13] = IGNORE
        return {"input": tokens[:, :-1], "labels": labels}


def grads(trainer):
    trainer.forward_backward()
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters()}


def test_accumulation_equals_one_big_batch(tmp_path):
    """4 micro-batches of B == 1 batch of 4B, also when micro-batches hold different target counts."""
    data = RaggedTargets(64, 16)
    big = grads(make_trainer(tmp_path / "a", micro_batch=8, accum=1, data=data))
    small = grads(make_trainer(tmp_path / "b", micro_batch=2, accum=4, data=data))
    for n in big:
        rel = (big[n] - small[n]).norm() / big[n].norm()
        assert rel <= 1e-6, (n, rel.item())


def test_accumulation_steps_refuses_uneven_batches():
    assert accumulation_steps(16384, 8, 256) == 8
    with pytest.raises(ConfigError, match="train.batch_tokens.*not divisible"):
        accumulation_steps(10000, 8, 256)


def test_loss_falls(tmp_path):
    rows = make_trainer(tmp_path, steps=60, lr=1e-2, warmup_steps=5).fit()
    losses = [r["loss"] for r in rows if "split" not in r]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


class NaNAt:
    """LanguageModeling, except the loss is NaN at the given steps."""

    def __init__(self, bad_steps, trainer_ref):
        self.bad, self.ref, self.inner = set(bad_steps), trainer_ref, LanguageModeling()

    def count_targets(self, batch):
        return self.inner.count_targets(batch)

    def __call__(self, model, batch):
        loss, m = self.inner(model, batch)
        return (loss * float("nan") if self.ref[0].step in self.bad else loss), m


def test_nan_step_is_skipped_and_reported(tmp_path, capsys):
    ref = []
    t = make_trainer(tmp_path, steps=5, objective=NaNAt({2}, ref))
    ref.append(t)
    before = None

    def watch(row):
        nonlocal before
        if row["step"] == 2:
            before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
        if row["step"] == 3:
            assert row.get("skipped") and not math.isfinite(row["loss"])
            for n, p in t.model.named_parameters():  # the skipped step changed nothing
                assert torch.equal(before[n], p.detach())

    rows = t.fit(on_step=watch)
    assert [r.get("skipped", False) for r in rows] == [False, False, True, False, False]
    assert "not finite; skipped" in capsys.readouterr().out


def test_repeated_nan_stops_with_usable_checkpoint(tmp_path):
    ref = []
    t = make_trainer(tmp_path, steps=20, objective=NaNAt(set(range(4, 20)), ref), max_bad_steps=3)
    ref.append(t)
    good = {}
    t_fit = t.fit

    with pytest.raises(TrainingDiverged, match="3 consecutive non-finite steps"):
        t_fit(on_step=lambda row: good.update({n: p.detach().clone() for n, p in t.model.named_parameters()})
              if row["step"] == 4 else None)
    path = ckpt.latest_checkpoint(tmp_path)
    assert path is not None
    fresh = make_trainer(tmp_path, steps=20)
    assert fresh.resume()
    for n, p in fresh.model.named_parameters():
        assert torch.equal(p, good[n]) and torch.isfinite(p).all()


def test_interrupted_checkpoint_write_keeps_last_good(tmp_path, monkeypatch):
    t = make_trainer(tmp_path, steps=2)
    t.fit()
    good = ckpt.latest_checkpoint(tmp_path)
    assert good.name == "step_00000002"
    import torch.distributed.checkpoint as dcp

    real_save = dcp.save

    def dies_half_way(state, checkpoint_id):
        real_save({"model": state["model"]}, checkpoint_id=checkpoint_id)  # some files written...
        raise KeyboardInterrupt  # ...then the process is stopped

    monkeypatch.setattr(dcp, "save", dies_half_way)
    t.total_steps = 3
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    assert ckpt.latest_checkpoint(tmp_path) == good
    assert (tmp_path / "checkpoints" / ".step_00000003.partial").exists()  # never trusted
    monkeypatch.undo()
    again = make_trainer(tmp_path, steps=3)
    assert again.resume() and again.step == 2
    again.fit()
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000003"
    assert not (tmp_path / "checkpoints" / ".step_00000003.partial").exists()


def test_keep_last_k(tmp_path):
    t = make_trainer(tmp_path, steps=6)
    t.cfg.checkpoint.every, t.cfg.checkpoint.keep = 1, 2
    t.fit()
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path)] == ["step_00000005", "step_00000006"]


def test_resume_refuses_other_data(tmp_path):
    make_trainer(tmp_path, steps=2).fit()
    other = make_trainer(tmp_path, steps=4, data=SyntheticTokens(64, 16, seed=7))
    with pytest.raises(Exception, match="different data"):
        other.resume()


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="train.mirco_batch: unknown key; did you mean train.micro_batch"):
        load_config(None, ["train.mirco_batch=4"])
    with pytest.raises(ConfigError, match="train.max_steps: expected int"):
        load_config(None, ["train.max_steps=1.5"])
    with pytest.raises(ConfigError, match="train.dtype"):
        load_config(None, ["train.dtype=int8"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlr = \n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(bad)
    assert isinstance(load_config(None), Config)


def test_lm_loss_is_the_summed_cross_entropy_of_the_labels():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]])
    labels = torch.tensor([[0, IGNORE]])
    want = -torch.log_softmax(logits[0, 0], -1)[0]
    loss = LanguageModeling().loss_sum(logits, labels)
    assert torch.allclose(loss, want)


@pytest.mark.slow  # torch.compile on CPU: tens of seconds
def test_compiled_lm_loss_equals_eager():
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 50, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, 50, (2, 7))
    labels[0, :3] = IGNORE
    results = []
    for compile_loss in (False, True):
        logits.grad = None
        loss = LanguageModeling(compile_loss=compile_loss).loss_sum(logits, labels)
        loss.backward()
        results.append((loss.detach(), logits.grad.float()))
    (l0, g0), (l1, g1) = results
    assert torch.allclose(l0, l1, rtol=1e-5) and torch.allclose(g0, g1, atol=1e-2)


MALLINFO_PROBE = """
import ctypes, ctypes.util, sys, torch
from camelid.train.malloc import keep_freed_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    assert keep_freed_memory()
block = torch.ones(24 << 18)  # 24 MB
del block
print(libc.mallinfo2().fordblks)  # free bytes the allocator still holds
"""


def _has_mallinfo2() -> bool:
    import ctypes.util

    return malloc._mallopt() is not None and hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallinfo2")


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc >= 2.33: mallopt sets the thresholds, mallinfo2 "
                                                "reads what the heap still holds")
def test_keep_freed_memory_holds_a_freed_activation():
    """After keep_freed_memory (which the trainer calls on CPUs), a freed 24 MB tensor stays in the heap
    for the next step instead of going back to the kernel (and faulting back in)."""
    held = {mode: int(subprocess.run([sys.executable, "-c", MALLINFO_PROBE, mode], capture_output=True, text=True,
                                     check=True).stdout) for mode in ("default", "keep")}
    assert held["keep"] >= 24 << 20 > held["default"]


def test_clip_gradients_is_torchs_clip_with_an_fp64_norm():
    """The gradient norm is summed in fp64 (a sharded and a whole gradient then clip alike); the scaling is
    torch's: max_norm / (norm + 1e-6) when that is below 1, nothing otherwise."""
    from camelid.train.optim import clip_gradients
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    norm = clip_gradients([a, b], 1.0)
    assert norm.dtype == torch.float32 and norm.item() == 5.0
    torch.testing.assert_close(a.grad, torch.tensor([3.0, 0.0]) / (5 + 1e-6), rtol=0, atol=0)
    torch.testing.assert_close(b.grad, torch.tensor([4.0]) / (5 + 1e-6), rtol=0, atol=0)
    assert clip_gradients([a, b], 10.0).item() == pytest.approx(1.0, rel=1e-6) and a.grad[0].item() == pytest.approx(0.6)
    g = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 1e-3
    p, q = torch.nn.Parameter(torch.zeros(1000)), torch.nn.Parameter(torch.zeros(1000))
    p.grad, q.grad = g.clone(), g.clone()
    want = torch.nn.utils.clip_grad_norm_([q], 0.01)
    got = clip_gradients([p], 0.01)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)
