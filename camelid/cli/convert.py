"""`camelid convert SRC DST --to FORMAT`: a checkpoint between camelid, Hugging Face and Meta formats
(camelid.checkpoint)."""

from __future__ import annotations

from pathlib import Path

from camelid.dtypes import NAMES as DTYPE_NAMES


def add_arguments(p) -> None:
    p.description = ("Convert a checkpoint directory between camelid, Hugging Face and Meta formats. "
                     "The source format is detected. A tokenizer.model beside the weights is copied along.")
    p.add_argument("src", help="checkpoint directory (camelid, Hugging Face or Meta)")
    p.add_argument("dst", help="output directory (replaced atomically if it exists)")
    p.add_argument("--to", required=True, choices=["camelid", "hf", "meta"], help="output format")
    p.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default=None, help="cast weights (default: keep)")
    p.add_argument("--shards", type=int, default=1, help="model-parallel files for --to meta")


def run(args) -> int:
    from camelid.checkpoint import convert, detect_format
    from camelid.dtypes import DTYPES

    src_fmt = detect_format(Path(args.src))
    out = convert(args.src, args.dst, args.to, DTYPES.get(args.dtype), args.shards)
    print(f"converted {args.src} ({src_fmt}) -> {out} ({args.to})")
    if args.to == "hf":
        print("load it with: transformers.LlamaForCausalLM.from_pretrained(%r)" % str(out))
    return 0
