"""`camelid serve`: an OpenAI-compatible HTTP server with continuous batching, and a web chat page.

Endpoints: `POST /v1/chat/completions`, `POST /v1/completions` (both with `"stream": true` as
server-sent events, as the OpenAI API sends them), `GET /v1/models`, `GET /health`, and the chat page at
`GET /`. One worker thread owns the engine and steps it while any request is live; a new request is
prefilled at the next step and decodes together with the running ones.

Limits answer with an OpenAI-style error body `{"error": {"message", "type", "param", "code"}}`:
400 for bad requests (malformed JSON, unknown role, a prompt longer than the context, more tokens asked
for than allowed), 401 for a wrong API key, 413 for an oversized body, 429 when too many requests are in
flight.
"""


import asyncio
import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from camelid.chat_format import CHAT_TEMPERATURE, CHAT_TOP_P, ChatFormatError, encode_dialog
from camelid.errors import CamelidError
from camelid.infer.engine import Engine, Request
from camelid.infer.sampling import SamplingParams
from camelid.infer.text import TextStream


@dataclass
class Limits:
    max_tokens: int | None = None  # per request (default: the context)
    max_body_bytes: int = 1 << 20
    max_in_flight: int = 64  # requests decoding or waiting; more -> 429
    max_n: int = 8  # choices per request
    max_stop: int = 4


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# --------------------------------------------------------------------------------------------- worker


