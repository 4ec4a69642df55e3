"""Reward-model training step: forward and backward over padded pairs, camelid beside transformers.

    python bench/reward_training.py --run runs/quickstart

The reward model trains on micro-batches of 16 pairs (32 rows, chosen then rejected, each batch padded to its own
longest), in bf16 autocast on a CPU: the attention is masked (padding) and gradients flow, where PyTorch's CPU
flash kernel takes 10-15x its forward time for the backward. The pairs are a finished quickstart's own (round 1's
`rm-helpful/pairs_train.jsonl`), random micro-batches as training draws them, timed three ways:

- camelid: `model.masked_attention_path` picks plain matmuls (bf16, CPU, gradients);
- camelid, flash: the same model with SDPA's kernel for masked attention (the path before);
- transformers: `LlamaForSequenceClassification` of the same weights (`camelid convert --to hf`, SDPA attention).

Pairs/s is the best of --repeats passes over the same micro-batches; the methods take turns. The ranking loss of
the first micro-batch must match camelid's (difference printed). Not a test: about a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decode import cpu_name  # noqa: E402
from reward_scoring import best_times, report  # noqa: E402

import camelid.model as model_module  # noqa: E402
from camelid.checkpoint import convert, load_checkpoint, save_model  # noqa: E402
from camelid.data.padding import pad_right  # noqa: E402
from camelid.data.preferences import load_pairs  # noqa: E402
from camelid.reward_model import RewardModel, ranking_loss  # noqa: E402
from camelid.train.reward import encode_pair  # noqa: E402


def step_loss(score_fn, batch) -> float:
    """One micro-batch forward and backward; the ranking loss (margin 0) of the chosen over the rejected."""
    tokens, mask = batch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = score_fn(tokens, mask).float()
    n = tokens.shape[0] // 2
    loss = ranking_loss(scores[:n], scores[n:], torch.zeros(n))
    loss.backward()
    return loss.item()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished quickstart output directory")
    p.add_argument("--batches", type=int, default=16, help="random micro-batches of the round-1 training pairs")
    p.add_argument("--micro-batch", type=int, default=16, help="pairs per micro-batch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="write the figures here as JSON")
    a = p.parse_args()
    import transformers

    torch.set_num_threads(a.threads)
    run = Path(a.run)
    sft = load_checkpoint(run / "sft" / "model")
    tok = sft.tokenizer()
    pairs = load_pairs(run / "rm-helpful" / "pairs_train.jsonl")
    rng = random.Random(0)
    batches = []
    for _ in range(a.batches):
        enc = [encode_pair(tok, pairs[i], 192) for i in rng.sample(range(len(pairs)), a.micro_batch)]
        batches.append(pad_right([c for c, _ in enc] + [r for _, r in enc]))
    torch.manual_seed(0)
    rm = RewardModel.from_lm(sft.model).train()  # a fresh head on the SFT model, as round 1 starts
    with tempfile.TemporaryDirectory(prefix="camelid-rm-hf-") as d:
        save_model(rm, Path(d) / "rm", tokenizer_path=tok.model_path)
        convert(Path(d) / "rm", Path(d) / "hf", "hf")
        hf = transformers.LlamaForSequenceClassification.from_pretrained(
            Path(d) / "hf", attn_implementation="sdpa").train()

    def camelid(path):
        def run_batch(batch):
            old = model_module.masked_attention_path
            if path:
                model_module.masked_attention_path = lambda q, k: path
            try:
                return step_loss(lambda t, m: rm(t, mask=m), batch)
            finally:
                model_module.masked_attention_path = old
        return run_batch

    methods = {
        "camelid": camelid(None),
        "camelid, flash": camelid("flash"),
        "transformers": lambda batch: step_loss(
            lambda t, m: hf(input_ids=t, attention_mask=m.long()).logits[:, 0], batch),
    }
    first = {name: fn(batches[0]) for name, fn in methods.items()}  # warm-up, and the losses to compare
    times = best_times({name: lambda fn=fn: [fn(b) for b in batches] for name, fn in methods.items()}, a.repeats)
    rm.zero_grad(), hf.zero_grad()
    tokens = sum(int(m.sum()) for _, m in batches)
    padded = sum(m.numel() for _, m in batches)
    result = {"cpu": cpu_name(), "threads": a.threads, "torch": torch.__version__,
              "transformers": transformers.__version__, "micro_batches": a.batches, "pairs": a.batches * a.micro_batch,
              "real_tokens": tokens, "padded_tokens": padded, "methods": {}}
    print(f"{result['cpu']}, {a.threads} threads: {a.batches} micro-batches of {a.micro_batch} pairs "
          f"({tokens:,} tokens, {padded:,} padded), reward model of {run}'s SFT model, bf16 autocast")
    report(result, {name: a.batches * a.micro_batch / t for name, t in times.items()},
           {name: abs(first[name] - first["camelid"]) for name in methods}, "loss_diff_vs_camelid", "pairs/s (fwd+bwd)")
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
