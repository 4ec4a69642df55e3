"""Atomic file and directory writes (a crash leaves either the old content or the new, never half of one),
and reading JSONL with errors that name the file and line."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from camelid.errors import CamelidError, DiskFull

# What torch's zip writer (torch.save) says when a write comes up short: it does not keep the OSError.
_TORCH_SHORT_WRITE = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")
_LOW_SPACE = 64 * 2**20


def _free_bytes(path) -> int | None:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def disk_full_cause(exc: BaseException, path=None) -> BaseException | None:
    """The exception in `exc`'s chain (or, for a DCP CheckpointException, among its ranks' failures) that says
    the disk is full: an OSError ENOSPC/EDQUOT, or torch.save's short-write RuntimeError on a filesystem with
    (almost) no space left. None if the disk is not the cause."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return e
        if isinstance(e, RuntimeError) and any(m in str(e) for m in _TORCH_SHORT_WRITE):
            free = _free_bytes(path) if path is not None else None
            if free is not None and free < _LOW_SPACE:
                return e
        failures = getattr(e, "failures", None)  # torch.distributed.checkpoint.api.CheckpointException
        if isinstance(failures, dict):
            todo.extend(f[0] if isinstance(f, tuple) else f for f in failures.values())
        todo.extend([e.__cause__, e.__context__])
    return None


@contextlib.contextmanager
def reporting_disk_full(path: str | os.PathLike):
    """Turn a full disk while writing `path` into one line: "disk full while writing PATH" (DiskFull)."""
    try:
        yield
    except (DiskFull, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as e:  # DCP's CheckpointException is a BaseException
        cause = disk_full_cause(e, path)
        if cause is None:
            raise
        where = getattr(cause, "filename", None) or path
        raise DiskFull(f"disk full while writing {where}; free some space and run again (with --resume a run "
                       f"continues from its last complete checkpoint)") from e


def ensure_writable_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Create `path` (and parents) and check that files can be written in it; a CamelidError naming the path
    if it is a file, lies under a file, or is read-only."""
    path = Path(path)
    for p in [path, *path.parents]:
        if p.exists() and not p.is_dir():
            raise CamelidError(f"{path}: cannot be the {what}: {p} is a file" if p != path else
                               f"{path}: cannot be the {what}: it is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"disk full while writing {path}") from None
        raise CamelidError(f"{path}: cannot write the {what} there ({e.strerror or e})") from None
    return path


def fsync_dir(path: str | os.PathLike) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(root)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    with reporting_disk_full(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary directory beside `path`; on success it replaces `path` in one rename.

    If the body raises (or the process dies), `path` keeps its old content and the temporary
    directory (named `.NAME.tmp-*`) is removed or left for `clean_stale_tmp` to find.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with reporting_disk_full(path):
            yield tmp
            fsync_tree(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.rmdir(old)
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def iter_jsonl(path: str | os.PathLike, error: type[Exception] = ValueError,
               on_bad: Callable[[str, json.JSONDecodeError], None] | None = None) -> Iterator[tuple[str, object]]:
    """(where, value) for each non-blank line of a JSONL file; `where` is "FILE:LINE" for error messages.

    A line that is not JSON (or not UTF-8) raises `error` naming it, unless `on_bad(where, exc)` is given (to
    skip it; `exc.msg` says what is wrong)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{path}:{n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                msg = f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
                if on_bad is None:
                    raise error(f"{where}: {msg}") from None
                on_bad(where, json.JSONDecodeError(msg, "", 0))
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                if on_bad is None:
                    raise error(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
                on_bad(where, e)
                continue
            yield where, value