@dataclass
class _Sink:
    """Where one choice's output goes: detokenized in the worker, handed to the event loop."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    index: int
    stream: TextStream | None  # None: the text is decoded once when the request ends

    def put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def _deliver(items) -> None:
    for q, item in items:
        q.put_nowait(item)


class Worker(threading.Thread):
    """Owns the engine; steps it whenever a request is live."""

    def __init__(self, engine: Engine, tokenizer):
        super().__init__(name="camelid-engine", daemon=True)
        self.engine = engine
        self.tokenizer = tokenizer
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._stop_event = threading.Event()
        self.steps = 0
        self.tokens = 0
        self.busy_s = 0.0
        self.step_s = 0.0

    def submit(self, req: Request) -> None:
        self.inbox.put(("add", req))

    def cancel(self, req: Request) -> None:
        self.inbox.put(("abort", req))

    def stop(self) -> None:
        self._stop_event.set()
        self.inbox.put(("noop", None))

    def _drain(self, block: bool) -> None:
        try:
            item = self.inbox.get(timeout=0.5) if block else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            op, req = item
            if op == "add":
                try:
                    self.engine.add(req)
                except ValueError as e:  # validated before; just in case
                    self._fail(req, str(e))
            elif op == "abort":
                self.engine.abort(req)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _fail(self, req: Request, message: str) -> None:
        req.finish_reason = req.finish_reason or "error"
        req.data.put(("error", req.data.index, message))

    def run(self) -> None:
        eng = self.engine
        while not self._stop_event.is_set():
            self._drain(block=not eng.has_work)
            if not eng.has_work:
                continue
            t0 = time.perf_counter()
            try:
                events = eng.step()
            except Exception as e:  # never leave clients hanging: fail what was running, keep serving
                for req in eng.active + eng.waiting:
                    self._fail(req, f"internal error while generating: {type(e).__name__}: {e}")
                eng.active.clear(), eng.lengths.clear(), eng.last.clear(), eng.waiting.clear()
                continue
            self.steps += 1
            self.step_s += time.perf_counter() - t0
            out_by_loop: dict = {}  # one wake-up of each event loop per step, not one per token
            for ev in events:
                sink: _Sink = ev.request.data
                reason = ev.finish_reason
                if ev.token is not None:
                    self.tokens += 1
                if sink.stream is None:  # not streamed, no stop strings: decode once at the end
                    if not reason:
                        continue
                    out = self.tokenizer.decode(ev.request.tokens)
                else:
                    out = sink.stream.push(ev.token) if ev.token is not None else ""
                    if sink.stream.stopped and not ev.request.done:
                        eng.abort(ev.request)
                    if sink.stream.stopped:
                        reason = "stop"
                    if reason:
                        out += sink.stream.finish()
                if reason or out:
                    out_by_loop.setdefault(sink.loop, []).append(
                        (sink.queue, ("delta", sink.index, out, reason, len(ev.request.tokens))))
            for loop, items in out_by_loop.items():
                loop.call_soon_threadsafe(_deliver, items)
            self.busy_s += time.perf_counter() - t0


# --------------------------------------------------------------------------------------------- request parsing


def _num(body, key, default, kind=float, lo=None, hi=None):
    v = body.get(key, default)
    if v is None:
        v = default
    if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise APIError(400, f"'{key}' must be an integer, got {v!r}", param=key)
    if kind is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
        raise APIError(400, f"'{key}' must be a number, got {v!r}", param=key)
    if lo is not None and v < lo or hi is not None and v > hi:
        raise APIError(400, f"'{key}' must be between {lo} and {hi}, got {v!r}", param=key)
    return v


def _stop_strings(body, limits: Limits) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise APIError(400, "'stop' must be a string or a list of strings", param="stop")
    if len(stop) > limits.max_stop:
        raise APIError(400, f"'stop' takes at most {limits.max_stop} strings", param="stop")
    return stop


@dataclass
class _Job:
    """A parsed request: prompts (token ids) x n choices and how to sample them."""

    prompts: list[list[int]]
    n: int
    max_tokens: list[int]
    sampling: SamplingParams
    stop: list[str]
    seed: int | None
    stream: bool
    include_usage: bool
    reqs: list[Request] = field(default_factory=list)


class Server:
    def __init__(self, engine: Engine, tokenizer, model_name: str = "camelid", api_key: str | None = None,
                 limits: Limits | None = None):
        self.engine, self.tok, self.model_name, self.api_key = engine, tokenizer, model_name, api_key
        self.limits = limits or Limits()
        self.context = engine.max_seq_len
        self.worker = Worker(engine, tokenizer)
        self.in_flight = 0
        self.created = int(time.time())

    # ---- parsing ----
    def _common(self, body: dict, prompts: list[list[int]], chat: bool) -> _Job:
        lim = self.limits
        n = _num(body, "n", 1, int, 1, lim.max_n)
        temperature = _num(body, "temperature", CHAT_TEMPERATURE if chat else 1.0, float, 0.0, 2.0)
        top_p = _num(body, "top_p", CHAT_TOP_P if chat else 1.0, float, 0.0, 1.0)
        if top_p == 0:
            top_p, temperature = 1.0, 0.0  # OpenAI accepts 0: only the most likely token
        top_k = _num(body, "top_k", 0, int, 0, None)
        if top_k < 0:
            raise APIError(400, "'top_k' must be >= 0", param="top_k")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise APIError(400, "'seed' must be an integer", param="seed")
        key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
        cap = lim.max_tokens or self.context
        asked = body.get(key)
        if asked is not None:
            asked = _num(body, key, None, int, 1, None)
            if asked > cap:
                raise APIError(400, f"'{key}' is {asked} but this server allows at most {cap} new tokens per request",
                               param=key)
        elif not chat:
            asked = 16  # OpenAI's default for completions
        max_tokens = []
        for p in prompts:
            if len(p) >= self.context:
                raise APIError(400, f"This model's maximum context length is {self.context} tokens. However, your "
                                    f"{'messages' if chat else 'prompt'} resulted in {len(p)} tokens. Please reduce "
                                    "the length of the prompt.", param="messages" if chat else "prompt",
                               code="context_length_exceeded")
            room = self.context - len(p)
            if asked is not None and asked > room:
                raise APIError(400, f"This model's maximum context length is {self.context} tokens. However, you "
                                    f"requested {len(p) + asked} tokens ({len(p)} in the "
                                    f"{'messages' if chat else 'prompt'}, {asked} in the completion). Please reduce "
                                    "the length of the prompt or the completion.", param=key,
                               code="context_length_exceeded")
            max_tokens.append(min(asked if asked is not None else room, cap))
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise APIError(400, "'stream' must be true or false", param="stream")
        opts = body.get("stream_options") or {}
        if not isinstance(opts, dict):
            raise APIError(400, "'stream_options' must be an object", param="stream_options")
        if body.get("logprobs") not in (None, False, 0) or body.get("echo") or body.get("best_of") not in (None, 1) \
                or body.get("suffix"):
            bad = next(k for k in ("logprobs", "echo", "best_of", "suffix") if body.get(k) not in (None, False, 0, 1, ""))
            raise APIError(400, f"'{bad}' is not supported by this server", param=bad)
        try:
            sp = SamplingParams(float(temperature), float(top_p), int(top_k))
        except ValueError as e:
            raise APIError(400, str(e)) from None
        return _Job(prompts, n, max_tokens, sp, _stop_strings(body, lim), seed, stream,
                    bool(opts.get("include_usage")))

    def parse_chat(self, body: dict) -> _Job:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise APIError(400, "'messages' must be a non-empty list of {role, content} objects", param="messages")
        clean = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise APIError(400, f"messages[{i}] must be an object", param="messages")
            content = m.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                parts = []
                for part in content:
                    if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                        raise APIError(400, f"messages[{i}]: only text content parts are supported", param="messages")
                    parts.append(part["text"])
                content = "".join(parts)
            if content is None:
                content = ""
            clean.append({"role": m.get("role"), "content": content})
        try:
            ids = encode_dialog(self.tok, clean)
        except ChatFormatError as e:
            raise APIError(400, str(e), param="messages") from None
        return self._common(body, [ids], chat=True)

    def parse_completion(self, body: dict) -> _Job:
        prompt = body.get("prompt")
        V = self.engine.args.vocab_size
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = prompt
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, list) and p and all(
                isinstance(t, int) and not isinstance(t, bool) for t in p) for p in prompt):
            prompts = prompt
        else:
            raise APIError(400, "'prompt' must be a string, a list of strings, a list of token ids or a list of such "
                                "lists", param="prompt")
        ids = []
        for p in prompts:
            if isinstance(p, str):
                ids.append(self.tok.encode(p, bos=True))
            else:
                if min(p) < 0 or max(p) >= V:
                    raise APIError(400, f"token ids must lie in [0, {V})", param="prompt")
                ids.append(list(p))
        if len(ids) * _num(body, "n", 1, int, 1, self.limits.max_n) > self.limits.max_in_flight:
            raise APIError(400, f"at most {self.limits.max_in_flight} prompts x n per request", param="prompt")
        return self._common(body, ids, chat=False)

    # ---- running ----
    def start(self, job: _Job) -> asyncio.Queue:
        total = len(job.prompts) * job.n
        if self.in_flight + total > self.limits.max_in_flight:
            raise APIError(429, f"the server is busy ({self.in_flight} requests in flight, at most "
                                f"{self.limits.max_in_flight}); retry shortly", type_="rate_limit_error")
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        for i, (p, mt) in enumerate(zip(job.prompts, job.max_tokens)):
            for j in range(job.n):
                seed = None if job.seed is None else job.seed + j
                req = Request(p, mt, job.sampling, (self.tok.eos_id,), seed=seed)
                ts = TextStream(self.tok, job.stop) if job.stream or job.stop else None
                req.data = _Sink(loop, q, i * job.n + j, ts)
                self.engine.validate(req)
                job.reqs.append(req)
        self.in_flight += total
        for req in job.reqs:
            self.worker.submit(req)
        return q

    def release(self, job: _Job) -> None:
        self.in_flight -= len(job.reqs)
        for req in job.reqs:
            if not req.done:
                self.worker.cancel(req)

    def usage(self, job: _Job) -> dict:
        prompt = sum(len(p) for p in job.prompts)
        completion = sum(len(r.tokens) for r in job.reqs)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def create_app(engine: Engine, tokenizer, model_name: str = "camelid", api_key: str | None = None,
               limits: Limits | None = None):
    from fastapi import FastAPI, Request as HTTPRequest
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from contextlib import asynccontextmanager

    srv = Server(engine, tokenizer, model_name, api_key, limits)

    @asynccontextmanager
    async def lifespan(app):
        if not srv.worker.is_alive():
            srv.worker.start()
        yield
        srv.worker.stop()

    app = FastAPI(title="camelid", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = srv

    def err(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return err(e)

    @app.exception_handler(404)
    async def _not_found(request, e):
        return err(APIError(404, f"no route {request.method} {request.url.path}", code="not_found"))

    @app.exception_handler(405)
    async def _bad_method(request, e):
        return err(APIError(405, f"method {request.method} not allowed on {request.url.path}"))

    async def read_json(request: HTTPRequest) -> dict:
        if srv.api_key is not None:
            auth = request.headers.get("authorization", "")
            if auth != f"Bearer {srv.api_key}":
                raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                               type_="authentication_error", code="invalid_api_key")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > srv.limits.max_body_bytes:
            raise APIError(413, f"request body of {declared} bytes exceeds the limit of {srv.limits.max_body_bytes}")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > srv.limits.max_body_bytes:
                raise APIError(413, f"request body exceeds the limit of {srv.limits.max_body_bytes} bytes")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        return body

    @app.get("/health")
    async def health():
        eng = srv.engine
        return {"status": "ok", "model": srv.model_name, "running": len(eng.active), "waiting": len(eng.waiting),
                "in_flight": srv.in_flight, "context": srv.context, "max_batch": eng.max_batch,
                "steps": srv.worker.steps, "tokens_generated": srv.worker.tokens,
                "busy_s": round(srv.worker.busy_s, 3), "engine_s": round(srv.worker.step_s, 3)}

    @app.get("/v1/models")
    async def models(request: HTTPRequest):
        if srv.api_key is not None and request.headers.get("authorization", "") != f"Bearer {srv.api_key}":
            return err(APIError(401, "invalid or missing API key", type_="authentication_error", code="invalid_api_key"))
        return {"object": "list", "data": [{"id": srv.model_name, "object": "model", "created": srv.created,
                                            "owned_by": "camelid", "max_model_len": srv.context}]}

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(_web_page())

    async def run_job(job: _Job, chat: bool):
        kind = "chat.completion" if chat else "text_completion"
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        q = srv.start(job)
        total = len(job.reqs)

        def choice_delta(index, text, reason):
            if chat:
                return {"index": index, "delta": {"content": text} if text else {}, "logprobs": None,
                        "finish_reason": reason}
            return {"index": index, "text": text, "logprobs": None, "finish_reason": reason}

        def chunk(choices, usage=None):
            d = {"id": rid, "object": kind + ".chunk" if chat else kind, "created": created,
                 "model": srv.model_name, "choices": choices}
            if job.include_usage:
                d["usage"] = usage
            return "data: " + json.dumps(d, ensure_ascii=False) + "\n\n"

        if job.stream:
            async def events():
                try:
                    if chat:
                        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                      "finish_reason": None} for i in range(total)])
                    done = 0
                    while done < total:
                        item = await q.get()
                        if item[0] == "error":
                            yield "data: " + json.dumps(APIError(500, item[2], "server_error").body()) + "\n\n"
                            done += 1
                            continue
                        _, index, text, reason, _n = item
                        if text or reason:
                            yield chunk([choice_delta(index, text, reason)])
                        if reason:
                            done += 1
                    if job.include_usage:
                        yield chunk([], srv.usage(job))
                    yield "data: [DONE]\n\n"
                finally:
                    srv.release(job)

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        texts = [""] * total
        reasons: list[str | None] = [None] * total
        try:
            done = 0
            while done < total:
                item = await q.get()
                if item[0] == "error":
                    raise APIError(500, item[2], "server_error")
                _, index, text, reason, _n = item
                texts[index] += text
                if reason:
                    reasons[index] = reason
                    done += 1
        finally:
            srv.release(job)
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                        "finish_reason": r} for i, (t, r) in enumerate(zip(texts, reasons))]
        else:
            choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": r}
                       for i, (t, r) in enumerate(zip(texts, reasons))]
        return {"id": rid, "object": kind, "created": created, "model": srv.model_name, "choices": choices,
                "usage": srv.usage(job), "system_fingerprint": None}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest):
        body = await read_json(request)
        return await run_job(srv.parse_chat(body), chat=True)

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        body = await read_json(request)
        return await run_job(srv.parse_completion(body), chat=False)

    return app


def _web_page() -> str:
    try:
        return resources.files("camelid").joinpath("web/index.html").read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError):  # pragma: no cover - broken install
        return "<!doctype html><title>camelid</title><p>web page missing from this install</p>"


# --------------------------------------------------------------------------------------------- CLI


def add_arguments(p) -> None:
    from camelid.infer.load import add_model_arguments

    p.description = ("Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, "
                     "/v1/models, /health) with a web chat page at /. Concurrent requests decode together.")
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback by default; 0.0.0.0 "
                                                        "exposes the server to the network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 requests")
    p.add_argument("--model-name", default=None, help="model id reported by /v1/models (default: folder name)")
    p.add_argument("--max-batch", type=int, default=16, help="requests decoded together")
    p.add_argument("--max-in-flight", type=int, default=64, help="requests running or queued; more get 429")
    p.add_argument("--max-tokens", type=int, default=None, help="new tokens per request at most (default: context)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body size limit")
    p.add_argument("--seed", type=int, default=None, help="seed of the shared sampling generator")


def run(args) -> int:
    import uvicorn

    from camelid.infer.load import load_model_and_tokenizer

    if args.max_batch < 1 or args.max_in_flight < 1:
        raise CamelidError("--max-batch and --max-in-flight must be at least 1")
    model, tok = load_model_and_tokenizer(args.model, args.tokenizer, args.device, args.dtype, args.threads)
    engine = Engine(model, max_batch=args.max_batch, max_seq_len=args.max_seq_len, seed=args.seed)
    name = args.model_name or Path(args.model).resolve().name
    limits = Limits(max_tokens=args.max_tokens, max_body_bytes=args.max_body_bytes, max_in_flight=args.max_in_flight)
    app = create_app(engine, tok, name, args.api_key, limits)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: listening on {args.host} without --api-key: anyone who can reach it can use the model")
    print(f"camelid serve: {name} on http://{args.host}:{args.port}/  (context {engine.max_seq_len}, "
          f"max batch {args.max_batch})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)
    return 0
