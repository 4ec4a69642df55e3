"""`prepare_data`: every source of a mixture -> binary token shards + `manifest.json`.

Layout of a prepared directory:

    DIR/manifest.json                     what the sampler trusts (written last, atomically)
    DIR/<source>.<fingerprint>/train-00000.bin   uint16 (vocab <= 65,536) or uint32 token ids,
    DIR/<source>.<fingerprint>/val-00000.bin     np.memmap-readable; each document is <s> ... </s>

How it works, and why it is safe:
1. Each source is cut into units (files, JSONL byte ranges, Parquet row groups, corpus chunks).
   Worker processes read, filter and tokenize units into private part files (`.tmp-prepare-PID/`).
2. The main process then walks each source's units in their fixed order, drops exact duplicates
   (first occurrence wins), holds out documents whose content hash falls below `val_fraction`
   (at least one when the source has two or more), and writes train/val shards into a temporary
   folder that is renamed into place only when complete. Because the unit order is fixed, the shards
   are byte-identical whatever the number of workers.
3. The manifest is replaced atomically after each source; only sources listed there are trusted, and
   the manifest marks itself `"complete": true` only at the end. A crash at any moment leaves either
   the old manifest or a new one, never a listed shard that is partial.
4. Re-running with the same inputs (same files with the same sizes and mtimes, same source settings,
   same tokenizer) does nothing; a changed source is rebuilt alone.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from camelid.data.clean import doc_hash, hash_fraction, quality_reason
from camelid.data.mixture import Mixture, load_mixture
from camelid.data.sources import SourceSpec, fingerprint_inputs, plan_units, read_unit
from camelid.errors import CamelidError
from camelid.tokenizer import Tokenizer

FORMAT = "camelid-tokens/1"
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB per uint16 shard
_ENCODE_BATCH_BYTES = 1 << 20

# ---- worker side -----------------------------------------------------------------------------------

_WORKER: dict = {}


def _init_worker(tok: Tokenizer, dtype: str) -> None:
    _WORKER["tok"] = tok
    _WORKER["dtype"] = np.dtype(dtype)


def _tokenize_unit(job):
    """Read, filter and tokenize one unit into `part_path`. Returns the per-document metadata."""
    key, spec_dict, unit, part_path = job
    spec = SourceSpec(**spec_dict)
    tok: Tokenizer = _WORKER["tok"]
    dtype = _WORKER["dtype"]
    stats: Counter = Counter()
    lens: list[int] = []
    hashes: list[bytes] = []
    nbytes: list[int] = []
    batch: list[str] = []
    size = 0
    with open(part_path, "wb") as f:
        def flush():
            if not batch:
                return
            ids = tok.encode_batch(batch, num_threads=1)
            n = [len(x) for x in ids]
            lens.extend(n)
            np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=sum(n)).tofile(f)
            batch.clear()

        for doc in read_unit(spec, unit, stats):
            stats["read"] += 1
            reason = quality_reason(doc, spec.min_chars, spec.min_printable)
            if reason:
                stats[reason] += 1
                continue
            try:
                raw = doc.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates, e.g. from JSON "\ud800"
                raw = doc.encode("utf-8", errors="replace")
                doc = raw.decode("utf-8")
                stats["invalid_utf8_docs"] += 1
            hashes.append(doc_hash(raw))
            nbytes.append(len(raw))
            batch.append(doc)
            size += len(raw)
            if size >= _ENCODE_BATCH_BYTES:
                flush()
                size = 0
        flush()
    return key, dict(stats), np.asarray(lens, dtype=np.int64), b"".join(hashes), np.asarray(nbytes, dtype=np.int64)


# ---- shard writing ---------------------------------------------------------------------------------

class _ShardWriter:
    """Writes documents into `<split>-NNNNN.bin` files of at most `shard_tokens` tokens (a document is
    never cut, so one longer than a shard gets a shard of its own)."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.folder, self.split, self.dtype, self.cap = folder, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self._f = None

    def _open(self):
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._f = open(self.folder / name, "wb")
        self._cur = {"file": name, "tokens": 0, "documents": 0}
        self._sha = hashlib.sha256()

    def _close(self):
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._cur["sha256"] = self._sha.hexdigest()
            self.shards.append(self._cur)
            self._f = None

    def write(self, out: np.ndarray, sizes: np.ndarray) -> None:
        pos = 0
        i = 0
        ends = np.cumsum(sizes)
        while i < len(sizes):
            if self._f is None:
                self._open()
            room = self.cap - self._cur["tokens"]
            base = ends[i - 1] if i else 0
            m = int(np.searchsorted(ends[i:] - base, room, side="right"))
            if m == 0:
                if self._cur["tokens"] > 0:
                    self._close()
                    continue
                m = 1
            chunk = out[pos:ends[i + m - 1]]
            data = chunk.tobytes()
            self._f.write(data)
            self._sha.update(data)
            self._cur["tokens"] += len(chunk)
            self._cur["documents"] += m
            pos = int(ends[i + m - 1])
            i += m
            if self._cur["tokens"] >= self.cap:
                self._close()

    def finish(self) -> list[dict]:
        self._close()
        return self.shards


