"""`MixtureSampler`: token windows drawn from a prepared directory by source weight, deterministically.

Window number g (a global index, counted over the whole run and all ranks) is a pure function of
(seed, g, weights, data):

- Source. The stream is cut into blocks of `BLOCK` (4,096) windows. In each block every source gets
  exactly its share (largest-remainder rounding of weight x 4,096), in an order shuffled by
  (seed, block). So shares are exact per block (stratified sampling), not merely in expectation.
- Offset. Because each block's quota is fixed, the number of windows a source has received before
  window g is known in closed form: k = block x quota + rank in block. The source's train tokens are
  cut into windows of seq_len+1 tokens with stride seq_len (each token is a target once per epoch);
  the k-th window of a source is window `perm_e(k mod n)` of epoch e = k // n, where perm_e is a
  keyed pseudo-random permutation (a Feistel network) and every epoch also shifts the window grid by
  a pseudo-random offset. Sampling is therefore without replacement within an epoch, and
  `epochs()` is exact.

The state is global (windows consumed, seed, weights, data hash), so a run resumes with the same
stream on any number of ranks: the trainer asks for global indices and rank r of w takes its slice
(`next_batch(b, rank=r, world_size=w)` does exactly that).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from camelid.data.prepare import read_manifest
from camelid.errors import CamelidError

BLOCK = 4096
STATE_VERSION = 1
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised over uint64."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _key(*parts) -> np.uint64:
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(h, "little"))


def _permute(x: np.ndarray, n: int, key: np.uint64) -> np.ndarray:
    """A keyed pseudo-random permutation of range(n), applied to x (Feistel network + cycle walking)."""
    if n <= 1:
        return np.zeros_like(x)
    bits = max(2, (n - 1).bit_length())
    bits += bits % 2
    half = bits // 2
    mask = np.uint64((1 << half) - 1)
    y = x.astype(np.uint64)
    todo = np.ones(len(y), dtype=bool)
    with np.errstate(over="ignore"):
        while todo.any():
            v = y[todo]
            left, right = v >> np.uint64(half), v & mask
            for r in range(4):
                f = _mix64(right ^ (key + np.uint64(r) * np.uint64(0x9E3779B97F4A7C15))) & mask
                left, right = right, left ^ f
            v = (left << np.uint64(half)) | right
            y[todo] = v
            todo[todo] = v >= np.uint64(n)  # cycle-walk values outside [0, n)
    return y.astype(np.int64)


def _quotas(weights: list[float], block: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    exact = w / w.sum() * block
    q = np.floor(exact).astype(np.int64)
    rest = block - int(q.sum())
    order = np.argsort(-(exact - q), kind="stable")
    q[order[:rest]] += 1
    return q


class _Stream:
    """One source's split as one virtual array over its shards."""

    def __init__(self, data_dir: Path, entry: dict, split: str, dtype: np.dtype):
        self.files = [data_dir / entry["dir"] / sh["file"] for sh in entry["shards"][split]]
        self.sizes = [sh["tokens"] for sh in entry["shards"][split]]
        self.dtype = dtype
        for f, n in zip(self.files, self.sizes):
            if not f.is_file():
                raise CamelidError(f"{f}: shard missing; re-run `camelid data prepare`")
            if f.stat().st_size != n * dtype.itemsize:
                raise CamelidError(f"{f}: {f.stat().st_size} bytes but the manifest says {n * dtype.itemsize}; "
                                   "the shard is damaged or partial: re-run `camelid data prepare`")
        self.starts = np.cumsum([0] + self.sizes)
        self.n = int(self.starts[-1])
        self._maps: list = [None] * len(self.files)

    def _map(self, i: int) -> np.ndarray:
        if self._maps[i] is None:
            self._maps[i] = np.memmap(self.files[i], dtype=self.dtype, mode="r") if self.sizes[i] else \
                np.zeros(0, self.dtype)
        return self._maps[i]

    def read(self, start: int, length: int) -> np.ndarray:
        """tokens[start:start+length], wrapping around the end (only tiny splits ever wrap)."""
        out = np.empty(length, dtype=np.int64)
        pos, filled = start % self.n, 0
        while filled < length:
            i = int(np.searchsorted(self.starts, pos, side="right")) - 1
            off = pos - int(self.starts[i])
            take = min(length - filled, self.sizes[i] - off)
            out[filled:filled + take] = self._map(i)[off:off + take]
            filled += take
            pos = (pos + take) % self.n
        return out


