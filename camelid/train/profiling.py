"""`--profile`: a torch.profiler trace of a few steps (open in Perfetto or chrome://tracing), an
operator table, and on CUDA a memory snapshot (drag it onto https://pytorch.org/memory_viz)."""

from __future__ import annotations

from pathlib import Path

import torch


class StepProfiler:
    """Profiles steps (warmup, warmup + steps]; a no-op when steps is 0."""

    def __init__(self, out_dir: Path, steps: int, rank: int = 0, warmup: int = 1):
        self.out, self.steps, self.rank, self.warmup = Path(out_dir), steps, rank, warmup
        self.prof = None
        self.done = steps <= 0
        self.seen = 0

    def step(self) -> None:
        """Call after every optimizer step."""
        if self.done:
            return
        self.seen += 1
        if self.seen == self.warmup:
            self._start()
        elif self.seen == self.warmup + self.steps:
            self._stop()

    def _start(self):
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.memory._record_memory_history(max_entries=100_000)
        self.prof = torch.profiler.profile(activities=activities, record_shapes=True, profile_memory=True,
                                           with_stack=False)
        self.prof.__enter__()

    def _stop(self):
        self.prof.__exit__(None, None, None)
        self.out.mkdir(parents=True, exist_ok=True)
        trace = self.out / f"trace_rank{self.rank}.json"
        self.prof.export_chrome_trace(str(trace))
        sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
        (self.out / f"ops_rank{self.rank}.txt").write_text(self.prof.key_averages().table(sort_by=sort, row_limit=40))
        if torch.cuda.is_available():
            torch.cuda.memory._dump_snapshot(str(self.out / f"memory_rank{self.rank}.pickle"))
            torch.cuda.memory._record_memory_history(enabled=None)
        self.done = True
        if self.rank == 0:
            print(f"profile of {self.steps} steps written to {self.out} (trace: {trace.name})")

    def close(self):
        if self.prof is not None and not self.done:
            self._stop()
