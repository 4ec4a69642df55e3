"""Peak memory and tokens/s with no, selective and full activation checkpointing (CPU).

    python bench/activation_checkpointing.py [--preset small] [--batch 8] [--seq 256] [--dtype bf16]

Each mode runs in its own process, so the peak resident memory (ru_maxrss) belongs to that mode alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def child(mode: str, preset: str, batch: int, seq: int, dtype: str, steps: int) -> dict:
    import resource

    import torch
    import torch.nn.functional as F

    from camelid.model import Transformer, preset as make
    from camelid.parallel import apply_ac

    torch.manual_seed(0)
    model = apply_ac(Transformer(make(preset, vocab_size=8192, max_seq_len=seq)), mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    x = torch.randint(0, 8192, (batch, seq))
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        with amp:
            loss = F.cross_entropy(model(x).flatten(0, 1).float(), x.roll(-1, 1).flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "tokens_per_s": batch * seq / (sum(times) / len(times)), "peak_rss_mib": peak / 1024,
            "rss_growth_mib": (peak - base) / 1024}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.preset, a.batch, a.seq, a.dtype, a.steps)))
        return
    print(f"{a.preset}, batch {a.batch} x {a.seq}, {a.dtype}")
    for mode in ("none", "selective", "full"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--preset", a.preset, "--batch", str(a.batch),
                              "--seq", str(a.seq), "--dtype", a.dtype, "--steps", str(a.steps)],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"  {mode:<10} {r['tokens_per_s']:8.0f} tokens/s   peak RSS {r['peak_rss_mib']:7.0f} MiB "
              f"(+{r['rss_growth_mib']:.0f} MiB during training)")


if __name__ == "__main__":
    main()