class MixtureSampler:
    """Windows of `seq_len + 1` tokens from a prepared directory, mixed by source weight.

    weights: None takes the mixture's weights from the manifest; a dict may name any subset of the
    sources (missing ones get weight 0). split: "train" (default) or "val".
    """

    def __init__(self, data_dir, seq_len: int, seed: int = 0, weights: dict[str, float] | None = None,
                 split: str = "train"):
        self.data_dir = Path(data_dir)
        self.manifest = read_manifest(self.data_dir)
        if not self.manifest.get("complete"):
            raise CamelidError(f"{self.data_dir}: the last `camelid data prepare` did not finish; run it again")
        if split not in ("train", "val"):
            raise CamelidError(f"split must be 'train' or 'val', not {split!r}")
        if seq_len < 1:
            raise CamelidError("seq_len must be >= 1")
        self.seq_len, self.seed, self.split = int(seq_len), int(seed), split
        self.data_hash = self.manifest["data_hash"]
        self.dtype = np.dtype(self.manifest["dtype"])
        self.sources: list[str] = list(self.manifest["sources"])
        given = self.manifest["mixture"]["weights"] if weights is None else dict(weights)
        unknown = set(given) - set(self.sources)
        if unknown:
            raise CamelidError(f"weights name unknown source(s) {sorted(unknown)}; sources: {', '.join(self.sources)}")
        raw = [float(given.get(s, 0.0)) for s in self.sources]
        if any(w < 0 or not math.isfinite(w) for w in raw) or sum(raw) <= 0:
            raise CamelidError(f"weights must be >= 0 with a positive sum, got {given}")
        self.weights = {s: w / sum(raw) for s, w in zip(self.sources, raw)}
        self._quota = _quotas(raw, BLOCK)
        self._streams: dict[str, _Stream] = {}
        self._n_windows: dict[str, int] = {}
        self._shift_ok: dict[str, bool] = {}
        L = self.seq_len + 1
        for s, q in zip(self.sources, self._quota):
            st = self._stream(s, split)
            if q == 0:
                continue
            if st.n < L:
                raise CamelidError(f"source {s!r} has {st.n:,} {split} tokens, fewer than seq_len+1 = {L:,}; "
                                   "lower seq_len, give it weight 0, or add text")
            # windows with stride seq_len; with a per-epoch shift in [0, seq_len) when the source is long enough
            shifted = (st.n - L - (self.seq_len - 1)) // self.seq_len + 1 if st.n >= L + self.seq_len - 1 else 0
            self._shift_ok[s] = shifted >= 1
            self._n_windows[s] = shifted if shifted >= 1 else (st.n - L) // self.seq_len + 1
        self._skey = {s: _key("source", self.seed, s) for s in self.sources}
        self._blocks: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.consumed = 0

    # ---- data -------------------------------------------------------------------------------------
    def _stream(self, source: str, split: str) -> _Stream:
        key = f"{split}:{source}"
        if key not in self._streams:
            self._streams[key] = _Stream(self.data_dir, self.manifest["sources"][source], split, self.dtype)
        return self._streams[key]

    def source_tokens(self, split: str | None = None) -> dict[str, int]:
        return {s: self._stream(s, split or self.split).n for s in self.sources}

    # ---- the pure function g -> window ------------------------------------------------------------
    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Source index and rank-among-its-source of every position of block b."""
        if b in self._blocks:
            self._blocks.move_to_end(b)
            return self._blocks[b]
        seq = np.repeat(np.arange(len(self.sources)), self._quota)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.seed >> 32, b, 0x5A17])))
        seq = seq[rng.permutation(BLOCK)]
        rank = np.empty(BLOCK, dtype=np.int64)
        for i in range(len(self.sources)):
            pos = np.nonzero(seq == i)[0]
            rank[pos] = np.arange(len(pos))
        self._blocks[b] = (seq, rank)
        if len(self._blocks) > 8:
            self._blocks.popitem(last=False)
        return seq, rank

    def locate(self, indices: Sequence[int]) -> list[tuple[str, int]]:
        """(source, start token) of each global window index."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and idx.min() < 0:
            raise CamelidError("window indices must be >= 0")
        src = np.empty(len(idx), dtype=np.int64)
        k = np.empty(len(idx), dtype=np.int64)
        for b in np.unique(idx // BLOCK):
            sel = idx // BLOCK == b
            seq, rank = self._block(int(b))
            r = idx[sel] % BLOCK
            src[sel] = seq[r]
            k[sel] = int(b) * self._quota[seq[r]] + rank[r]
        out: list[tuple[str, int]] = [None] * len(idx)  # type: ignore[list-item]
        for si in np.unique(src):
            s = self.sources[int(si)]
            sel = np.nonzero(src == si)[0]
            n = self._n_windows[s]
            ks = k[sel]
            epoch, j = ks // n, ks % n
            starts = np.empty(len(sel), dtype=np.int64)
            for e in np.unique(epoch):
                m = epoch == e
                key = _key(int(self._skey[s]), int(e))
                w = _permute(j[m], n, key)
                shift = int(_mix64(np.array([key], dtype=np.uint64))[0] % np.uint64(self.seq_len)) \
                    if self._shift_ok[s] else 0
                starts[m] = shift + w * self.seq_len
            for i, st in zip(sel, starts):
                out[int(i)] = (s, int(st))
        return out

    def windows(self, indices: Sequence[int]) -> torch.LongTensor:
        """Windows number `indices` (global), as a LongTensor [len(indices), seq_len + 1]."""
        locs = self.locate(indices)
        L = self.seq_len + 1
        out = np.empty((len(locs), L), dtype=np.int64)
        for i, (s, st) in enumerate(locs):
            out[i] = self._stream(s, self.split).read(st, L)
        return torch.from_numpy(out)

    def next_batch(self, batch_size: int, rank: int = 0, world_size: int = 1) -> torch.LongTensor:
        """This rank's `batch_size` windows of the next global batch (batch_size x world_size windows);
        advances the global counter by the whole global batch."""
        if not 0 <= rank < world_size:
            raise CamelidError(f"rank {rank} is outside world size {world_size}")
        start = self.consumed + rank * batch_size
        batch = self.windows(range(start, start + batch_size))
        self.consumed += batch_size * world_size
        return batch

    # ---- accounting -------------------------------------------------------------------------------
    def windows_per_source(self, n: int | None = None) -> dict[str, int]:
        """How many of the first n windows (default: those consumed) come from each source."""
        n = self.consumed if n is None else int(n)
        full, part = divmod(n, BLOCK)
        counts = full * self._quota.copy()
        if part:
            seq, _ = self._block(full)
            counts += np.bincount(seq[:part], minlength=len(self.sources))
        return {s: int(c) for s, c in zip(self.sources, counts)}

    def epochs(self, n: int | None = None) -> dict[str, float]:
        """Effective epochs per source so far: target tokens sampled / the source's tokens."""
        tokens = self.source_tokens()
        return {s: (c * self.seq_len / tokens[s] if tokens[s] else 0.0)
                for s, c in self.windows_per_source(n).items()}

    # ---- validation -------------------------------------------------------------------------------
    def val_windows(self, source: str | None = None, n: int = 16) -> torch.LongTensor:
        """n fixed validation windows from the held-out split: of one source, or (source=None) mixed by
        weight. They depend only on the data and seq_len (not on the seed), so evals are comparable."""
        L = self.seq_len + 1
        if source is None:
            names = [s for s in self.sources if self.weights[s] > 0 and self._stream(s, "val").n > 0]
            if not names:
                raise CamelidError("no source has a validation split")
            q = _quotas([self.weights[s] for s in names], n)
            parts = [self.val_windows(s, int(c)) for s, c in zip(names, q) if c > 0]
            return torch.cat(parts) if parts else torch.empty(0, L, dtype=torch.long)
        if source not in self.sources:
            raise CamelidError(f"unknown source {source!r}; sources: {', '.join(self.sources)}")
        st = self._stream(source, "val")
        if st.n == 0:
            note = self.manifest["sources"][source].get("note", "its val_fraction is 0")
            raise CamelidError(f"source {source!r} has no validation split ({note})")
        out = np.empty((n, L), dtype=np.int64)
        span = max(st.n - L, 0)
        for i in range(n):
            out[i] = st.read((i * span) // max(n - 1, 1) if n > 1 else 0, L)
        return torch.from_numpy(out)

    # ---- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "consumed": self.consumed, "seed": self.seed, "seq_len": self.seq_len,
                "split": self.split, "weights": dict(self.weights), "data_hash": self.data_hash, "block": BLOCK}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Resume. Refuses a state from different data; with strict=True also one with a different seed,
        seq_len, split or weights (strict=False keeps this sampler's settings and takes only the count)."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise CamelidError(f"not a MixtureSampler state (version {state.get('version') if isinstance(state, dict) else '?'})")
        if state["data_hash"] != self.data_hash:
            raise CamelidError(
                f"sampler state is from different data (data hash {state['data_hash']}, this directory "
                f"{self.data_dir} has {self.data_hash}): resume with the prepared directory the run started on")
        if strict:
            diffs = []
            for k in ("seed", "seq_len", "split", "block"):
                if state[k] != self.state_dict()[k]:
                    diffs.append(f"{k} {state[k]!r} != {self.state_dict()[k]!r}")
            if any(abs(state["weights"].get(s, 0.0) - w) > 1e-12 for s, w in self.weights.items()):
                diffs.append(f"weights {state['weights']} != {self.weights}")
            if diffs:
                raise CamelidError("sampler state does not match this sampler: " + "; ".join(diffs)
                                   + " (load_state_dict(state, strict=False) keeps only the window count)")
        self.consumed = int(state["consumed"])

    def describe(self) -> str:
        tokens = self.source_tokens()
        lines = [f"{'source':<20} {'weight':>7} {'tokens':>13} {'epochs':>7}"]
        ep = self.epochs()
        for s in self.sources:
            lines.append(f"{s:<20} {self.weights[s]:>7.3f} {tokens[s]:>13,} {ep[s]:>7.3f}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"MixtureSampler({str(self.data_dir)!r}, seq_len={self.seq_len}, seed={self.seed}, "
                f"sources={json.dumps(self.weights)})")
