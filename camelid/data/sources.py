"""Sources that yield documents: plain-text files and folders, JSONL (`.gz` too), Parquet, embedded corpora.

A `SourceSpec` says where a source's text is and how to clean it; `plan_units(spec)` cuts the source
into units of work (a file, a byte range of a large JSONL file, a Parquet row group, a chunk of an
embedded corpus) and `read_unit(spec, unit, stats)` yields the unit's documents, counting what it
had to repair or skip in `stats`. Units are small picklable tuples, so worker processes can read
them in parallel; their order is fixed, so the result never depends on the number of workers.

Bad input is never silently lost:
- invalid UTF-8 in a text file: `on_invalid_utf8 = "replace"` (default) turns each bad byte into
  U+FFFD and counts the documents and bytes (`invalid_utf8_docs`, `invalid_utf8_bytes`); "skip" drops
  the document (counted); "error" stops with the file's name.
- a malformed JSONL line, or a record without the text field: an error naming file and line, or, with
  `skip_bad = true` (`--skip-bad`), skipped and counted (`bad_records`).
- a Parquet file without the named column: an error naming file and columns.
- a source without any file, or without a single document: an error naming the source.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from camelid.data import corpus
from camelid.errors import CamelidError

SOURCE_TYPES = ("text", "jsonl", "parquet", "embedded")
SPLITS = ("file", "paragraph", "line")
JSONL_RANGE_BYTES = 16 << 20  # large uncompressed JSONL files are read in line-aligned ranges of this size


@dataclasses.dataclass
class SourceSpec:
    name: str
    type: str
    paths: list[str] = dataclasses.field(default_factory=list)
    corpus: str = ""                 # embedded: which corpus (default: the source's name)
    field: str = "text"              # jsonl: the text field
    column: str = "text"             # parquet: the text column
    split: str = "file"              # text: one document per file, per blank-line paragraph, or per line
    extensions: list[str] = dataclasses.field(default_factory=list)  # text folders: suffixes to read (all if empty)
    weight: float = 1.0
    val_fraction: float = 0.01
    dedup: bool = True
    min_chars: int = 16
    min_printable: float = 0.9
    on_invalid_utf8: str = "replace"
    skip_bad: bool = False
    epochs: float | None = None      # the paper's epochs for this source (informational)
    description: str = ""

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", self.name or ""):
            raise CamelidError(f"source name {self.name!r}: use letters, digits, '-' and '_' only")
        if self.type not in SOURCE_TYPES:
            raise CamelidError(f"source {self.name!r}: type must be one of {', '.join(SOURCE_TYPES)}, not {self.type!r}")
        if self.type == "embedded":
            self.corpus = self.corpus or self.name
            corpus._entry(self.corpus)
        elif not self.paths:
            raise CamelidError(f"source {self.name!r}: `paths` is empty (a {self.type} source reads files)")
        if isinstance(self.paths, str):
            self.paths = [self.paths]
        if self.split not in SPLITS:
            raise CamelidError(f"source {self.name!r}: split must be one of {', '.join(SPLITS)}")
        if self.on_invalid_utf8 not in ("replace", "skip", "error"):
            raise CamelidError(f"source {self.name!r}: on_invalid_utf8 must be replace, skip or error")
        if not (self.weight >= 0):
            raise CamelidError(f"source {self.name!r}: weight must be >= 0")
        if not (0 <= self.val_fraction < 1):
            raise CamelidError(f"source {self.name!r}: val_fraction must be in [0, 1)")
        if not (0 <= self.min_printable <= 1):
            raise CamelidError(f"source {self.name!r}: min_printable must be in [0, 1]")
        self.extensions = [e if e.startswith(".") else "." + e for e in self.extensions]

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, name: str, d: dict) -> "SourceSpec":
        known = {f.name for f in dataclasses.fields(cls)} - {"name"}
        unknown = set(d) - known
        if unknown:
            raise CamelidError(f"source {name!r}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        if "type" not in d:
            raise CamelidError(f"source {name!r}: missing `type` ({', '.join(SOURCE_TYPES)})")
        return cls(name=name, **d)


# ---- finding files ---------------------------------------------------------------------------------

def resolve_files(spec: SourceSpec) -> list[Path]:
    """Every file of a file-based source, sorted, deduplicated. Errors if a path matches nothing."""
    out: list[Path] = []
    for pattern in spec.paths:
        pattern = os.path.expandvars(os.path.expanduser(str(pattern)))
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches or (not glob.has_magic(pattern) and not os.path.exists(pattern)):
            raise CamelidError(f"source {spec.name!r}: {pattern}: no such file or folder")
        for m in matches:
            p = Path(m)
            if p.is_dir():
                for f in sorted(p.rglob("*")):
                    if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts):
                        if _wanted(spec, f):
                            out.append(f)
            elif p.is_file() and _wanted(spec, p, explicit=not glob.has_magic(pattern)):
                out.append(p)
    seen, files = set(), []
    for f in out:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            files.append(f)
    if not files:
        raise CamelidError(f"source {spec.name!r}: no files found under {', '.join(map(str, spec.paths))}"
                           + (f" with extensions {spec.extensions}" if spec.extensions else ""))
    return files


def _wanted(spec: SourceSpec, f: Path, explicit: bool = False) -> bool:
    name = f.name
    if spec.type == "jsonl":
        return explicit or name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson"))
    if spec.type == "parquet":
        return explicit or name.endswith(".parquet")
    if spec.extensions and not explicit:
        return any(name.endswith(e) for e in spec.extensions)
    return True


def fingerprint_inputs(spec: SourceSpec) -> list:
    """What the source's content depends on, cheaply: (path, size, mtime) of each file."""
    if spec.type == "embedded":
        return [corpus.embedded_version(spec.corpus)]
    return [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in resolve_files(spec)]


