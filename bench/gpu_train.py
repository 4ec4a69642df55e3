"""One-GPU training throughput of a ~1B Llama-2-style model: camelid (bf16 autocast, torch.compile per
block, flash SDPA, selective activation checkpointing, fused AdamW) against transformers'
LlamaForCausalLM (bf16 autocast, SDPA, eager) on the same config, batch and optimizer, in one process.

    python bench/gpu_train.py [--steps 10] [--batch 4] [--seq 2048] [--json out.json]

MFU = tokens/s x (6 (N - embedding) + 12 L H Q T) / the card's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch
import torch.nn.functional as F

from camelid.checkpoint import to_hf_model
from camelid.model import ModelArgs, Transformer
from camelid.parallel import apply_ac, apply_compile
from camelid.train.metrics import flops_per_token, peak_flops
from camelid.train.objectives import LanguageModeling

ONE_B = dict(dim=2048, n_layers=18, n_heads=16, n_kv_heads=8, ffn_hidden_dim=5632, vocab_size=32000,
             max_seq_len=2048, norm_eps=1e-5)


def run(model, forward, batch, seq, steps, warmup, vocab, loss_fn=None):
    """loss_fn(logits, labels) -> mean loss; default: transformers' way (upcast, then cross_entropy)."""
    loss_fn = loss_fn or (lambda logits, y: F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()))
    dev = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1,
                            fused=dev.type == "cuda")
    x = torch.randint(0, vocab, (batch, seq), device=dev)
    y = torch.randint(0, vocab, (batch, seq), device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = loss_fn(forward(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = (time.perf_counter() - t) / steps
    return batch * seq / dt, (torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else 0.0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--variants", default="camelid-eager,camelid-blocks,camelid-model,camelid-blocks-sac,hf,hf-gc,hf-compile",
                   help="comma-separated, run in this order")
    p.add_argument("--dry-run", action="store_true",
                   help="check the script on a CPU: a 2-layer model, no compile (the figures mean nothing)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    args = ModelArgs(**{**ONE_B, **(dict(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_dim=256,
                                        vocab_size=512) if a.dry_run else {})})
    fpt = flops_per_token(args, a.seq)
    device = torch.device("cpu" if a.dry_run else "cuda")
    peak = peak_flops(device, torch.bfloat16)
    name = "dry run on CPU" if a.dry_run else torch.cuda.get_device_name(device)
    print(f"{name}: {args.num_params() / 1e9:.2f}B params, batch {a.batch} x {a.seq}, peak {peak / 1e12:.0f} TFLOP/s, "
          f"torch {torch.__version__}")
    results = {"device": name, "torch": torch.__version__, "config": ONE_B, "batch": [a.batch, a.seq], "runs": []}

    torch.manual_seed(0)
    with torch.device("cpu"):
        sd = Transformer(args).state_dict()

    def camelid_model(ac: str, compile_scope: str | None):
        with torch.device("meta"):
            model = Transformer(args)
        model.to_empty(device=device)
        model.load_state_dict(sd)
        apply_ac(model, ac)
        if compile_scope and not a.dry_run:
            apply_compile(model, compile_scope)
        # camelid's own loss, compiled along with the model as `train.compile` does
        loss_sum = LanguageModeling(compile_loss=bool(compile_scope) and not a.dry_run).loss_sum
        return model, model, (lambda logits, y: loss_sum(logits, y) / y.numel())

    def hf_model(checkpointing: bool, compiled: bool = False):
        hf = to_hf_model(sd, args, attn_implementation="sdpa").to(device).train()
        if checkpointing:
            hf.gradient_checkpointing_enable()
        if compiled:
            hf.compile()
        return hf, (lambda x: hf(input_ids=x).logits), None

    variants = {
        "camelid-eager": ("camelid (eager, no AC)", lambda: camelid_model("none", None)),
        "camelid-blocks": ("camelid (compile per block, no AC)", lambda: camelid_model("none", "blocks")),
        "camelid-model": ("camelid (compile whole model, no AC)", lambda: camelid_model("none", "model")),
        "camelid-blocks-sac": ("camelid (compile per block, selective AC)", lambda: camelid_model("selective", "blocks")),
        "hf": ("transformers (eager, sdpa)", lambda: hf_model(False)),
        "hf-gc": ("transformers (eager, sdpa, gradient checkpointing)", lambda: hf_model(True)),
        "hf-compile": ("transformers (torch.compile, sdpa)", lambda: hf_model(False, compiled=not a.dry_run)),
    }
    for key in a.variants.split(","):
        label, build = variants[key]
        t0 = time.perf_counter()
        try:
            model, forward, loss_fn = build()
            tps, mem = run(model, forward, a.batch, a.seq, a.steps, a.warmup, args.vocab_size, loss_fn)
        except torch.OutOfMemoryError as e:  # report and go on: the other variants still mean something
            print(f"  {label}: out of memory ({e})")
            results["runs"].append({"variant": key, "model": label, "error": "out of memory"})
            continue
        finally:
            model = forward = loss_fn = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        results["runs"].append({"variant": key, "model": label, "tokens_per_s": tps, "mfu": tps * fpt / peak,
                                "peak_mem_gib": mem, "seconds_incl_compile": time.perf_counter() - t0})
        print(f"  {label:55s} {tps:10.0f} tokens/s  MFU {100 * tps * fpt / peak:5.1f}%  peak mem {mem:5.1f} GiB  "
              f"({time.perf_counter() - t0:.0f} s incl. compile)", flush=True)
    by = {r["variant"]: r.get("tokens_per_s") for r in results["runs"]}
    for ours, theirs in (("camelid-eager", "hf"), ("camelid-blocks", "hf"), ("camelid-model", "hf"),
                         ("camelid-blocks-sac", "hf-gc"), ("camelid-blocks", "hf-compile")):
        if by.get(ours) and by.get(theirs):
            print(f"  {ours} / {theirs}: {by[ours] / by[theirs]:.2f}x")
            results.setdefault("ratios", {})[f"{ours}/{theirs}"] = by[ours] / by[theirs]
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
