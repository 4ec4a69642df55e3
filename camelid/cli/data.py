"""`camelid data prepare | info | verify | sample`."""

from __future__ import annotations

import argparse
import json
import time

from camelid.errors import CamelidError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("prepare", help="tokenize a mixture's sources into token shards + manifest.json",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tokenizer", required=True, metavar="MODEL", help="tokenizer.model (or its folder)")
    p.add_argument("--mixture", default=None, metavar="FILE.toml",
                   help="mixture file (default: the embedded corpus; `embedded` names it too)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: cores, at most 8)")
    p.add_argument("--skip-bad", action="store_true", help="skip and count malformed JSONL records instead of stopping")
    p.add_argument("--no-dedup", action="store_true", help="keep exact duplicate documents")
    p.add_argument("--min-chars", type=int, default=None, help="drop documents shorter than this (source default: 16)")
    p.add_argument("--min-printable", type=float, default=None,
                   help="drop documents with a lower share of printable characters (source default: 0.9)")
    p.add_argument("--force", action="store_true", help="rebuild every source even if unchanged")
    p.add_argument("--no-progress", action="store_true")

    i = sub.add_parser("info", help="summarise a prepared directory")
    i.add_argument("dir")
    i.add_argument("--json", action="store_true", help="print the whole manifest")

    v = sub.add_parser("verify", help="re-hash every shard against the manifest")
    v.add_argument("dir")

    s = sub.add_parser("sample", help="decode a few windows of the mixture (to see what the model will read)")
    s.add_argument("dir")
    s.add_argument("--tokenizer", default=None, metavar="MODEL", help="default: the one recorded in the manifest")
    s.add_argument("--seq-len", type=int, default=64)
    s.add_argument("-n", type=int, default=3)
    s.add_argument("--seed", type=int, default=0)


def _print_summary(m: dict) -> None:
    print(f"{'source':<20} {'weight':>6} {'docs':>8} {'train tok':>12} {'val tok':>10} {'MB':>7}  dropped")
    for name, e in m["sources"].items():
        c = e["counts"]
        dropped = ", ".join(f"{k} {c[k]}" for k in ("duplicates", "too_short", "unprintable", "bad_records",
                                                    "invalid_utf8_skipped") if c.get(k))
        fixed = f"; invalid UTF-8 replaced in {c['invalid_utf8_docs']} docs" if c.get("invalid_utf8_docs") else ""
        print(f"{name:<20} {m['mixture']['weights'].get(name, 0):>6.3f} {e['documents']:>8,} {e['train_tokens']:>12,} "
              f"{e['val_tokens']:>10,} {e['bytes'] / 1e6:>7.2f}  {dropped or '-'}{fixed}")
    total = sum(e["tokens"] for e in m["sources"].values())
    print(f"{total:,} tokens ({m['dtype']}), tokenizer vocab {m['tokenizer']['vocab_size']:,}, "
          f"data hash {m['data_hash']}{'' if m.get('complete') else ' -- INCOMPLETE: run prepare again'}")


def run(args) -> int:
    if args.action == "prepare":
        from camelid.data.prepare import prepare_data

        overrides = {}
        if args.skip_bad:
            overrides["skip_bad"] = True
        if args.no_dedup:
            overrides["dedup"] = False
        if args.min_chars is not None:
            overrides["min_chars"] = args.min_chars
        if args.min_printable is not None:
            overrides["min_printable"] = args.min_printable
        t0 = time.time()
        m = prepare_data(args.tokenizer, args.out, mixture=args.mixture, workers=args.workers,
                         progress=not args.no_progress, force=args.force, overrides=overrides or None)
        _print_summary(m)
        print(f"{args.out}/manifest.json ({time.time() - t0:.1f}s)")
        return 0
    from camelid.data.prepare import read_manifest, verify

    if args.action == "info":
        m = read_manifest(args.dir)
        if args.json:
            print(json.dumps(m, indent=2))
        else:
            _print_summary(m)
        return 0
    if args.action == "verify":
        problems = verify(args.dir)
        for p in problems:
            print(p)
        if problems:
            raise CamelidError(f"{len(problems)} problem(s); re-run `camelid data prepare --out {args.dir}`")
        print("every shard matches the manifest")
        return 0
    from camelid.data.sampler import MixtureSampler
    from camelid.tokenizer import Tokenizer

    sampler = MixtureSampler(args.dir, seq_len=args.seq_len, seed=args.seed)
    tok = Tokenizer(args.tokenizer or sampler.manifest["tokenizer"]["path"])
    for (source, start), w in zip(sampler.locate(range(args.n)), sampler.windows(range(args.n))):
        print(f"--- window from {source} (token {start:,}) ---")
        print(tok.decode(w.tolist()))
    return 0