# ---- units -----------------------------------------------------------------------------------------

def plan_units(spec: SourceSpec) -> list[tuple]:
    """The source's units of work, in their fixed order, each as (kind, *args, size_estimate_bytes)."""
    if spec.type == "embedded":
        units = corpus.embedded_units(spec.corpus)
        return [("embedded", u, 0) for u in units]
    units: list[tuple] = []
    for f in resolve_files(spec):
        size = f.stat().st_size
        if spec.type == "jsonl" and not f.name.endswith(".gz") and size > JSONL_RANGE_BYTES:
            for start in range(0, size, JSONL_RANGE_BYTES):
                units.append(("range", str(f), start, min(start + JSONL_RANGE_BYTES, size), min(JSONL_RANGE_BYTES, size - start)))
        elif spec.type == "parquet":
            pq = _pyarrow_parquet()
            try:
                meta = pq.ParquetFile(f).metadata
            except Exception as e:
                raise CamelidError(f"{f}: not a readable Parquet file ({e})") from None
            n = max(meta.num_row_groups, 1)
            for g in range(meta.num_row_groups):
                units.append(("rowgroup", str(f), g, size // n))
            if meta.num_row_groups == 0:
                units.append(("file", str(f), 0))
        else:
            units.append(("file", str(f), size))
    return units


def unit_size(unit: tuple) -> int:
    return int(unit[-1])


def read_unit(spec: SourceSpec, unit: tuple, stats: Counter) -> Iterator[str]:
    kind = unit[0]
    if kind == "embedded":
        yield from corpus.embedded_read(spec.corpus, unit[1])
    elif spec.type == "text":
        yield from _read_text(spec, Path(unit[1]), stats)
    elif spec.type == "jsonl":
        if kind == "range":
            yield from _read_jsonl(spec, Path(unit[1]), stats, unit[2], unit[3])
        else:
            yield from _read_jsonl(spec, Path(unit[1]), stats, 0, None)
    elif spec.type == "parquet":
        yield from _read_parquet(spec, Path(unit[1]), unit[2] if kind == "rowgroup" else None, stats)
    else:  # pragma: no cover
        raise CamelidError(f"source {spec.name!r}: cannot read unit {unit!r}")


def iter_documents(spec: SourceSpec, stats: Counter | None = None) -> Iterator[str]:
    """Every document of a source, in order (no cleaning)."""
    stats = Counter() if stats is None else stats
    for unit in plan_units(spec):
        yield from read_unit(spec, unit, stats)


# ---- text ------------------------------------------------------------------------------------------

def _decode(spec: SourceSpec, data: bytes, where: str, stats: Counter) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if spec.on_invalid_utf8 == "error":
            raise CamelidError(f"{where}: invalid UTF-8 at byte {e.start} (set on_invalid_utf8 = "
                               "\"replace\" or \"skip\" for this source)") from None
        text = data.decode("utf-8", errors="replace")
        bad = text.count("\ufffd") - data.count("\ufffd".encode())
        stats["invalid_utf8_docs"] += 1
        stats["invalid_utf8_bytes"] += max(bad, 1)
        if spec.on_invalid_utf8 == "skip":
            stats["invalid_utf8_skipped"] += 1
            return None
        return text


def _split_text(spec: SourceSpec, text: str) -> Iterator[str]:
    if spec.split == "file":
        yield text
    elif spec.split == "paragraph":
        para: list[str] = []
        for line in text.splitlines(keepends=True):
            if line.strip():
                para.append(line)
            elif para:
                yield "".join(para)
                para = []
        if para:
            yield "".join(para)
    else:
        for line in text.splitlines():
            if line.strip():
                yield line


def _read_text(spec: SourceSpec, f: Path, stats: Counter) -> Iterator[str]:
    data = f.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if spec.on_invalid_utf8 != "skip" or spec.split == "file":
        text = _decode(spec, data, str(f), stats)
        if text is not None:
            yield from _split_text(spec, text)
        return
    # skip at the granularity of the document, not of the whole file
    for piece in _split_text(spec, data.decode("utf-8", errors="surrogateescape")):
        raw = piece.encode("utf-8", errors="surrogateescape")
        text = _decode(spec, raw, str(f), stats)
        if text is not None:
            yield text


# ---- jsonl -----------------------------------------------------------------------------------------

def _open_binary(f: Path):
    if f.name.endswith(".gz"):
        return gzip.open(f, "rb")
    return open(f, "rb")


def _line_number(f: Path, offset: int) -> int:
    n = 0
    with open(f, "rb") as fh:
        remaining = offset
        while remaining > 0:
            chunk = fh.read(min(remaining, 1 << 20))
            if not chunk:
                break
            n += chunk.count(b"\n")
            remaining -= len(chunk)
    return n


def _read_jsonl(spec: SourceSpec, f: Path, stats: Counter, start: int, end: int | None) -> Iterator[str]:
    try:
        fh = _open_binary(f)
    except OSError as e:
        raise CamelidError(f"{f}: cannot open ({e})") from None
    with fh:
        if start > 0:  # a range owns the lines whose first byte lies inside it
            fh.seek(start - 1)
            if fh.read(1) != b"\n":
                fh.readline()
        pos = fh.tell()
        i = 0
        while True:
            if end is not None and pos >= end:
                break
            try:
                raw = fh.readline()
            except (OSError, EOFError, gzip.BadGzipFile) as e:
                raise CamelidError(f"{f}: cannot read ({e}); the file is damaged or truncated") from None
            if not raw:
                break
            line_start = pos
            pos += len(raw)
            i += 1
            if not raw.strip():
                continue

            def where(line_start=line_start, i=i) -> str:
                n = i if start == 0 else _line_number(f, line_start) + 1
                return f"{f}:{n}"

            try:
                obj = json.loads(raw)
            except UnicodeDecodeError:
                text = raw.decode("utf-8", errors="replace")
                stats["invalid_utf8_docs"] += 1
                stats["invalid_utf8_bytes"] += 1
                try:
                    obj = json.loads(text)
                except ValueError as e:
                    yield from _bad(spec, stats, f"{where()}: malformed JSON ({e})")
                    continue
            except ValueError as e:
                yield from _bad(spec, stats, f"{where()}: malformed JSON ({getattr(e, 'msg', e)})")
                continue
            if not isinstance(obj, dict):
                yield from _bad(spec, stats, f"{where()}: expected a JSON object, got {type(obj).__name__}")
                continue
            if spec.field not in obj:
                yield from _bad(spec, stats, f"{where()}: no field {spec.field!r} (fields: "
                                f"{', '.join(list(obj)[:10]) or 'none'}); set `field` for source {spec.name!r}")
                continue
            text = obj[spec.field]
            if not isinstance(text, str):
                yield from _bad(spec, stats, f"{where()}: field {spec.field!r} is {type(text).__name__}, not a string")
                continue
            yield text


def _bad(spec: SourceSpec, stats: Counter, message: str) -> Iterator[str]:
    if not spec.skip_bad:
        raise CamelidError(message + " (pass --skip-bad, or skip_bad = true, to skip and count such records)")
    stats["bad_records"] += 1
    return iter(())


# ---- parquet ---------------------------------------------------------------------------------------

def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CamelidError("Parquet sources need pyarrow: pip install 'camelid[parquet]'") from None
    return pq


def _read_parquet(spec: SourceSpec, f: Path, group: int | None, stats: Counter) -> Iterator[str]:
    pq = _pyarrow_parquet()
    pf = pq.ParquetFile(f)
    names = pf.schema_arrow.names
    if spec.column not in names:
        raise CamelidError(f"{f}: no column {spec.column!r} (columns: {', '.join(names)}); "
                           f"set `column` for source {spec.name!r}")
    if group is None:
        return
    table = pf.read_row_group(group, columns=[spec.column])
    for value in table.column(0).to_pylist():
        if value is None:
            yield from _bad(spec, stats, f"{f}: row group {group}: null in column {spec.column!r}")
            continue
        if isinstance(value, bytes):
            value = _decode(spec, value, f"{f}: row group {group}", stats)
            if value is None:
                continue
        if not isinstance(value, str):
            raise CamelidError(f"{f}: column {spec.column!r} holds {type(value).__name__}, not text")
        yield value


__all__ = ["SourceSpec", "plan_units", "read_unit", "iter_documents", "resolve_files", "fingerprint_inputs"]
