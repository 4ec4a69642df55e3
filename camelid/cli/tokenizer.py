"""`camelid tokenizer train | encode | info`."""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from camelid.errors import CamelidError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = sub.add_parser("train", help="train a LLaMA-style SentencePiece BPE tokenizer (Meta's settings)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", metavar="FILE_OR_DIR", help="plain-text files or folders")
    src.add_argument("--corpus", metavar="NAME",
                     help="a built-in corpus: `embedded` (the default mixture's text) or one embedded source "
                          "(python-docs, stdlib-docstrings, stdlib-code, kjv-bible, shakespeare)")
    src.add_argument("--mixture", metavar="FILE.toml", help="every source of a data mixture (text, jsonl, parquet)")
    t.add_argument("--vocab-size", type=int, default=32000)
    t.add_argument("--out", required=True, metavar="DIR", help="writes DIR/tokenizer.model and DIR/tokenizer.vocab")
    t.add_argument("--max-lines", type=int, default=None,
                   help="sample at most this many lines (SentencePiece's input_sentence_size; Meta: 200M)")
    t.add_argument("--threads", type=int, default=None, help="trainer threads (default: all cores)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any SentencePiece trainer option, e.g. --set character_coverage=1.0")

    e = sub.add_parser("encode", help="show the ids and pieces of a text")
    e.add_argument("--tokenizer", required=True, metavar="MODEL", help="tokenizer.model (or its folder)")
    e.add_argument("text", nargs="+")
    e.add_argument("--bos", action="store_true")
    e.add_argument("--eos", action="store_true")

    i = sub.add_parser("info", help="vocabulary size, special ids and trainer settings of a tokenizer.model")
    i.add_argument("tokenizer", metavar="MODEL")


def _parse_value(v: str):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    return v


def _documents(args):
    from camelid.data.corpus import embedded_names, iter_embedded
    from camelid.data.mixture import embedded_mixture, load_mixture
    from camelid.data.sources import iter_documents

    if args.corpus:
        if args.corpus == "embedded":
            specs = [s for s in embedded_mixture().sources if s.weight > 0]
            return itertools.chain.from_iterable(iter_embedded(s.corpus) for s in specs), \
                f"embedded corpus ({', '.join(s.name for s in specs)})"
        if args.corpus in embedded_names():
            return iter_embedded(args.corpus), f"embedded corpus {args.corpus}"
        raise CamelidError(f"unknown corpus {args.corpus!r}; choose `embedded` or one of {', '.join(embedded_names())}")
    if args.mixture:
        mix = load_mixture(args.mixture)
        return itertools.chain.from_iterable(iter_documents(s) for s in mix.sources if s.weight > 0), \
            f"mixture {mix.name}"
    return None, ", ".join(args.input)


def run(args) -> int:
    from camelid.tokenizer import Tokenizer

    if args.action == "train":
        overrides = {}
        for kv in args.set:
            if "=" not in kv:
                raise CamelidError(f"--set {kv}: expected KEY=VALUE")
            k, v = kv.split("=", 1)
            overrides[k.strip()] = _parse_value(v.strip())
        if args.max_lines:
            overrides["input_sentence_size"] = args.max_lines
        if args.threads:
            overrides["num_threads"] = args.threads
        docs, what = _documents(args)
        print(f"training a {args.vocab_size:,}-piece BPE tokenizer on {what} ...", flush=True)
        t0 = time.time()
        tok = Tokenizer.train(docs if docs is not None else [Path(p) for p in args.input], args.out, vocab_size=args.vocab_size,
                              **overrides)
        sample = "In the beginning was the Word, in 2023: def f(x): return x ** 2"
        print(f"wrote {tok.model_path} ({tok.vocab_size:,} pieces) in {time.time() - t0:.1f}s")
        print(f"  {sample!r} -> {tok.encode_pieces(sample)}")
        return 0
    tok = Tokenizer(args.tokenizer)
    if args.action == "encode":
        text = " ".join(args.text)
        ids = tok.encode(text, bos=args.bos, eos=args.eos)
        print(json.dumps({"ids": ids, "pieces": [tok.id_to_piece(i) for i in ids], "n": len(ids)},
                         ensure_ascii=False))
        return 0
    from sentencepiece import sentencepiece_model_pb2 as pb
    m = pb.ModelProto()
    m.ParseFromString(open(tok.model_path, "rb").read())
    ts = m.trainer_spec
    print(f"{tok.model_path}: vocab {tok.vocab_size:,}, unk {tok.unk_id}, bos {tok.bos_id}, eos {tok.eos_id}, "
          f"pad {tok.pad_id}, sha256 {tok.sha256[:16]}")
    print(f"  model_type {pb.TrainerSpec.ModelType.Name(ts.model_type)}, split_digits {ts.split_digits}, "
          f"byte_fallback {ts.byte_fallback}, character_coverage {ts.character_coverage}, "
          f"normalization {m.normalizer_spec.name!r}, add_dummy_prefix {m.normalizer_spec.add_dummy_prefix}, "
          f"remove_extra_whitespaces {m.normalizer_spec.remove_extra_whitespaces}")
    return 0
