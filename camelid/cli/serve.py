"""`camelid serve --model PATH`: the OpenAI-compatible HTTP server of camelid.infer.server on a port."""

from __future__ import annotations

from pathlib import Path

from camelid.cli.common import add_compile_argument, add_model_arguments, model_from_flags, warm_up
from camelid.errors import CamelidError


def add_arguments(p) -> None:
    p.description = ("Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, "
                     "/v1/models, /health) with a web chat page at /. Concurrent requests decode together.")
    add_model_arguments(p)
    add_compile_argument(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback by default; 0.0.0.0 "
                                                        "exposes the server to the network)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: any free one)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 requests")
    p.add_argument("--model-name", default=None, help="model id reported by /v1/models (default: folder name)")
    p.add_argument("--max-batch", type=int, default=16, help="requests decoded together")
    p.add_argument("--max-in-flight", type=int, default=64, help="requests running or queued; more get 429")
    p.add_argument("--max-tokens", type=int, default=None, help="new tokens per request at most (default: context)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body size limit")
    p.add_argument("--seed", type=int, default=None, help="seed of the shared sampling generator")


def run(args) -> int:
    from camelid.infer.engine import Engine
    from camelid.infer.server import Limits, create_app, is_loopback_host, listen_socket, serve_app

    if args.max_batch < 1 or args.max_in_flight < 1:
        raise CamelidError("--max-batch and --max-in-flight must be at least 1")
    sock = listen_socket(args.host, args.port)
    try:
        model, tok = model_from_flags(args)
        engine = Engine(model, max_batch=args.max_batch, max_seq_len=args.max_seq_len, seed=args.seed,
                        compile=args.compile)
        warm_up(engine)
        name = args.model_name or Path(args.model).resolve().name
        limits = Limits(max_tokens=args.max_tokens, max_body_bytes=args.max_body_bytes,
                        max_in_flight=args.max_in_flight)
        app = create_app(engine, tok, name, args.api_key, limits, loopback_only=is_loopback_host(args.host))
        if not is_loopback_host(args.host) and not args.api_key:
            print(f"warning: listening on {args.host} without --api-key: anyone who can reach it can use the model")
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"camelid serve: serving {name} on http://{shown}:{port}/  (context {engine.max_seq_len}, "
              f"max batch {args.max_batch})", flush=True)
        return serve_app(app, sock)
    finally:
        sock.close()
