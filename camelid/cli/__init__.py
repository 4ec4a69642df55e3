"""The `camelid` command: every command line of camelid lives in this package.

COMMANDS names, for each command, the module of this package that holds its flags and what it runs:
`add_arguments(parser)` and `run(args)`, which turns the flags into calls of library functions (the rest
of camelid knows nothing of argparse). `module:name` names a `Command` of a module that holds several
(rs and ppo share their flags in `rlhf`; `plan` sits with `scaling`). Modules are imported only when
their command runs, and import no torch until they run, so `camelid --help` and `camelid COMMAND --help`
are instant.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import sys
from typing import Callable, NamedTuple

import camelid
from camelid.errors import CamelidError

# Optional packages and the extra that brings each: a command that needs one says how to install it.
EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "pyarrow": "parquet", "transformers": "hf"}

# name -> (module or module:Command, one-line help). Keep in pipeline order: it is the order `--help` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("camelid.cli.quickstart", "the whole recipe on a laptop CPU: tokenizer, pre-training, ..."),
    "tokenizer": ("camelid.cli.tokenizer", "train (SentencePiece BPE, Meta's settings), inspect or try a tokenizer"),
    "data": ("camelid.cli.data", "prepare token shards from a data mixture; inspect, verify, sample them"),
    "pretrain": ("camelid.cli.pretrain", "pre-train a LLaMA model (single process or torchrun) from a TOML recipe"),
    "rm": ("camelid.cli.rm", "train a helpfulness or safety reward model (ranking loss with rating margins)"),
    "rs": ("camelid.cli.rlhf:rs", "rejection-sampling fine-tuning: best of K samples by the combined reward, pooled"),
    "ppo": ("camelid.cli.rlhf:ppo", "PPO on the combined reward with a KL penalty to the reference policy"),
    "export": ("camelid.cli.export", "export a (sharded) training checkpoint to a camelid, Hugging Face or Meta checkpoint"),
    "sft": ("camelid.cli.sft", "supervised chat fine-tuning (Llama-2 SFT: answer-only loss, packing, GAtt data)"),
    "eval": ("camelid.cli.eval", "proving-ground report card of a chat model: task accuracy, refusals, GAtt adherence"),
    "plot": ("camelid.cli.plot", "plot loss curves of one or more runs against tokens"),
    "convert": ("camelid.cli.convert", "convert a checkpoint between camelid, Hugging Face and Meta formats"),
    "generate": ("camelid.cli.generate", "generate text from a prompt (streaming; greedy or sampled)"),
    "chat": ("camelid.cli.chat", "chat with a model in the terminal (Llama-2 chat format, streaming)"),
    "serve": ("camelid.cli.serve", "OpenAI-compatible HTTP server with continuous batching and a web chat page"),
    "scaling": ("camelid.cli.scaling:scaling", "Chinchilla scaling laws: compute-optimal N and D, fit your runs, inference-aware sizing"),
    "plan": ("camelid.cli.scaling:plan", "plan a run: memory per GPU, step time, days and GPU-hours (--stage sft|rm|rs|ppo for post-training)"),
}


class Command(NamedTuple):
    """One command of a module that holds several (`module:name` in COMMANDS)."""
    add_arguments: Callable  # (argparse.ArgumentParser) -> None
    run: Callable  # (argparse.Namespace) -> int


def load_command(target: str):
    """The module `target` names, or for `module:name` that module's Command `name`."""
    module_name, _, name = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, name) if name else module


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="camelid",
        description="LLaMA-1 / Llama-2 training system. Run `camelid COMMAND --help` for a command's options; "
                    "`camelid COMMAND ... --debug` shows the traceback behind an error.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<12} {h}" for n, (_, h) in COMMANDS.items()),
    )
    p.add_argument("--version", action="version", version=f"camelid {camelid.__version__}")
    p.add_argument("command", choices=list(COMMANDS), metavar="COMMAND")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv[:1] or ["--help"])
        return
    name, rest = argv[0], argv[1:]
    debug = "--debug" in rest  # a user error shows its traceback too
    rest = [a for a in rest if a != "--debug"]
    target, help_text = COMMANDS[name]
    if int(os.environ.get("RANK", "0")) > 0:
        sys.stdout = open(os.devnull, "w")  # under torchrun rank 0 speaks for all; errors still reach stderr
    try:
        command = load_command(target)
        parser = argparse.ArgumentParser(prog=f"camelid {name}", description=help_text,
                                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        command.add_arguments(parser)
        args = parser.parse_args(rest)
        code = command.run(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        code = 130
    except CamelidError as e:
        if debug:
            raise
        print(f"camelid {name}: error: {e}", file=sys.stderr)
        code = 2
    except ModuleNotFoundError as e:
        extra = EXTRAS.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"camelid {name}: error: this command needs {e.name}, which is not installed: "
              f"pip install 'camelid[{extra}]'", file=sys.stderr)
        code = 2
    _exit(code or 0)


def _exit(code: int) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun, gloo's worker threads may drop their last collective's tensors only while the
        # interpreter shuts down; Python ends a thread that then takes the GIL with pthread_exit, whose unwinding
        # aborts the finished process ("terminate called without an active exception", seen once in CI). So a
        # rank runs the exit handlers and flushes itself, then leaves without the interpreter's teardown.
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
