"""`camelid generate --model PATH --prompt TEXT`: continue a prompt (or answer it as a chat turn), streaming."""

from __future__ import annotations

import sys
import time

from camelid.cli.common import add_compile_argument, add_model_arguments, add_sampling_arguments, model_from_flags
from camelid.errors import CamelidError


def add_arguments(p) -> None:
    p.description = "Generate text from a prompt with a trained model, streaming it to the terminal."
    add_model_arguments(p)
    add_compile_argument(p)
    p.add_argument("--prompt", required=True, help="the prompt text ('-' reads it from stdin)")
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt as one Llama-2 chat user turn ([INST] ... [/INST])")
    p.add_argument("--system", default=None, help="system prompt (with --chat)")
    p.add_argument("--num-samples", type=int, default=1, help="independent samples, decoded as one batch")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--stats", action="store_true", help="print tokens/s to stderr at the end")
    add_sampling_arguments(p, temperature=0.0, top_p=1.0, max_new_tokens=128)


def run(args) -> int:
    from camelid.chat_format import encode_dialog
    from camelid.infer.engine import Engine, Request
    from camelid.infer.sampling import SamplingParams
    from camelid.infer.text import TextStream

    if args.num_samples < 1:
        raise CamelidError("--num-samples must be at least 1")
    try:
        sp = SamplingParams(args.temperature, args.top_p, args.top_k)
    except ValueError as e:
        raise CamelidError(str(e)) from None
    model, tok = model_from_flags(args)
    text = sys.stdin.read() if args.prompt == "-" else args.prompt
    if args.chat:
        msgs = ([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": text}]
        ids = encode_dialog(tok, msgs)
    else:
        ids = tok.encode(text, bos=True)
    eng = Engine(model, max_batch=args.num_samples, max_seq_len=args.max_seq_len, seed=args.seed, compile=args.compile)
    room = eng.max_seq_len - len(ids)
    if room <= 0:
        raise CamelidError(f"the prompt has {len(ids)} tokens; the context is {eng.max_seq_len}")
    n_new = min(args.max_new_tokens, room)
    reqs = [eng.add(Request(ids, n_new, sp, (tok.eos_id,))) for _ in range(args.num_samples)]
    streams = {r.id: TextStream(tok, args.stop) for r in reqs}
    live = args.num_samples == 1
    t0 = time.perf_counter()
    while eng.has_work:
        for ev in eng.step():
            ts = streams[ev.request.id]
            out = ts.push(ev.token) if ev.token is not None else ""
            if ts.stopped:
                eng.abort(ev.request)
            if ev.finish_reason or ts.stopped:
                out += ts.finish()
            if live and out:
                sys.stdout.write(out)
                sys.stdout.flush()
    dt = time.perf_counter() - t0
    if live:
        sys.stdout.write("\n")
    else:
        for i, r in enumerate(reqs):
            print(f"--- sample {i + 1}")
            print(streams[r.id].text)
    if args.stats:
        n = sum(len(r.tokens) for r in reqs)
        print(f"[{n} tokens in {dt:.2f}s: {n / dt:.1f} tokens/s, prompt {len(ids)} tokens]", file=sys.stderr)
    return 0
