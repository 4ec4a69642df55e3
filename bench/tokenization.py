"""Tokenization throughput: camelid vs the sentencepiece library, same text, same machine, same run.

    python bench/tokenization.py [--tokenizer MODEL] [--vocab-size 4096] [--mb 0]

Text: the embedded corpus (python-docs, stdlib-docstrings, stdlib-code, kjv-bible), written once to 16
JSONL files. Rows (MB/s of UTF-8 text in, tokens out):
  sentencepiece encode, 1 thread      sp.encode(doc) for each document (the library's own loop)
  sentencepiece batch, 1 thread       sp.encode(all_docs, num_threads=1)
  camelid Tokenizer.encode_batch      camelid.Tokenizer.encode_batch(all_docs, num_threads=1)
  camelid prepare, N workers          prepare_data end to end: read JSONL, clean, dedup, hash, tokenize,
                                      write shards + manifest (force=True), with N worker processes
"""

from __future__ import annotations

import sys
from pathlib import Path

import argparse
import json
import os
import platform
import tempfile
import time

import sentencepiece as spm

from camelid import Tokenizer
from camelid.data import prepare_data
from camelid.data.corpus import iter_embedded
from camelid.data.mixture import embedded_mixture


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="camelid-bench-"))
    docs = [d for s in embedded_mixture().sources for d in iter_embedded(s.corpus)]
    nbytes = sum(len(d.encode()) for d in docs)
    if args.tokenizer:
        tok = Tokenizer(args.tokenizer)
    else:
        tok = Tokenizer.train(docs, tmp / "tok", vocab_size=args.vocab_size)
    sp = spm.SentencePieceProcessor(model_file=tok.model_path)
    (tmp / "jsonl").mkdir()
    for k in range(16):  # 16 files: units of work for the worker processes
        with open(tmp / "jsonl" / f"part-{k:02d}.jsonl", "w") as f:
            for d in docs[k::16]:
                f.write(json.dumps({"text": d}) + "\n")
    mixture = {"name": "bench", "sources": {"all": {"type": "jsonl", "paths": [str(tmp / "jsonl")], "dedup": False,
                                                    "min_chars": 0, "min_printable": 0, "val_fraction": 0}}}
    ntok = sum(len(x) for x in sp.encode(docs, num_threads=1))

    rows = []
    rows.append(("sentencepiece encode, 1 thread", best_of(lambda: [sp.encode(d) for d in docs], args.repeat)))
    rows.append(("sentencepiece batch, 1 thread", best_of(lambda: sp.encode(docs, num_threads=1), args.repeat)))
    rows.append(("camelid Tokenizer.encode_batch, 1 thread",
                 best_of(lambda: tok.encode_batch(docs, num_threads=1), args.repeat)))
    for w in (1, 2):
        out = tmp / f"data{w}"
        rows.append((f"camelid prepare, {w} worker{'s' if w > 1 else ''}",
                     best_of(lambda: prepare_data(tok, out, mixture=mixture, workers=w, progress=False, force=True),
                             args.repeat)))
    if os.cpu_count() and os.cpu_count() > 2:
        rows.append(("sentencepiece batch, all threads", best_of(lambda: sp.encode(docs, num_threads=-1), args.repeat)))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, sentencepiece {spm.__version__}")
    print(f"text: embedded corpus, {len(docs):,} documents, {nbytes / 1e6:.2f} MB, {ntok:,} tokens "
          f"(vocab {tok.vocab_size:,}); best of {args.repeat}")
    base = rows[0][1]
    print(f"| {'what':<42} | {'s':>6} | {'MB/s':>6} | {'Mtok/s':>6} | {'vs sp':>5} |")
    print(f"|{'-' * 44}|{'-' * 8}|{'-' * 8}|{'-' * 8}|{'-' * 7}|")
    for name, t in rows:
        print(f"| {name:<42} | {t:6.2f} | {nbytes / 1e6 / t:6.2f} | {ntok / 1e6 / t:6.2f} | {base / t:5.2f} |")


if __name__ == "__main__":
    main()
