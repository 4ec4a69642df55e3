"""Decoding speed: camelid's engine against transformers' `generate` on the same weights, in one run.

    python bench/decode.py                 # reference config and the ~250M one, fp32 and bf16, batch 1 and 16
    python bench/decode.py --quick         # reference config only, fewer tokens
    python bench/decode.py --configs ref --dtypes fp32 --batches 1 --new-tokens 64
    python bench/decode.py --quick --no-hf --legacy aceefde   # today's engine against the one at aceefde

Decode tokens/s excludes the prefill: it is timed from the first new token to the last (a callback on
camelid's side, a streamer on transformers' side), best of `--repeats`. Both sides decode greedily with
no early stop. Batch-1 decoding has to read every weight matrix once per token, so
bytes/token x tokens/s / (measured memory read bandwidth) says how close to the machine's limit a
run gets. Prints a Markdown table (and `--json FILE` writes the numbers).

`--legacy REV` also times camelid/infer/engine.py as it was at git revision REV (read with `git show`,
imported as a module of its own), in the same process and interleaved with today's engine repeat by
repeat, so that a change to the engine is judged against the same machine load; "vs REV" is the median
of the per-repeat ratios. aceefde is the last engine with its own forward pass (before the engine ran
model.py's modules).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from camelid.checkpoint import to_hf_model  # noqa: E402
from camelid.infer.engine import generate, kv_bytes_per_token, weight_bytes_per_token  # noqa: E402
from camelid.model import ModelArgs, Transformer  # noqa: E402

CONFIGS = {
    "ref": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_hidden_dim=1408, vocab_size=8192, max_seq_len=1024),
    "250m": dict(dim=1024, n_layers=16, n_heads=16, n_kv_heads=8, ffn_hidden_dim=2816, vocab_size=32000,
                 max_seq_len=1024),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def read_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Memory read bandwidth in GB/s: summing a tensor far larger than the caches, all threads."""
    x = torch.ones(int(gib * 2**30) // 4)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best / 1e9


def hf_model(model: Transformer):
    return to_hf_model(model.state_dict(), model.args, pad_token_id=0).eval()


def engine_at(rev: str) -> types.ModuleType:
    """camelid/infer/engine.py as it was at git revision `rev`, as a module of its own."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    src = subprocess.check_output(["git", "-C", root, "show", f"{rev}:camelid/infer/engine.py"], text=True)
    mod = types.ModuleType(f"camelid_engine_{rev}")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up there
    exec(compile(src, f"{rev}:camelid/infer/engine.py", "exec"), mod.__dict__)
    return mod


def decode_rates(runs: dict, batch, new, repeats) -> list[dict]:
    """Tokens/s of each contestant between the first and the last new token (the prefill is left out),
    one dict per repeat; within a repeat the contestants take turns, in reverse order every other
    repeat, so that a change in the machine's load falls on all of them alike.

    runs: name -> run(n, tick), which generates n tokens and calls tick() once per decoding step."""
    for run in runs.values():
        run(4, lambda: None)  # warm-up (weight packing, allocator)
    rates = []
    for i in range(repeats):
        rate = {}
        for name, run in (list(runs.items()) if i % 2 == 0 else reversed(runs.items())):
            stamps = []
            run(new, lambda: stamps.append(time.perf_counter()))
            rate[name] = batch * (len(stamps) - 1) / (stamps[-1] - stamps[0])
        rates.append(rate)
    return rates


def decode_rate(run, batch, new, repeats) -> float:
    """Best tokens/s of one contestant."""
    return max(r["run"] for r in decode_rates({"run": run}, batch, new, repeats))


def bench_one(name, dtype_name, batch, args, bw):
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    margs = ModelArgs(**CONFIGS[name])
    model = Transformer(margs).eval().to(dtype)
    g = torch.Generator().manual_seed(1)
    prompts = [[1] + torch.randint(3, margs.vocab_size, (args.prompt_len - 1,), generator=g).tolist()
               for _ in range(batch)]

    def with_engine(gen):
        def run(n, tick=None):
            def cb(i, t):  # every row gets a token each step; row 0's marks the step
                if i == 0:
                    tick()
            return gen(model, prompts, n, stop_ids=None, callback=cb if tick else None)
        return run

    ours = with_engine(generate)
    row = dict(config=name, dtype=dtype_name, batch=batch)
    if args.legacy:
        legacy = with_engine(engine_at(args.legacy).generate)
        rates = decode_rates({"camelid": ours, "legacy": legacy}, batch, args.new_tokens, args.repeats)
        row["camelid"], row["legacy"] = (max(r[k] for r in rates) for k in ("camelid", "legacy"))
        # on a shared machine the ratio within a repeat (run back to back) is steadier than best vs best
        row["vs_legacy"] = statistics.median(r["camelid"] / r["legacy"] for r in rates)
        row["vs_legacy_best"] = row["camelid"] / row["legacy"]
        row["repeats"] = rates
        a, b = ours(16), legacy(16)
        row["same_as_legacy"] = sum(x == y for r, s in zip(a, b) for x, y in zip(r, s)) / (16 * batch)
    else:
        row["camelid"] = decode_rate(ours, batch, args.new_tokens, args.repeats)
    if not args.no_hf:
        from transformers.generation.streamers import BaseStreamer
        hf = hf_model(model.float()).to(dtype)
        model.to(dtype)
        x = torch.tensor(prompts)

        class Tick(BaseStreamer):
            def __init__(self, tick):
                self.tick, self.first = tick, True

            def put(self, value):
                if self.first:  # the prompt
                    self.first = False
                else:
                    self.tick()

            def end(self):
                pass

        def theirs(n, tick=None):
            with torch.inference_mode():
                return hf.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                                   streamer=Tick(tick) if tick else None)

        # transformers is slow at batch 1; fewer tokens keep the run short without changing its rate
        row["hf"] = decode_rate(theirs, batch, max(8, args.new_tokens // 2), args.repeats)
        row["speedup"] = row["camelid"] / row["hf"]
        # same weights, same greedy tokens (a random model's near-ties may flip late tokens in bf16)
        a, b = ours(16), theirs(16)[:, args.prompt_len:].tolist()
        row["same_tokens"] = sum(x == y for r, s in zip(a, b) for x, y in zip(r, s)) / (16 * batch)
        del hf
    wbytes = weight_bytes_per_token(margs, dtype)
    kv = kv_bytes_per_token(margs, dtype) * (args.prompt_len + args.new_tokens / 2)
    row["mb_per_token"] = (wbytes + kv) / 1e6
    if batch == 1:
        row["gb_s"] = row["mb_per_token"] * row["camelid"] / 1e3
        row["of_bandwidth"] = row["gb_s"] / bw
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["ref", "250m"], choices=list(CONFIGS))
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-hf", action="store_true", help="camelid only")
    p.add_argument("--legacy", default=None, metavar="REV",
                   help="also time the engine of git revision REV, interleaved with today's (e.g. aceefde)")
    p.add_argument("--quick", action="store_true", help="reference config, 32 new tokens")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args(argv)
    if args.quick:
        args.configs, args.new_tokens = ["ref"], min(args.new_tokens, 32)
    if args.threads:
        torch.set_num_threads(args.threads)
    bw = read_bandwidth()
    import transformers
    print(f"# decode benchmark: torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"read bandwidth {bw:.1f} GB/s, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens")
    legacy = f" {args.legacy} tok/s | vs {args.legacy} | same tokens as {args.legacy} |" if args.legacy else ""
    print(f"| config | dtype | batch | camelid tok/s |{legacy} transformers tok/s | speedup | same tokens | MB/token | "
          "GB/s | of read bw |")
    print("|---|---|---|---|" + "---|---|---|" * bool(args.legacy) + "---|---|---|---|---|---|")
    rows = []
    for name in args.configs:
        for dt in args.dtypes:
            for b in args.batches:
                r = bench_one(name, dt, b, args, bw)
                rows.append(r)
                vs = (f" {r['legacy']:.0f} | {r['vs_legacy']:.2f}x | {r['same_as_legacy']:.0%} |"
                      if args.legacy else "")
                print(f"| {name} | {dt} | {b} | {r['camelid']:.0f} |{vs} {r.get('hf', float('nan')):.0f} | "
                      f"{r.get('speedup', float('nan')):.1f}x | {r.get('same_tokens', float('nan')):.0%} | "
                      f"{r['mb_per_token']:.0f} | {r.get('gb_s', float('nan')):.1f} | "
                      f"{r.get('of_bandwidth', float('nan')):.0%} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(read_bandwidth_gb_s=bw, threads=torch.get_num_threads(), legacy=args.legacy,
                           cpu=platform.processor() or platform.machine(), torch=torch.__version__,
                           new_tokens=args.new_tokens, prompt_len=args.prompt_len, repeats=args.repeats, rows=rows),
                      f, indent=1)


if __name__ == "__main__":
    main()
