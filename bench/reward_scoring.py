"""Reward-model scoring throughput: the pairs rejection sampling scores, camelid beside transformers.

    python bench/reward_scoring.py --run runs/quickstart

Rejection sampling scores K answers to every prompt with both reward models (2,304 prompts x 8 answers in the
quickstart's first round); PPO scores every rollout. The pairs here are a finished quickstart's own: the
prompts and answers of its round-1 pool (`rs/iter_1/pool.jsonl`, chat format, the proving ground's mixed
lengths), scored by its helpfulness reward model, batch 16, in four ways:

- camelid: the reward model read as `RewardScorer` reads it for RS and PPO: the pairs shortest first, each
  batch padded to its own longest (raw scores: the scorer's calibration is one affine map on top);
- camelid, one length: the reading before (every batch padded to the longest pair of all, so that torchrun ranks
  scoring shares of one list agreed on every bit);
- transformers: `LlamaForSequenceClassification` of the same weights (`camelid convert --to hf`), batches in the
  caller's order padded to their own longest (how one calls it), and in camelid's batches.

Pairs/s is the best of --repeats runs; the methods take turns in each repeat. Every method's scores must match
camelid's (largest difference printed). Not a test: about a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decode import cpu_name  # noqa: E402

from camelid.checkpoint import convert, load_checkpoint, load_model  # noqa: E402
from camelid.data.padding import pad_right  # noqa: E402
from camelid.rlhf.rewards import Prompt, RewardScorer  # noqa: E402


def in_order(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


@torch.no_grad()
def camelid_scores(rm, seqs, batches, pad_to: int = 0) -> torch.Tensor:
    out = torch.zeros(len(seqs))
    for b in batches:
        tokens, mask = pad_right([seqs[i] for i in b], length=pad_to)
        out[b] = rm(tokens, mask=mask).float()
    return out


@torch.no_grad()
def hf_scores(hf, seqs, batches) -> torch.Tensor:
    out = torch.zeros(len(seqs))
    for b in batches:
        tokens, mask = pad_right([seqs[i] for i in b])  # right padding with id 0, the classifier's pad_token_id
        out[b] = hf(input_ids=tokens, attention_mask=mask.long()).logits[:, 0].float()
    return out


def best_times(methods: dict, repeats: int) -> dict[str, float]:
    """The best of `repeats` wall times of each method (no arguments); the methods take turns, in reverse order
    every other repeat, so that no method always runs on a cache the one before it warmed."""
    times = {name: [] for name in methods}
    for r in range(repeats):
        for name in (methods if r % 2 == 0 else reversed(list(methods))):
            t = time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - t)
    return {name: min(ts) for name, ts in times.items()}


def report(result: dict, rates: dict[str, float], diffs: dict[str, float], diff_key: str, unit: str = "pairs/s"
           ) -> None:
    """Each method's pairs/s and how far its output is from camelid's into `result["methods"]`, printed, then
    camelid's speed-up over each."""
    for name, rate in rates.items():
        result["methods"][name] = {"pairs_per_s": rate, diff_key: diffs[name]}
        print(f"  {name:32} {rate:8.1f} {unit}   {diff_key} {diffs[name]:.1e}")
    base = result["methods"]["camelid"]["pairs_per_s"]
    for name, m in result["methods"].items():
        if name != "camelid":
            m["camelid_speedup"] = base / m["pairs_per_s"]
            print(f"  camelid over {name}: {m['camelid_speedup']:.2f}x")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished quickstart output directory")
    p.add_argument("--pairs", type=int, default=1024, help="pairs from the round-1 pool (its first ones)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="write the figures here as JSON")
    a = p.parse_args()
    import transformers

    torch.set_num_threads(a.threads)
    run = Path(a.run)
    rows = [json.loads(x) for x in (run / "rs" / "iter_1" / "pool.jsonl").read_text().splitlines()][:a.pairs]
    tok = load_checkpoint(run / "sft" / "model").tokenizer()
    rm = load_model(run / "rm-helpful" / "model").eval()
    scorer = RewardScorer(rm, None, tok, batch_size=a.batch)
    seqs = scorer.encode([Prompt(r["messages"]) for r in rows], [r["answer"] for r in rows])
    with tempfile.TemporaryDirectory(prefix="camelid-rm-hf-") as d:
        convert(run / "rm-helpful" / "model", Path(d) / "hf", "hf")
        hf = transformers.LlamaForSequenceClassification.from_pretrained(Path(d) / "hf").eval()
    by_length, ordered = scorer.batches(seqs), in_order(len(seqs), a.batch)
    longest = max(len(s) for s in seqs)
    methods = {
        "camelid": lambda: camelid_scores(rm, seqs, by_length),
        "camelid, one length": lambda: camelid_scores(rm, seqs, ordered, pad_to=longest),
        "transformers": lambda: hf_scores(hf, seqs, ordered),
        "transformers, camelid's batches": lambda: hf_scores(hf, seqs, by_length),
    }
    scores = {name: fn() for name, fn in methods.items()}  # warm-up, and the scores to compare
    times = best_times(methods, a.repeats)
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.float)
    result = {"cpu": cpu_name(), "threads": a.threads, "torch": torch.__version__,
              "transformers": transformers.__version__, "pairs": len(seqs), "batch": a.batch,
              "mean_tokens": lengths.mean().item(), "longest": longest, "methods": {}}
    print(f"{result['cpu']}, {a.threads} threads: {len(seqs)} pairs (mean {lengths.mean():.0f} tokens, longest "
          f"{longest}), batch {a.batch}, helpfulness RM of {run}")
    report(result, {name: len(seqs) / t for name, t in times.items()},
           {name: (scores[name] - scores["camelid"]).abs().max().item() for name in methods}, "max_abs_diff_vs_camelid")
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
