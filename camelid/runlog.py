"""Reading a run directory's metrics.jsonl (one JSON object per logged step; eval rows carry "split").

A leaf of the core: plots, the scaling fits and the stages read runs through it without importing the
training code that writes them (camelid.train.metrics.MetricsLog).
"""

from __future__ import annotations

import json
from pathlib import Path

from camelid.errors import CamelidError

METRICS_FILE = "metrics.jsonl"


def metric_lines(path: str | Path, on_torn=None) -> list[tuple[str, object]]:
    """(line, parsed value) of each non-blank line of a metrics.jsonl. A partial last line (a run killed
    mid-write, a full disk, or a run still writing) is left out, and passed to `on_torn(where, line)` if given;
    a line that is not JSON anywhere else is an error naming FILE:LINE."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append((line, json.loads(line)))
        except json.JSONDecodeError:
            if i == len(lines):
                if on_torn is not None:
                    on_torn(f"{path}:{i}", line)
                break
            raise CamelidError(f"{path}:{i}: not a JSON object") from None
    return out


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of RUN_DIR/metrics.jsonl, [] when there is none. A partial last line (a run killed
    mid-write, or still running) is left out; a line that is not JSON anywhere else is an error."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [row for _, row in metric_lines(path) if isinstance(row, dict)]
