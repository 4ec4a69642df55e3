"""Decoding speed: camelid's engine against llama.cpp and transformers on the same weights, in one run.

    python bench/decode.py                 # reference config and the ~250M one, fp32 and bf16, batch 1 and 16
    python bench/decode.py --quick         # reference config only, fewer tokens
    python bench/decode.py --configs ref quickstart --batches 1 --no-hf     # against llama.cpp
    python bench/decode.py --quick --no-hf --no-llama-cpp --legacy aceefde  # against the engine at aceefde
    python bench/decode.py --configs ref quickstart --batches 1 --no-hf --compile  # the compiled decode step

Every engine decodes greedily with no early stop; tokens/s excludes the prefill (timed from the first new
token to the last: a callback on camelid's side, a streamer on transformers' side, the token generator of
llama-cpp-python). camelid and its peers take turns within every repeat, in reverse order every other
repeat, so a change in the machine's load falls on all alike; "camelid / engine" is the median of the
per-repeat ratios, tokens/s the best repeat. transformers is slow at batch 1 and is timed on its own.

llama.cpp (batch 1; when `llama-cpp-python` is installed: `pip install 'camelid[bench]'`) gets the same
weights the way a user would make them: camelid's Hugging Face export, then llama.cpp's own
`convert_hf_to_gguf.py` (bench/llamacpp.py), at the precisions of equal size: f32 against fp32, f16 and
bf16 against bf16.

A batch-1 step has to read every weight matrix once, so bytes/token x tokens/s against the read bandwidth
measured at the model's own size (summing a tensor of that many bytes) says how close an engine gets to
the machine's limit. Prints a Markdown table, one row per engine (and `--json FILE` writes the numbers).

`--temperature T` times rollouts as rejection sampling and PPO draw them: camelid's engines sample at T
(the peers stay greedy, and the greedy-token check is left out).

`--legacy REV` also times camelid/infer/engine.py as it was at git revision REV, with that revision's
sampler (read with `git show`, imported as modules of their own). aceefde is the last engine with its own
forward pass (before the engine ran model.py's modules).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from camelid.checkpoint import to_hf_model  # noqa: E402
from camelid.infer.engine import generate, kv_bytes_per_token, weight_bytes_per_token  # noqa: E402
from camelid.model import ModelArgs, Transformer  # noqa: E402

CONFIGS = {
    "ref": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_hidden_dim=1408, vocab_size=8192, max_seq_len=1024),
    # the quickstart's model: preset "tiny" with the quickstart tokenizer's 4,096 pieces
    "quickstart": dict(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, ffn_hidden_dim=704, vocab_size=4096, max_seq_len=256),
    "250m": dict(dim=1024, n_layers=16, n_heads=16, n_kv_heads=8, ffn_hidden_dim=2816, vocab_size=32000,
                 max_seq_len=1024),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def read_bandwidth(gib: float = 1.0, repeats: int = 5, device: str = "cpu") -> float:
    """Read bandwidth in GB/s: summing an fp32 tensor of `gib` GiB, all threads. At a model's own size
    this is the limit a batch-1 decode step that reads every weight once can reach (on a host whose
    last-level cache holds the model, that cache's bandwidth, not DRAM's)."""
    x = torch.ones(int(gib * 2**30) // 4, device=device)
    x.sum().item()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum().item()  # .item(): on a GPU, wait for the sum
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best / 1e9


def hf_model(model: Transformer):
    return to_hf_model(model.state_dict(), model.args, pad_token_id=0).eval()


def module_at(rev: str, path: str) -> types.ModuleType:
    """The file `path` of git revision `rev`, as a module of its own (its imports are today's)."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    src = subprocess.check_output(["git", "-C", root, "show", f"{rev}:{path}"], text=True)
    mod = types.ModuleType(f"camelid_{Path(path).stem}_{rev}")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up there
    exec(compile(src, f"{rev}:{path}", "exec"), mod.__dict__)
    return mod


def engine_at(rev: str) -> types.ModuleType:
    """camelid/infer/engine.py as it was at git revision `rev`, with the sampler of that revision."""
    engine, sampling = module_at(rev, "camelid/infer/engine.py"), module_at(rev, "camelid/infer/sampling.py")
    engine.sample, engine.SamplingParams = sampling.sample, sampling.SamplingParams  # read when called
    return engine


def decode_rates(runs: dict, batch, new, repeats) -> list[dict]:
    """Tokens/s of each contestant between the first and the last new token (the prefill is left out),
    one dict per repeat; within a repeat the contestants take turns, in reverse order every other
    repeat, so that a change in the machine's load falls on all of them alike.

    runs: name -> run(n, tick), which generates n tokens and calls tick() once per decoding step."""
    for run in runs.values():
        run(new, lambda: None)  # warm-up at the timed length (weight packing, compiles: a static cache is sized by it)
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


def same_fraction(a: list[list[int]], b: list[list[int]], n: int) -> float:
    """Share of the first n greedy tokens of each row on which two engines agree."""
    return sum(x == y for r, t in zip(a, b) for x, y in zip(r[:n], t[:n])) / (n * len(a))


def hf_contestant(model, prompts, dtype, compiled: bool = False):
    """transformers' `generate` on the same weights, ticking once per new token through a streamer; compiled:
    with a static cache and its forward compiled (what transformers documents for fast generation; CUDA
    graphs on a GPU), the peer for camelid's compiled step."""
    from transformers.generation.streamers import BaseStreamer

    hf = hf_model(model.float()).to(model.tok_embeddings.weight.device, dtype)
    model.to(dtype)
    if compiled:
        hf.generation_config.cache_implementation = "static"
        hf.forward = torch.compile(hf.forward, mode="reduce-overhead" if torch.cuda.is_available() else None)
    x = torch.tensor(prompts, device=hf.device)

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

    def run(n, tick=None):
        with torch.inference_mode():
            out = hf.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                              streamer=Tick(tick) if tick else None)
        return out[:, len(prompts[0]):].tolist()
    return run


