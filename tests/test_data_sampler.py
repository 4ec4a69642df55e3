"""MixtureSampler: shares, determinism, exact resume on any world size, epochs, validation windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from camelid import Tokenizer
from camelid.data import MixtureSampler, prepare_data
from camelid.data.sampler import BLOCK, _permute
from camelid.errors import CamelidError

WEIGHTS = {"big": 0.6, "mid": 0.25, "small": 0.1, "tiny": 0.05}


def _doc(src: str, i: int) -> str:
    rng = np.random.default_rng(hash((src, i)) % 2**32)
    return f"{src} {i}: " + " ".join(str(x) for x in rng.integers(0, 1000, 30)) + "\n"


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampler")
    tok = Tokenizer.train([_doc(s, i) for s in WEIGHTS for i in range(20)], root / "tok", vocab_size=300)
    sizes = {"big": 300, "mid": 120, "small": 60, "tiny": 40}
    sources = {}
    for name, n in sizes.items():
        f = root / f"{name}.jsonl"
        f.write_text("".join(json.dumps({"text": _doc(name, i)}) + "\n" for i in range(n)))
        sources[name] = {"type": "jsonl", "paths": [str(f)], "weight": WEIGHTS[name], "val_fraction": 0.1}
    prepare_data(tok, root / "data", mixture={"name": "t", "sources": sources}, workers=1, progress=False)
    return root / "data", tok


def test_shares_match_weights(data):
    s = MixtureSampler(data[0], seq_len=32, seed=3)
    locs = s.locate(range(10_000))
    counts = {k: 0 for k in WEIGHTS}
    for src, _ in locs:
        counts[src] += 1
    for k, w in WEIGHTS.items():
        assert abs(counts[k] / 10_000 - w) <= 0.1 * w, (k, counts[k])
    assert counts == s.windows_per_source(10_000)
    # and the tokens themselves come from the right source: each window decodes to text of its source
    tok = data[1]
    for (src, _), w in zip(locs[:50], s.windows(range(50))):
        assert src in tok.decode(w.tolist()) or len(set(w.tolist())) > 5


def test_shares_follow_custom_weights(data):
    s = MixtureSampler(data[0], seq_len=32, weights={"big": 1, "tiny": 1})
    c = s.windows_per_source(10_000)
    assert c["mid"] == c["small"] == 0 and abs(c["big"] - 5000) <= 500 and abs(c["tiny"] - 5000) <= 500
    with pytest.raises(CamelidError, match="unknown source"):
        MixtureSampler(data[0], seq_len=32, weights={"nope": 1})


def test_windows_are_a_pure_function_of_seed_and_index(data):
    a = MixtureSampler(data[0], seq_len=32, seed=7)
    b = MixtureSampler(data[0], seq_len=32, seed=7)
    idx = [9000, 5, 4096, 12_345, 0, 5]
    w = a.windows(idx)
    assert w.dtype == torch.long and w.shape == (6, 33)
    assert torch.equal(w, b.windows(idx))
    assert torch.equal(w[1], a.windows(range(6))[5]) and torch.equal(w[1], w[5])
    assert torch.equal(w[0], b.windows(range(8990, 9010))[10])
    assert not torch.equal(a.windows(range(64)), MixtureSampler(data[0], seq_len=32, seed=8).windows(range(64)))


def test_resume_continues_identical_windows(data):
    ref = MixtureSampler(data[0], seq_len=32, seed=1)
    stream = [ref.next_batch(8) for _ in range(10)]
    s = MixtureSampler(data[0], seq_len=32, seed=1)
    for _ in range(4):
        s.next_batch(8)
    state = json.loads(json.dumps(s.state_dict()))  # JSON-serialisable, as saved in a checkpoint
    r = MixtureSampler(data[0], seq_len=32, seed=1)
    r.load_state_dict(state)
    for k in range(4, 10):
        assert torch.equal(r.next_batch(8), stream[k])
    assert r.epochs() == ref.epochs()


def test_any_world_size_sees_the_same_global_stream(data):
    one = MixtureSampler(data[0], seq_len=32, seed=2)
    global_batches = [one.next_batch(8) for _ in range(3)]
    ranks = [MixtureSampler(data[0], seq_len=32, seed=2) for _ in range(4)]
    for g in global_batches:
        parts = [r.next_batch(2, rank=i, world_size=4) for i, r in enumerate(ranks)]
        assert torch.equal(torch.cat(parts), g)
    # resume a 4-rank run on 2 ranks: the stream goes on unchanged
    state = ranks[0].state_dict()
    two = [MixtureSampler(data[0], seq_len=32, seed=2) for _ in range(2)]
    for r in two:
        r.load_state_dict(state)
    nxt = one.next_batch(8)
    assert torch.equal(torch.cat([r.next_batch(4, rank=i, world_size=2) for i, r in enumerate(two)]), nxt)


def test_state_from_other_data_is_refused(data, tmp_path):
    s = MixtureSampler(data[0], seq_len=32)
    state = s.state_dict()
    with pytest.raises(CamelidError, match="different data"):
        s.load_state_dict({**state, "data_hash": "0123456789abcdef"})
    with pytest.raises(CamelidError, match="seq_len 64 != 32"):
        s.load_state_dict({**state, "seq_len": 64})
    other = MixtureSampler(data[0], seq_len=32, weights={"big": 1})
    with pytest.raises(CamelidError, match="weights"):
        other.load_state_dict({**state, "consumed": 10})
    other.load_state_dict({**state, "consumed": 10}, strict=False)
    assert other.consumed == 10
    with pytest.raises(CamelidError, match="not a MixtureSampler state"):
        s.load_state_dict({"foo": 1})


def test_epochs_and_sampling_without_replacement(data):
    s = MixtureSampler(data[0], seq_len=32, seed=0)
    tokens = s.source_tokens()
    n = s._n_windows["tiny"]
    # the first epoch of a source visits each of its windows exactly once
    first = [st for src, st in s.locate(range(BLOCK * 2)) if src == "tiny"][:n]
    assert len(first) == n and len(set(first)) == n
    assert all(st % 32 == first[0] % 32 for st in first)  # one grid per epoch (shifted per epoch)
    s.consumed = 5000
    counts = s.windows_per_source()
    assert s.epochs() == pytest.approx({k: counts[k] * 32 / tokens[k] for k in WEIGHTS})
    # epochs per source follow weight / size, as LLaMA's Table 1 does
    ratio = (WEIGHTS["tiny"] / tokens["tiny"]) / (WEIGHTS["big"] / tokens["big"])
    assert s.epochs()["tiny"] / s.epochs()["big"] == pytest.approx(ratio, rel=0.05)
    for n in (1, 2, 3, 10, 1000, 4097):
        assert sorted(_permute(np.arange(n), n, np.uint64(12345)).tolist()) == list(range(n))


def test_val_windows_are_fixed_and_held_out(data):
    s = MixtureSampler(data[0], seq_len=16, seed=0)
    v = s.val_windows("mid", 4)
    assert v.shape == (4, 17) and torch.equal(v, MixtureSampler(data[0], seq_len=16, seed=9).val_windows("mid", 4))
    mixed = s.val_windows(None, 20)
    assert mixed.shape == (20, 17)
    tok = data[1]
    val_text = tok.decode(v[0].tolist())
    train = MixtureSampler(data[0], seq_len=16, weights={"mid": 1})
    train_text = " ".join(tok.decode(w.tolist()) for w in train.windows(range(train._n_windows["mid"])))
    assert val_text.strip() and val_text not in train_text
    with pytest.raises(CamelidError, match="unknown source"):
        s.val_windows("nope", 2)


def test_sampler_errors(data, tmp_path):
    with pytest.raises(CamelidError, match="no manifest.json"):
        MixtureSampler(tmp_path, seq_len=8)
    with pytest.raises(CamelidError, match="fewer than seq_len"):
        MixtureSampler(data[0], seq_len=100_000)
    with pytest.raises(CamelidError, match="outside world size"):
        MixtureSampler(data[0], seq_len=8).next_batch(2, rank=2, world_size=2)
