"""Post-training of a ~1B Llama-2-style model on one GPU under torchrun, with FSDP2: SFT, a reward model
and a few PPO iterations through the stages' own code (the one runner, the shared loop, the gathered full
copy of the policy for each rollout phase). Per stage: training speed in the loop's own unit (what its loss
is normalised by: SFT answer tokens/s, RM pairs/s, PPO response tokens/s), PPO's rollout tokens/s (sampling
with the gathered weights, the gather included) and peak GPU memory.

    torchrun --standalone --nproc_per_node 1 bench/gpu_post.py --tokenizer TOKENIZER.model [--json out.json]
    torchrun --standalone --nproc_per_node 1 bench/gpu_post.py --tokenizer ... --dry-run   # CPU, 2 layers

One rank would not shard at all (camelid wraps a model in FSDP only across 2+ data-parallel ranks), so this
script wraps each trained model itself, FSDP2 over a 1-rank mesh: the same DTensor parameters, bf16
gathers, reduce-scatters and full-weight gathers as on 8 GPUs, without the communication. The weights are
random (the proving ground's prompts and the tokenizer only give the stages their inputs): the figures
are speeds and memory, not quality.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from camelid.checkpoint import save_model
from camelid.config import load_config
from camelid.model import ModelArgs, Transformer
from camelid.parallel import apply_ac, apply_compile
from camelid.parallel.dist_info import DistInfo
from camelid.parallel.fsdp import apply_fsdp
from camelid.rlhf.ppo import PPO
from camelid.runlog import read_metrics
from camelid.tokenizer import Tokenizer
from camelid.train.reward import RM
from camelid.train.sft import SFT
from camelid.train.stage import run_stage

ONE_B = dict(dim=2048, n_layers=18, n_heads=16, n_kv_heads=8, ffn_hidden_dim=5632, max_seq_len=2048, norm_eps=1e-5)
TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_dim=128, max_seq_len=512, norm_eps=1e-5)


def one_rank_fsdp(device_type: str, compile: bool):
    """parallelize(model) -> (model, DistInfo): selective activation checkpointing, compile per block (on the
    GPU), FSDP2 over the 1-rank mesh with bf16 gathers on the GPU."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device_type, (1,), mesh_dim_names=("dp",))

    def parallelize(model):
        apply_ac(model, "selective")
        if compile:
            apply_compile(model)
        apply_fsdp(model, mesh, param_dtype=torch.bfloat16 if device_type == "cuda" else None)
        return model, DistInfo(rank=0, world=1, dp_rank=0, dp_world=1, dp_group=mesh.get_group())

    return parallelize


def settings(a, device: str) -> dict[str, list[str]]:
    common = [f"train.device={device}", "train.dtype=bf16", "log.every=1", "log.progress=false", "checkpoint.every=0"]
    small = a.dry_run
    return {
        "sft": common + ["sft.data=proving-ground", f"sft.dialogs={64 if small else 2000}", "sft.instruction_dialogs=0",
                         "sft.batch_size=8" if small else "sft.batch_size=16", f"sft.seq_len={128 if small else 1024}",
                         "sft.val_n=0", "sft.eval_n=0", "sft.eval_gatt=0", "train.micro_batch=4",
                         f"train.max_steps={a.steps}", "train.lr=1e-5"],
        "rm": common + ["rm.kind=helpful", f"rm.prompts={16 if small else 128}", "rm.val_prompts=8", "rm.samples=1",
                        f"rm.batch_pairs={8 if small else 32}", f"rm.max_len={128 if small else 512}",
                        "train.micro_batch=4", f"train.max_steps={a.steps}"],
        "ppo": common + [f"ppo.iterations={a.ppo_iterations}", f"ppo.rollout_batch={8 if small else 64}",
                         f"ppo.minibatch={4 if small else 16}", f"ppo.max_new_tokens={16 if small else 128}",
                         "ppo.eval_every=0", "ppo.eval_n=4", "train.micro_batch=4"],
    }


def measure(stage, cfg, run: Path, parallelize, device) -> dict:
    """Run one stage; its training speed (targets/s, the mean over logged steps after the first: compilation),
    the PPO rollout tokens/s where logged, peak GPU memory and wall time."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    run_stage(stage, cfg, run, parallelize=parallelize)
    out = {"seconds": time.perf_counter() - t}
    rows = [r for r in read_metrics(run) if "split" not in r and "tokens_per_s" in r]
    timed = rows[1:] or rows
    out["train_targets_per_s"] = sum(r["tokens_per_s"] for r in timed) / len(timed)
    rollout = [r["rollout_tokens_per_s"] for r in rows if "rollout_tokens_per_s" in r]
    if rollout:
        out["rollout_tokens_per_s"] = sum(rollout[1:] or rollout) / len(rollout[1:] or rollout)
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="a tokenizer.model (the smoke quickstart's will do)")
    p.add_argument("--out", default="/tmp/gpu-post")
    p.add_argument("--steps", type=int, default=8, help="SFT and RM optimizer steps")
    p.add_argument("--ppo-iterations", type=int, default=3)
    p.add_argument("--dry-run", action="store_true", help="check the script on a CPU: a 2-layer model, no compile")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if "WORLD_SIZE" not in os.environ:
        raise SystemExit("run me under torchrun: torchrun --standalone --nproc_per_node 1 bench/gpu_post.py ...")
    device = torch.device("cpu" if a.dry_run else "cuda")
    dist.init_process_group("gloo" if a.dry_run else "nccl")
    torch.backends.cuda.matmul.allow_tf32 = True
    out = Path(a.out)
    tok = Tokenizer(a.tokenizer)
    args = ModelArgs(**(TINY if a.dry_run else ONE_B), vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    save_model(Transformer(args), out / "start", tokenizer_path=tok.model_path)
    parallelize = one_rank_fsdp(device.type, compile=not a.dry_run)
    sets = settings(a, device.type)
    inputs = {"sft": [f"model.init_from={out / 'start'}"], "rm": [f"model.init_from={out / 'sft' / 'model'}"],
              "ppo": [f"model.init_from={out / 'sft' / 'model'}", f"ppo.reward_helpful={out / 'rm' / 'model'}"]}
    name = "dry run on CPU" if a.dry_run else torch.cuda.get_device_name(device)
    result = {"device": name, "params": args.num_params(), "stages": {}}
    print(f"{name}: {args.num_params() / 1e9:.2f}B parameters, FSDP2 on one rank, bf16")
    for key, stage in (("sft", SFT), ("rm", RM), ("ppo", PPO)):
        cfg = load_config(None, inputs[key] + sets[key], cls=stage.config)
        result["stages"][key] = row = measure(stage, cfg, out / key, parallelize, device)
        print(f"{key}: " + ", ".join(f"{k} {v:,.1f}" for k, v in row.items()), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
