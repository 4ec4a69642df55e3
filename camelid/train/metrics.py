"""metrics.jsonl, TensorBoard, and MFU: what a run tells the person watching it."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import torch

from camelid.fsutil import atomic_write_text, reporting_disk_full
from camelid.runlog import METRICS_FILE, metric_lines

# Dense bf16 peak FLOP/s (no sparsity) of the usual training GPUs.
GPU_PEAK_BF16 = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
                 ("A10G", 125e12), ("RTX 4090", 165e12), ("V100", 125e12)]

_cpu_peak_cache: dict[torch.dtype, float] = {}


def measure_cpu_matmul_peak(dtype: torch.dtype = torch.float32, n: int = 1024, reps: int = 20) -> float:
    """Best observed FLOP/s of an n x n matmul in `dtype` on this CPU (measured once per process; the best
    of many, so that a busy moment does not lower the peak and flatter the MFU)."""
    if dtype not in _cpu_peak_cache:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        torch.mm(a, b)
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t)
        _cpu_peak_cache[dtype] = 2 * n**3 / best
    return _cpu_peak_cache[dtype]


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAK_BF16:
            if key in name:
                return flops if dtype in (torch.bfloat16, torch.float16) else flops / 2  # TF32 is half of bf16
        return 312e12
    return measure_cpu_matmul_peak(dtype)


def flops_per_token(args, seq_len: int) -> float:
    """Training FLOPs per token: 6 (N - input embedding) + 12 L H Q T (PaLM appendix B, as torchtitan counts)."""
    n = args.num_params() - args.vocab_size * args.dim
    return 6 * n + 12 * args.n_layers * args.n_heads * args.head_dim * seq_len


class MetricsLog:
    """Appends one JSON object per line to RUN_DIR/metrics.jsonl (and TensorBoard if asked)."""

    def __init__(self, run_dir: Path, resume_step: int | None = None, tensorboard: bool = False, enabled=True):
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        if enabled and resume_step is not None and self.path.exists():
            # Rows written after the checkpoint we resume from will be written again: drop them.
            # A torn last line (a crash or a full disk mid-write) is dropped; a bad line elsewhere is an error.
            def torn(where, line):
                print(f"warning: {where}: dropped a torn last line (the run was stopped mid-write): {line[:60]!r}")

            kept = [line for line, row in metric_lines(self.path, on_torn=torn)
                    if isinstance(row, dict) and row.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        elif enabled and resume_step is None and self.path.exists():
            self.path.unlink()
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:
                print("tensorboard is not installed (pip install tensorboard); logging to metrics.jsonl only")

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        data = memoryview((json.dumps(row) + "\n").encode("utf-8"))
        with reporting_disk_full(self.path):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                start = os.lseek(fd, 0, os.SEEK_END)
                try:
                    while data:
                        data = data[os.write(fd, data):]
                except OSError:
                    with contextlib.suppress(OSError):  # no torn line left behind: cut back to the last whole row
                        os.ftruncate(fd, start)
                    raise
            finally:
                os.close(fd)
        if self.tb is not None:
            prefix = row.get("split", "train")
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{prefix}/{k}", v, row["step"])

    def close(self):
        if self.tb is not None:
            self.tb.close()
