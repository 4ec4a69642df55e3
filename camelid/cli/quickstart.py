"""`camelid quickstart`: the recipe end to end on this machine (camelid.quickstart's PIPELINE)."""

from __future__ import annotations

from pathlib import Path


def add_arguments(p) -> None:
    p.description = ("Run the LLaMA / Llama-2 recipe end to end on this machine with the embedded corpus: train a "
                     "tokenizer, prepare the data, pre-train a small model, fine-tune it into a chat model, train "
                     "helpfulness and safety reward models, improve the policy with rejection sampling and PPO, "
                     "add Ghost Attention, and print a report card of every stage. Re-running continues where it "
                     "stopped.")
    p.add_argument("--out", default="runs/quickstart", help="output directory")
    p.add_argument("--smoke", action="store_true", help="every stage at toy size (well under 90 seconds)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE",
                   help="override a stage's setting, e.g. --set pretrain.train.max_steps=50, --set "
                        "sft.train.lr=1e-3, --set rm.rm.margin=large (both reward models), --set ppo.ppo.beta=0.1")
    p.add_argument("--print-commands", action="store_true",
                   help="print the camelid commands that do what the quickstart does, and exit")


def run(args) -> int:
    from camelid.quickstart import print_commands, quickstart

    if args.print_commands:
        print_commands(Path(args.out), args.smoke, args.overrides)
        return 0
    quickstart(args.out, smoke=args.smoke, overrides=args.overrides)
    return 0
