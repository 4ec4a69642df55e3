"""`camelid chat --model PATH`: a chat session (camelid.infer.chat.ChatSession) in the terminal."""

from __future__ import annotations

import sys

from camelid.chat_format import CHAT_TEMPERATURE, CHAT_TOP_P, ChatFormatError
from camelid.cli.common import (add_compile_argument, add_model_arguments, add_sampling_arguments, model_from_flags,
                                warm_up)
from camelid.errors import CamelidError

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system prompt; empty clears it), /quit"


def add_arguments(p) -> None:
    p.description = "Chat with a model in the terminal (Llama-2 chat format, answers stream). " + HELP
    add_model_arguments(p)
    add_compile_argument(p)
    p.add_argument("--system", default=None, help="system prompt")
    add_sampling_arguments(p, temperature=CHAT_TEMPERATURE, top_p=CHAT_TOP_P, max_new_tokens=512)


def run(args) -> int:
    from camelid.infer.chat import ChatSession

    model, tok = model_from_flags(args)
    try:
        session = ChatSession(model, tok, system=args.system, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                              max_seq_len=args.max_seq_len, compile=args.compile)
        warm_up(session.engine)
    except ValueError as e:
        raise CamelidError(str(e)) from None
    print(f"camelid chat: {args.model} (context {session.engine.max_seq_len} tokens). {HELP}", file=sys.stderr)
    repl(session)
    return 0


def repl(session) -> None:
    """Read lines from stdin until /quit or its end: a command, or a message answered as it streams."""
    interactive = sys.stdin.isatty()
    if hasattr(sys.stdin, "reconfigure"):  # bytes that are not UTF-8 reach us as lone surrogates, line by line
        sys.stdin.reconfigure(errors="surrogateescape")
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        except UnicodeDecodeError:
            line = "\udcff"
        except KeyboardInterrupt:
            print()
            break
        if any("\udc80" <= ch <= "\udcff" for ch in line):  # another terminal encoding, or pasted bytes
            print("[that line is not valid UTF-8; type it again]", file=sys.stderr)
            continue
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            session.reset()
            print("[conversation reset]", file=sys.stderr)
            continue
        if line == "/system" or line.startswith("/system "):
            try:
                session.set_system(line[len("/system"):].strip())
            except ChatFormatError as e:
                print(f"[refused: {e}]", file=sys.stderr)
                continue
            session.reset()
            print(f"[system prompt {'set' if session.system else 'cleared'}; conversation reset]", file=sys.stderr)
            continue
        if line.startswith("/"):
            print(f"[unknown command {line.split()[0]}; {HELP}]", file=sys.stderr)
            continue
        try:
            ids, _ = session.build_prompt(line)
        except (ChatFormatError, CamelidError) as e:
            print(f"[refused: {e}]", file=sys.stderr)
            continue
        if session.trimmed:
            print(f"[history trimmed: the {session.trimmed} oldest exchange(s) no longer fit the "
                  f"{session.engine.max_seq_len}-token context]", file=sys.stderr)
        sys.stdout.write("assistant> " if interactive else "")
        try:
            for piece in session.send(line):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write(" [interrupted]")
        sys.stdout.write("\n")
        sys.stdout.flush()
        if session.last_finish_reason == "length":
            print("[answer cut at --max-new-tokens or the context length]", file=sys.stderr)