def _assemble(tokens: np.ndarray, starts: np.ndarray, lens: np.ndarray, bos: int, eos: int, dtype):
    """Documents tokens[starts[i]:starts[i]+lens[i]] as one array of `<s> doc </s>` blocks."""
    pre, post = int(bos >= 0), int(eos >= 0)
    sizes = lens + pre + post
    out = np.empty(int(sizes.sum()), dtype=dtype)
    ostart = np.cumsum(sizes) - sizes
    if pre:
        out[ostart] = bos
    if post:
        out[ostart + sizes - 1] = eos
    n = int(lens.sum())
    if n:
        doc = np.repeat(np.arange(len(lens)), lens)
        k = np.arange(n) - np.repeat(np.cumsum(lens) - lens, lens)
        out[ostart[doc] + pre + k] = tokens[starts[doc] + k]
    return out, sizes


# ---- fingerprints and manifests --------------------------------------------------------------------

def _fingerprint(spec: SourceSpec, tok: Tokenizer, dtype: str, shard_tokens: int) -> str:
    settings = {k: v for k, v in spec.to_dict().items() if k not in ("weight", "epochs", "description")}
    blob = json.dumps([FORMAT, settings, fingerprint_inputs(spec), tok.sha256, dtype, shard_tokens,
                       tok.bos_id, tok.eos_id], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_manifest(data_dir: str | os.PathLike) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise CamelidError(f"{data_dir}: no manifest.json (run `camelid data prepare --out {data_dir}` first)")
    try:
        m = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CamelidError(f"{path}: damaged manifest ({e}); re-run `camelid data prepare`") from None
    if m.get("format") != FORMAT:
        raise CamelidError(f"{path}: format {m.get('format')!r}, expected {FORMAT!r}; re-run `camelid data prepare`")
    return m


def _shards_intact(data_dir: Path, entry: dict, itemsize: int) -> bool:
    for split in ("train", "val"):
        for sh in entry["shards"][split]:
            p = data_dir / entry["dir"] / sh["file"]
            if not p.is_file() or p.stat().st_size != sh["tokens"] * itemsize:
                return False
    return True


def data_hash(manifest: dict) -> str:
    """Identity of the token data (not of the weights): tokenizer, dtype and every shard's checksum."""
    parts = [manifest["tokenizer"]["sha256"], manifest["dtype"]]
    for name in sorted(manifest["sources"]):
        e = manifest["sources"][name]
        parts.append(name)
        parts.extend(sh["sha256"] for split in ("train", "val") for sh in e["shards"][split])
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale(out: Path, keep_dirs: set[str]) -> None:
    for p in out.iterdir():
        if p.name.startswith(".tmp-prepare-"):
            try:
                pid = int(p.name.rsplit("-", 1)[1])
            except ValueError:
                continue
            if pid == os.getpid() or not _pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)
        elif p.is_dir() and "." in p.name and p.name not in keep_dirs and (p / ".camelid-source").exists():
            shutil.rmtree(p, ignore_errors=True)


# ---- the driver ------------------------------------------------------------------------------------

