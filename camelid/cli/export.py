"""`camelid export`: a (sharded) training checkpoint -> one camelid, Hugging Face or Meta checkpoint
(camelid.train.export)."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.description = ("Export a training checkpoint (any number of ranks, any FSDP/TP layout) to a single "
                     "camelid, Hugging Face or Meta checkpoint.")
    p.add_argument("src", help="a run directory (newest checkpoint) or a checkpoints/step_N directory")
    p.add_argument("dst", help="output directory")
    p.add_argument("--to", default="camelid", choices=["camelid", "hf", "meta"])
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"], help="cast weights (default: keep fp32)")


def run(args) -> int:
    from camelid.dtypes import DTYPES
    from camelid.train.export import export_checkpoint, resolve_checkpoint

    dtype = DTYPES.get(args.dtype)
    step_dir = resolve_checkpoint(args.src)  # warns once about a damaged newer checkpoint it skips
    out = export_checkpoint(step_dir, args.dst, args.to, dtype)
    print(f"exported {step_dir} -> {out} ({args.to})")
    return 0
