"""Rollout throughput: K answers per prompt at a temperature, as rejection sampling and PPO draw them, timed
end to end (prefill included) on prompts of the proving ground's own lengths.

    python bench/rollouts.py --legacy aceefde              # today's engine against the engine of aceefde
    python bench/rollouts.py --legacy aceefde --compile    # and with the compiled decode step

bench/decode.py times decoding alone, on prompts of one length. A rollout is more than that: RS and PPO
send prompts of mixed length (the proving ground's chat prompts: 10 to over 100 tokens), K samples of each,
and short answers, so the prefill and the sampler are a large share of the time. Here every engine answers
the same prompts (`make_dialogs("train")` in the chat format, tokenized with a SentencePiece model trained
on the embedded corpus, as the quickstart's), K times each, `max_new_tokens` new tokens per answer (random
weights never stop early), at most `--batches` rows at once; tokens/s = answer tokens / wall time of the
whole `generate` call. The engines take turns in every repeat, in reverse order every other repeat;
"over REV" (or "over camelid" without --legacy) is the median of the per-repeat ratios, tokens/s the best repeat.

`--legacy REV` also times camelid/infer/engine.py and its sampler as they were at git revision REV (aceefde:
the engine when the decoding issue was filed).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decode import CONFIGS, DTYPES, cpu_name, engine_at  # noqa: E402

from camelid.chat_format import encode_dialog  # noqa: E402
from camelid.infer.engine import generate  # noqa: E402
from camelid.model import ModelArgs, Transformer  # noqa: E402
from camelid.quickstart import VOCAB_SIZE, stage_tokenizer  # noqa: E402
from camelid.tasks import make_dialogs  # noqa: E402


def rollout_prompts(n: int, k: int, max_len: int) -> list[list[int]]:
    """n proving-ground prompts in the chat format, each k times in a row (as RS and PPO ask for K samples)."""
    with tempfile.TemporaryDirectory(prefix="camelid-rollouts-") as workdir:
        tok = stage_tokenizer(Path(workdir), VOCAB_SIZE, max_lines=None)
        prompts = [encode_dialog(tok, ex.messages)[-max_len:] for ex in make_dialogs("train", n, seed=0)]
    return [p for p in prompts for _ in range(k)]


def rollout_rates(engines: dict, model, prompts, batch: int, args) -> list[dict]:
    """Answer tokens/s of each engine, one dict per repeat (after a warm-up run of each)."""
    def run(gen, seed):
        t = time.perf_counter()
        gen(model, prompts, args.new_tokens, temperature=args.temperature, seed=seed, stop_ids=None, max_batch=batch)
        return len(prompts) * args.new_tokens / (time.perf_counter() - t)

    for gen in engines.values():
        run(gen, 0)  # weight packing, compiles
    rates = []
    for i in range(args.repeats):
        order = list(engines.items()) if i % 2 == 0 else list(reversed(engines.items()))
        rates.append({name: run(gen, i + 1) for name, gen in order})
    return rates


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["ref", "quickstart"], choices=["ref", "quickstart"])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--batches", nargs="+", type=int, default=[16, 64], help="rows decoded at once (max_batch)")
    p.add_argument("--prompts", type=int, default=64, help="distinct prompts")
    p.add_argument("--k", type=int, default=4, help="samples per prompt")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens per answer (the quickstart's RS: 32)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--legacy", default=None, metavar="REV", help="also time the engine of git revision REV")
    p.add_argument("--compile", action="store_true", help="also time camelid's compiled decode step")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = rollout_prompts(args.prompts, args.k, max_len=192)
    lengths = [len(x) for x in prompts]
    print(f"# rollout benchmark: torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}; "
          f"{args.prompts} prompts x {args.k} samples (prompt tokens mean {statistics.mean(lengths):.0f}, "
          f"max {max(lengths)}), {args.new_tokens} new tokens each at temperature {args.temperature}, prefill "
          f"included; best of {args.repeats} (ratios: median of the per-repeat ratios)")
    engines = {"camelid": generate}
    if args.compile:
        engines["camelid compiled"] = functools.partial(generate, compile=True)
    base = "camelid"
    if args.legacy:
        base = f"camelid@{args.legacy}"
        engines[base] = engine_at(args.legacy).generate
    print(f"| config | dtype | rows | engine | answer tok/s | over {base} |")
    print("|---|---|---|---|---|---|")
    rows = []
    for name in args.configs:
        for dt in args.dtypes:
            torch.manual_seed(0)
            model = Transformer(ModelArgs(**CONFIGS[name])).eval().to(DTYPES[dt])
            for batch in args.batches:
                rates = rollout_rates(engines, model, prompts, batch, args)
                for engine in engines:
                    row = dict(config=name, dtype=dt, rows=batch, engine=engine, tok_s=max(r[engine] for r in rates),
                               over_base=statistics.median(r[engine] / r[base] for r in rates),
                               repeats=[r[engine] for r in rates])
                    rows.append(row)
                    print(f"| {name} | {dt} | {batch} | {engine} | {row['tok_s']:.0f} | {row['over_base']:.2f}x |",
                          flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cpu=cpu_name(), torch=torch.__version__, threads=torch.get_num_threads(), legacy=args.legacy,
                           base=base, prompts=args.prompts, k=args.k, new_tokens=args.new_tokens,
                           temperature=args.temperature,
                           repeats=args.repeats, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