def llama_cpp_contestants(model, prompts, dtype_name, args) -> dict:
    """llama.cpp on the same weights (batch 1: its Python binding decodes one sequence), at each GGUF
    precision that matches dtype_name (fp32: f32; bf16: f16 and bf16)."""
    import llamacpp
    workdir = Path(args.workdir) / args.config_key
    workdir.mkdir(parents=True, exist_ok=True)
    out = {}
    for gguf_type in llamacpp.MATCHING[dtype_name]:
        llm = llamacpp.load(llamacpp.to_gguf(model, gguf_type, workdir), torch.get_num_threads(),
                            args.prompt_len + args.new_tokens + 8)
        out[f"llama.cpp {gguf_type}"] = (lambda llm: lambda n, tick=None: [llamacpp.greedy(llm, prompts[0], n, tick)])(llm)
    return out


def bench_one(name, dtype_name, batch, args) -> list[dict]:
    """One row per engine: tokens/s, camelid's ratio to it (median of per-repeat ratios, the engines taking
    turns), the share of equal greedy tokens, and at batch 1 its bytes-per-token bandwidth."""
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    margs = ModelArgs(**CONFIGS[name])
    model = Transformer(margs).eval()
    args.config_key = name
    g = torch.Generator().manual_seed(1)
    prompts = [[1] + torch.randint(3, margs.vocab_size, (args.prompt_len - 1,), generator=g).tolist()
               for _ in range(batch)]
    peers = {}
    if batch == 1 and args.llama_cpp:
        peers.update(llama_cpp_contestants(model, prompts, dtype_name, args))  # exported from the fp32 weights
    model.to(args.device, dtype)

    def with_engine(gen):
        def run(n, tick=None):
            def cb(i, t):  # every row gets a token each step; row 0's marks the step
                if i == 0:
                    tick()
            return gen(model, prompts, n, stop_ids=None, callback=cb if tick else None, **sampling)
        return run

    sampling = dict(temperature=args.temperature, seed=0) if args.temperature else {}

    ours = with_engine(functools.partial(generate, compile=args.compile))
    if args.compile:  # the compiled step is camelid here; the eager engine becomes a peer
        peers["camelid eager"] = with_engine(generate)
    if args.legacy:
        peers[f"camelid@{args.legacy}"] = with_engine(engine_at(args.legacy).generate)
    rates = decode_rates({"camelid": ours, **peers}, batch, args.new_tokens, args.repeats)
    reference = None if sampling else ours(16)
    if not args.no_hf:
        # transformers is slow at batch 1: timed on its own, with fewer tokens (its rate does not change)
        hf = hf_contestant(model, prompts, dtype, compiled=args.compile)
        hf_rate = decode_rate(hf, batch, max(8, args.new_tokens // 2), args.repeats)
        for r in rates:
            r["transformers"] = hf_rate
        peers["transformers"] = hf
    mb = (weight_bytes_per_token(margs, dtype) + kv_bytes_per_token(margs, dtype) *
          (args.prompt_len + args.new_tokens / 2)) / 1e6
    bw = read_bandwidth(weight_bytes_per_token(margs, dtype) / 2**30, device=args.device) if batch == 1 else None
    rows, nan = [], float("nan")
    for engine in ["camelid", *peers]:
        best = max(r[engine] for r in rates)
        row = dict(config=name, dtype=dtype_name, batch=batch, engine=engine, tok_s=best, mb_per_token=mb,
                   camelid_over=statistics.median(r["camelid"] / r[engine] for r in rates),
                   # same weights, same greedy tokens (a random model's near-ties may flip late ones in bf16)
                   same_tokens=nan if sampling else 1.0 if engine == "camelid"
                   else same_fraction(reference, peers[engine](16), 16),
                   repeats=[r[engine] for r in rates])
        if bw:
            row.update(gb_s=mb * best / 1e3, read_bw_gb_s=bw, of_read_bw=mb * best / 1e3 / bw)
        rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["ref", "250m"], choices=list(CONFIGS))
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu or cuda (llama.cpp, a CPU build here, runs on CPU only)")
    p.add_argument("--no-hf", action="store_true", help="leave transformers out")
    p.add_argument("--no-llama-cpp", dest="llama_cpp", action="store_false",
                   help="leave llama.cpp out (it runs at batch 1 when llama-cpp-python is installed)")
    p.add_argument("--legacy", default=None, metavar="REV",
                   help="also time the engine of git revision REV, interleaved with today's (e.g. aceefde)")
    p.add_argument("--compile", action="store_true",
                   help="camelid decodes with its compiled step (Engine(compile=True)), its eager engine is a peer, "
                        "and transformers runs with a static cache and a compiled forward")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="camelid's engines sample at this temperature from a seeded generator, as rejection sampling "
                        "and PPO roll out (default 0: greedy; the peers stay greedy)")
    p.add_argument("--quick", action="store_true", help="reference config, 32 new tokens")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args(argv)
    if args.quick:
        args.configs, args.new_tokens = ["ref"], min(args.new_tokens, 32)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.workdir = tempfile.mkdtemp(prefix="camelid-bench-")  # the GGUF exports of this run's models
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import llamacpp
    if args.device != "cpu":
        args.llama_cpp = False
    if args.llama_cpp and not llamacpp.available():
        print("# llama.cpp left out: pip install 'camelid[bench]' to add it")
        args.llama_cpp = False
    import transformers
    peers = f", llama-cpp-python {llamacpp.version()}" if args.llama_cpp else ""
    print(f"# decode benchmark: torch {torch.__version__}, transformers {transformers.__version__}{peers}, "
          f"{torch.get_num_threads()} threads, {cpu_name()}, prompt {args.prompt_len} tokens, "
          f"{args.new_tokens} new tokens, best of {args.repeats} (camelid / engine: median of the per-repeat ratios)"
          + (f", camelid sampling at temperature {args.temperature}" if args.temperature else ""))
    print("| config | dtype | batch | engine | tok/s | camelid / engine | same greedy tokens | MB/token | GB/s | "
          "read bw at this size | of read bw |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    nan = float("nan")
    for name in args.configs:
        for dt in args.dtypes:
            for b in args.batches:
                for r in bench_one(name, dt, b, args):
                    rows.append(r)
                    print(f"| {name} | {dt} | {b} | {r['engine']} | {r['tok_s']:.0f} | {r['camelid_over']:.2f}x | "
                          f"{r['same_tokens']:.0%} | {r['mb_per_token']:.0f} | {r.get('gb_s', nan):.1f} | "
                          f"{r.get('read_bw_gb_s', nan):.1f} | {r.get('of_read_bw', nan):.0%} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(threads=torch.get_num_threads(), legacy=args.legacy, temperature=args.temperature,
                           cpu=cpu_name(), torch=torch.__version__, new_tokens=args.new_tokens, prompt_len=args.prompt_len, repeats=args.repeats, rows=rows),
                      f, indent=1)
    shutil.rmtree(args.workdir, ignore_errors=True)


def cpu_name() -> str:
    """The processor the run measured: the CPU's model name, or the GPU's."""
    if torch.cuda.is_available() and torch.cuda.device_count():
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