def prepare_data(tokenizer_path, out_dir, mixture=None, workers: int | None = None, progress: bool = True,
                 force: bool = False, shard_tokens: int = DEFAULT_SHARD_TOKENS,
                 overrides: dict | None = None) -> dict:
    """Tokenize every source of `mixture` (default: the embedded corpus) into `out_dir`; return the manifest.

    `workers`: tokenizer processes (default: all cores, at most 8); 1 runs in this process.
    `overrides`: settings applied to every source (e.g. {"skip_bad": True}); `force` rebuilds all.
    Idempotent: with unchanged inputs it returns the existing manifest and writes nothing.
    """
    tok = tokenizer_path if isinstance(tokenizer_path, Tokenizer) else Tokenizer(tokenizer_path)
    mix: Mixture = load_mixture(mixture, overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = "uint16" if tok.vocab_size <= 1 << 16 else "uint32"
    itemsize = np.dtype(dtype).itemsize
    workers = int(workers or min(os.cpu_count() or 1, 8))
    if workers < 1:
        raise CamelidError("workers must be >= 1")

    old = None
    if (out / "manifest.json").is_file():
        try:
            old = read_manifest(out)
        except CamelidError:
            old = None

    fps = {s.name: _fingerprint(s, tok, dtype, shard_tokens) for s in mix.sources}
    entries: dict[str, dict] = {}
    todo: list[SourceSpec] = []
    for s in mix.sources:
        e = (old or {}).get("sources", {}).get(s.name)
        if not force and e and e.get("fingerprint") == fps[s.name] and _shards_intact(out, e, itemsize):
            e = dict(e, weight=s.weight, description=s.description, epochs_paper=s.epochs)
            entries[s.name] = e
        else:
            todo.append(s)

    def manifest(complete: bool) -> dict:
        m = {
            "format": FORMAT,
            "complete": complete,
            "tokenizer": {"path": str(Path(tok.model_path).resolve()), "sha256": tok.sha256,
                          "vocab_size": tok.vocab_size, "bos_id": tok.bos_id, "eos_id": tok.eos_id},
            "dtype": dtype,
            "mixture": {"name": mix.name, "origin": mix.origin,
                        "weights": {s.name: s.weight / sum(x.weight for x in mix.sources if x.name in entries)
                                    for s in mix.sources if s.name in entries}},
            "sources": {s.name: entries[s.name] for s in mix.sources if s.name in entries},
        }
        m["data_hash"] = data_hash(m)
        return m

    if not todo:
        m = manifest(True)
        if old and old.get("complete") and {k: v for k, v in old.items() if k != "created"} == m:
            return old  # nothing changed: write nothing
        m["created"] = _now()
        _atomic_json(out / "manifest.json", m)
        _clean_stale(out, {e["dir"] for e in entries.values()})
        return m

    # a source being rebuilt is no longer trusted, from before its first byte is written
    if old is not None:
        _atomic_json(out / "manifest.json", dict(manifest(False), created=_now()))

    tmp = out / f".tmp-prepare-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        units = {s.name: plan_units(s) for s in todo}
        jobs = []
        for si, s in enumerate(todo):
            (tmp / f"parts-{si}").mkdir()
            for ui, u in enumerate(units[s.name]):
                jobs.append(((si, ui), s.to_dict(), u, str(tmp / f"parts-{si}" / f"{ui:06d}.tok")))
        results = _run_jobs(jobs, tok, dtype, workers, progress)
        for si, s in enumerate(todo):
            metas = [results[(si, ui)] for ui in range(len(units[s.name]))]
            parts = [tmp / f"parts-{si}" / f"{ui:06d}.tok" for ui in range(len(units[s.name]))]
            entry = _finalize_source(s, metas, parts, tok, dtype, out, tmp, fps[s.name], shard_tokens)
            shutil.rmtree(tmp / f"parts-{si}", ignore_errors=True)
            entries[s.name] = entry
            last = si == len(todo) - 1
            m = dict(manifest(last), created=_now())
            _atomic_json(out / "manifest.json", m)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _clean_stale(out, {e["dir"] for e in entries.values()})
    return m


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _run_jobs(jobs, tok, dtype, workers, progress) -> dict:
    from tqdm import tqdm

    results = {}
    order = sorted(jobs, key=lambda j: -int(j[2][-1]))  # biggest units first: shorter tail
    bar = tqdm(total=len(jobs), unit="part", desc="tokenizing", disable=not progress, dynamic_ncols=True,
               mininterval=0.5)
    tokens = 0
    try:
        if workers == 1 or len(jobs) == 1:
            _init_worker(tok, dtype)
            it = map(_tokenize_unit, order)
            pool = None
        else:
            ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
            pool = ctx.Pool(min(workers, len(jobs)), initializer=_init_worker, initargs=(tok, dtype))
            it = pool.imap_unordered(_tokenize_unit, order, chunksize=1)
        try:
            for key, stats, lens, hashes, nbytes in it:
                results[key] = (stats, lens, hashes, nbytes)
                tokens += int(lens.sum())
                bar.update(1)
                bar.set_postfix(tokens=f"{tokens:,}", refresh=False)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    finally:
        bar.close()
    return results


def _finalize_source(spec: SourceSpec, metas, parts, tok: Tokenizer, dtype: str, out: Path, tmp: Path,
                     fp: str, shard_tokens: int) -> dict:
    stats: Counter = Counter()
    seen: set[bytes] = set()
    plans = []  # per unit: (keep mask, val mask, lens, hashes-as-fractions)
    best = None  # (fraction, unit, index) of the kept document with the smallest hash
    kept_bytes = 0
    content = hashlib.blake2b(digest_size=16)
    for ui, (ustats, lens, hashes, nbytes) in enumerate(metas):
        stats.update(ustats)
        n = len(lens)
        keep = np.zeros(n, dtype=bool)
        frac = np.zeros(n)
        for i in range(n):
            h = hashes[16 * i:16 * i + 16]
            if spec.dedup:
                if h in seen:
                    stats["duplicates"] += 1
                    continue
                seen.add(h)
            keep[i] = True
            content.update(h)
            frac[i] = hash_fraction(h)
            if best is None or frac[i] < best[0]:
                best = (frac[i], ui, i)
        kept_bytes += int(nbytes[keep].sum())
        plans.append((keep, keep & (frac < spec.val_fraction), lens))
    kept = sum(int(p[0].sum()) for p in plans)
    if kept == 0:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(stats.items())) or "no documents read"
        raise CamelidError(f"source {spec.name!r} is empty: no document left after cleaning ({counts}); "
                           "check its paths, or loosen min_chars / min_printable")
    n_val = sum(int(p[1].sum()) for p in plans)
    note = ""
    if spec.val_fraction > 0 and n_val == 0:
        if kept >= 2:
            plans[best[1]][1][best[2]] = True
        else:
            note = "one document only: no validation split (split the source into more documents)"

    folder_name = f"{spec.name}.{fp[:10]}"
    build = tmp / f"build-{spec.name}"
    build.mkdir()
    (build / ".camelid-source").write_text(spec.name + "\n")
    np_dtype = np.dtype(dtype)
    writers = {"train": _ShardWriter(build, "train", np_dtype, shard_tokens),
               "val": _ShardWriter(build, "val", np_dtype, shard_tokens)}
    docs = {"train": 0, "val": 0}
    for (keep, val, lens), part in zip(plans, parts):
        if not keep.any():
            continue
        tokens = np.memmap(part, dtype=np_dtype, mode="r") if part.stat().st_size else np.zeros(0, np_dtype)
        starts = np.cumsum(lens) - lens
        for split, mask in (("train", keep & ~val), ("val", val)):
            idx = np.nonzero(mask)[0]
            # bounded memory: assemble at most ~16M tokens at a time
            for chunk in _chunks_by_tokens(idx, lens, 1 << 24):
                arr, sizes = _assemble(tokens, starts[chunk], lens[chunk], tok.bos_id, tok.eos_id, np_dtype)
                writers[split].write(arr, sizes)
                docs[split] += len(chunk)
        del tokens
    shards = {split: w.finish() for split, w in writers.items()}
    final = out / folder_name
    if final.exists():
        shutil.rmtree(final)
    os.replace(build, final)

    counts = {k: int(v) for k, v in sorted(stats.items())}
    counts.setdefault("duplicates", 0)
    entry = {
        "type": spec.type,
        "weight": spec.weight,
        "description": spec.description,
        "epochs_paper": spec.epochs,
        "fingerprint": fp,
        "dir": folder_name,
        "documents": kept,
        "train_documents": docs["train"],
        "val_documents": docs["val"],
        "bytes": kept_bytes,
        "train_tokens": sum(s["tokens"] for s in shards["train"]),
        "val_tokens": sum(s["tokens"] for s in shards["val"]),
        "content_hash": content.hexdigest(),
        "cleaning": {"dedup": spec.dedup, "min_chars": spec.min_chars, "min_printable": spec.min_printable,
                     "val_fraction": spec.val_fraction, "on_invalid_utf8": spec.on_invalid_utf8,
                     "skip_bad": spec.skip_bad},
        "counts": counts,
        "shards": shards,
    }
    entry["tokens"] = entry["train_tokens"] + entry["val_tokens"]
    if note:
        entry["note"] = note
    return entry


