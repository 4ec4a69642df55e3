"""Reward-model training step: forward and backward over padded pairs, camelid beside transformers.

    python bench/reward_training.py --run runs/quickstart

The reward model trains on micro-batches of 16 pairs in bf16 autocast on a CPU: the attention is masked (padding)
and gradients flow, where PyTorch's CPU flash kernel takes 10-15x its forward time for the backward. The pairs are
a finished quickstart's own (round 1's `rm-helpful/pairs_train.jsonl`), timed four ways:

- camelid: micro-batches as training draws them (`reward.PairData`: a prompt's pairs together, each distinct
  answer run once, padded to the batch's longest), `model.masked_attention_path` picking plain matmuls;
- camelid, pairs apart: random micro-batches, each pair's two answers run as two rows (32 rows, chosen then
  rejected), as TRL's RewardTrainer runs them;
- camelid, pairs apart, flash: the same with SDPA's kernel for masked attention (the path before);
- transformers: `LlamaForSequenceClassification` of the same weights (`camelid convert --to hf`, SDPA attention)
  on the random micro-batches.

Pairs/s is the best of --repeats passes over the same micro-batches; the methods take turns. Each ranking loss of
a first micro-batch must match camelid's on the same pairs run apart (difference printed). Not a test: about a
minute on a 2-core CPU.
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
from camelid.train.reward import PairData, encode_pair  # noqa: E402


def step_loss(score_fn, batch) -> float:
    """One micro-batch forward and backward; the ranking loss (margin 0) of each pair's chosen over its rejected
    row (`batch`: tokens, mask, and the rows of the chosen and the rejected answers)."""
    tokens, mask, chosen, rejected = batch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = score_fn(tokens, mask).float()
    loss = ranking_loss(scores[chosen], scores[rejected], torch.zeros(len(chosen)))
    loss.backward()
    return loss.item()


def apart(encoded: list[tuple[list[int], list[int]]]):
    """Pairs as two rows each, chosen ones first."""
    n = len(encoded)
    return (*pad_right([c for c, _ in encoded] + [r for _, r in encoded]), torch.arange(n), torch.arange(n, 2 * n))


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
    batches = [apart([encode_pair(tok, pairs[i], 192) for i in rng.sample(range(len(pairs)), a.micro_batch)])
               for _ in range(a.batches)]
    data = PairData(pairs, tok, 192, "none")
    order = data.order(0).tolist()
    drawn = [order[b * a.micro_batch:(b + 1) * a.micro_batch] for b in range(a.batches)]
    grouped = [tuple(data.batch(idx)[k] for k in ("tokens", "mask", "chosen", "rejected")) for idx in drawn]
    grouped_apart = apart([encode_pair(tok, pairs[i], 192) for i in drawn[0]])  # its first one, two rows a pair
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
        "camelid": (camelid(None), grouped),
        "camelid, pairs apart": (camelid(None), batches),
        "camelid, pairs apart, flash": (camelid("flash"), batches),
        "transformers": (lambda batch: step_loss(
            lambda t, m: hf(input_ids=t, attention_mask=m.long()).logits[:, 0], batch), batches),
    }
    first = {name: fn(bs[0]) for name, (fn, bs) in methods.items()}  # warm-up, and the losses to compare
    diffs = {name: abs(first[name] - first["camelid, pairs apart"]) for name in methods}
    diffs["camelid"] = abs(first["camelid"] - methods["camelid"][0](grouped_apart))
    times = best_times({name: lambda fn=fn, bs=bs: [fn(b) for b in bs] for name, (fn, bs) in methods.items()},
                       a.repeats)
    rm.zero_grad(), hf.zero_grad()
    result = {"cpu": cpu_name(), "threads": a.threads, "torch": torch.__version__,
              "transformers": transformers.__version__, "micro_batches": a.batches, "pairs": a.batches * a.micro_batch,
              "methods": {}}
    for name, bs in (("grouped", grouped), ("apart", batches)):
        result[f"rows_{name}"] = sum(len(b[0]) for b in bs)
        result[f"real_tokens_{name}"] = sum(int(b[1].sum()) for b in bs)
        result[f"padded_tokens_{name}"] = sum(b[1].numel() for b in bs)
    print(f"{result['cpu']}, {a.threads} threads: {a.batches} micro-batches of {a.micro_batch} pairs, reward model "
          f"of {run}'s SFT model, bf16 autocast; as training draws them {result['rows_grouped']:,} rows "
          f"({result['real_tokens_grouped']:,} tokens, {result['padded_tokens_grouped']:,} padded), pairs apart "
          f"{result['rows_apart']:,} rows ({result['real_tokens_apart']:,} tokens, "
          f"{result['padded_tokens_apart']:,} padded)")
    report(result, {name: a.batches * a.micro_batch / t for name, t in times.items()}, diffs,
           "loss_diff_vs_apart", "pairs/s (fwd+bwd)")
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
