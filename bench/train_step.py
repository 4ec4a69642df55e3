"""Training throughput: camelid vs transformers.LlamaForCausalLM, same config, batch, precision, process.

    python bench/train_step.py                       # reference config, fp32 and bf16, eager and compiled
    python bench/train_step.py --dtypes bf16 --no-compile --steps 5
    python bench/train_step.py --compile-scopes model

One training step = forward, loss, backward, AdamW step. Both models get the same weights, batch and
optimizer; they are timed alternately so that background load hits both. MFU uses
6(N - embedding) + 12 L H Q T FLOPs per token over the measured matmul peak of that precision.

Every contestant is timed twice in the one process: first with glibc's allocator as the process starts
(as a transformers script runs), then after `keep_freed_memory()`, which camelid's trainer calls on CPUs
(camelid.train.malloc) and which cannot be undone. "vs stock transformers" compares each row with
transformers in the first phase; "x" with transformers in the same phase.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from camelid.checkpoint import to_hf_model
from camelid.model import ModelArgs, Transformer
from camelid.train.malloc import keep_freed_memory
from camelid.train.metrics import flops_per_token, measure_cpu_matmul_peak
from camelid.train.objectives import LanguageModeling

REFERENCE = dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_hidden_dim=1408, vocab_size=8192, max_seq_len=256)


def hf_model(model: Transformer):
    return to_hf_model(model.state_dict(), model.args, attn_implementation="sdpa").train()


def make_step(model, kind: str, dtype: torch.dtype, x: torch.Tensor, y: torch.Tensor, compile_loss: bool = False):
    """One training step as each library runs it: transformers' causal-LM loss upcasts the logits and
    calls cross_entropy eagerly; camelid's is its LanguageModeling loss, compiled with the model when
    the run compiles (`train.compile`)."""
    loss_sum = LanguageModeling(compile_loss).loss_sum
    # fused, as camelid's trainer and transformers' Trainer (adamw_torch_fused) both step
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1, fused=True)

    def step():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            if kind == "camelid":
                loss = loss_sum(model(x), y) / y.numel()
            else:
                loss = F.cross_entropy(model(input_ids=x).logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def measure(steps: dict, n: int, warmup: int) -> dict[str, float]:
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in steps}
    for _ in range(max(1, n // 2)):
        for k, fn in steps.items():  # round-robin: load spikes hit every contestant alike
            # One untimed step first: compiled kernels run on their own OpenMP threads, which spin on
            # after they finish and would slow whichever contestant follows on a 2-core machine.
            fn()
            for _ in range(2):
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--compile-transformers", action="store_true", help="also time transformers' model under torch.compile")
    p.add_argument("--compile-scopes", default="blocks,model", help="torch.compile per block, of the whole model, or both")
    p.add_argument("--allocators", default="default,keep",
                   help="glibc allocator phases, in this order: 'default' as the process starts, then 'keep' (what "
                        "camelid's trainer sets on CPUs, camelid.train.malloc; it cannot be undone, so it comes last)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()

    torch.manual_seed(0)
    margs = ModelArgs(**REFERENCE)
    x = torch.randint(0, margs.vocab_size, (args.batch, args.seq))
    y = torch.randint(0, margs.vocab_size, (args.batch, args.seq))
    tokens = args.batch * args.seq
    fpt = flops_per_token(margs, args.seq)
    results = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                          f"torch {torch.__version__}", "config": REFERENCE, "batch": [args.batch, args.seq], "runs": []}
    print(results["machine"])
    contests = {}  # dtype -> (peak, {contestant: step}), built once: compiled graphs are reused by both phases
    for name in args.dtypes.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        base = Transformer(margs)
        steps = {"transformers": make_step(hf_model(base), "hf", dtype, x, y),
                 "camelid": make_step(base, "camelid", dtype, x, y)}
        if not args.no_compile:
            from camelid.parallel import apply_compile

            for scope in args.compile_scopes.split(","):
                compiled = Transformer(margs)
                compiled.load_state_dict(base.state_dict())
                steps[f"camelid+compile({scope})"] = make_step(apply_compile(compiled, scope), "camelid", dtype, x, y,
                                                                compile_loss=True)
        if args.compile_transformers:  # for the record: what stock transformers gets from torch.compile
            hf_compiled = hf_model(base)
            hf_compiled.compile()
            steps["transformers+compile"] = make_step(hf_compiled, "hf", dtype, x, y)
        contests[name] = (measure_cpu_matmul_peak(dtype), steps)
    stock = {}  # dtype -> transformers' step time with the allocator as it ships
    for allocator in args.allocators.split(","):
        if allocator == "keep":  # what camelid's trainer does on CPUs; irreversible, so it runs last
            if not keep_freed_memory():
                print("keep_freed_memory() did not apply here (not glibc): skipping that phase")
                break
        for name, (peak, steps) in contests.items():
            t = measure(steps, args.steps, args.warmup + (2 if not args.no_compile else 0))
            ref = tokens / t["transformers"]
            stock.setdefault(name, t["transformers"])
            print(f"\n{name}, allocator {allocator}: matmul peak {peak / 1e9:.0f} GFLOP/s")
            for k, sec in t.items():
                tps = tokens / sec
                row = {"dtype": name, "allocator": allocator, "model": k, "tokens_per_s": tps,
                       "vs_transformers": tps / ref, "vs_stock_transformers": tps * stock[name] / tokens,
                       "mfu": tps * fpt / peak, "peak_gflops": peak / 1e9}
                results["runs"].append(row)
                print(f"  {k:<24} {tps:8.0f} tokens/s  {tps / ref:5.2f}x  vs stock transformers "
                      f"{row['vs_stock_transformers']:5.2f}x  MFU {100 * row['mfu']:4.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