def _chunks_by_tokens(idx: np.ndarray, lens: np.ndarray, budget: int):
    if len(idx) == 0:
        return
    cs = np.cumsum(lens[idx])
    start = 0
    while start < len(idx):
        base = cs[start - 1] if start else 0
        end = max(int(np.searchsorted(cs, base + budget, side="right")), start + 1)
        yield idx[start:end]
        start = end


def verify(data_dir) -> list[str]:
    """Re-hash every shard; return a list of problems (empty when every shard matches the manifest)."""
    out = Path(data_dir)
    m = read_manifest(out)
    problems = []
    if not m.get("complete"):
        problems.append("manifest is not complete: the last prepare did not finish (run it again)")
    itemsize = np.dtype(m["dtype"]).itemsize
    for name, e in m["sources"].items():
        for split in ("train", "val"):
            for sh in e["shards"][split]:
                p = out / e["dir"] / sh["file"]
                if not p.is_file():
                    problems.append(f"{p}: missing")
                    continue
                if p.stat().st_size != sh["tokens"] * itemsize:
                    problems.append(f"{p}: {p.stat().st_size} bytes, manifest says {sh['tokens'] * itemsize}")
                    continue
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 24), b""):
                        h.update(block)
                if h.hexdigest() != sh["sha256"]:
                    problems.append(f"{p}: checksum differs from the manifest")
    return problems
