"""`camelid serve`: an OpenAI-compatible HTTP server with continuous batching, and a web chat page.

Endpoints: `POST /v1/chat/completions`, `POST /v1/completions` (both with `"stream": true` as
server-sent events, as the OpenAI API sends them), `GET /v1/models`, `GET /health`, and the chat page at
`GET /`. One worker thread owns the engine and steps it while any request is live; a new request is
prefilled at the next step and decodes together with the running ones.

Every field is checked before a request reaches the engine, so one bad request cannot fail the batch it
would have joined. Refusals answer with an OpenAI-style error body
`{"error": {"message", "type", "param", "code"}}`: 400 for bad requests (malformed or absurdly nested
JSON, invalid Unicode, out-of-range or mistyped fields, OpenAI options this server cannot honour, a
prompt longer than the context), 401 for a wrong API key, 403 for a browser request from another site
when no API key is set, 413 for an oversized body, 429 when too many requests are in flight, 503 when
the engine has stopped. docs/INFERENCE.md lists them.
"""


import asyncio
import ipaddress
import json
import logging
import math
import queue
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import urlsplit

from camelid.chat_format import CHAT_TEMPERATURE, CHAT_TOP_P, ChatFormatError, encode_dialog
from camelid.errors import CamelidError
from camelid.infer.engine import Engine, Request
from camelid.infer.sampling import SamplingParams
from camelid.infer.text import TextStream

log = logging.getLogger("camelid.serve")

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_JSON_DEPTH = 32  # a chat request needs 4 levels (body, messages, message, content part)
GREEDY_BELOW = 1e-5  # smaller temperatures overflow float32 logits (x / 1e-40 = inf); treat them as 0, as vLLM does


@dataclass
class Limits:
    max_tokens: int | None = None  # per request (default: the context)
    max_body_bytes: int = 1 << 20
    max_in_flight: int = 64  # requests decoding or waiting; more -> 429
    max_n: int = 8  # choices per request
    max_stop: int = 4
    max_stop_chars: int = 256  # per stop string: holding back text costs O(length^2) per token
    stall_s: float = 600.0  # /health says "wedged" when the worker has not come round for this long


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _short(v) -> str:
    """A value for an error message: a client's 1 MB list is not echoed back."""
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


# --------------------------------------------------------------------------------------------- worker


@dataclass
class _Sink:
    """Where one choice's output goes: detokenized in the worker, handed to the event loop."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    index: int
    stream: TextStream | None  # None: the text is decoded once when the request ends

    def put(self, item) -> None:
        _post(self.loop, self.queue.put_nowait, item)


def _post(loop, fn, arg) -> None:
    try:
        loop.call_soon_threadsafe(fn, arg)
    except RuntimeError:  # the loop has closed (server shut down): nobody is waiting for this any more
        pass


def _deliver(items) -> None:
    for q, item in items:
        q.put_nowait(item)


class Worker(threading.Thread):
    """Owns the engine; steps it whenever a request is live.

    Failures are kept as small as they can be: one request's failure (adding it, decoding its text) fails
    that request only; a failed engine step fails the requests that were in the batch and keeps serving.
    If the loop itself dies (a bug), every live request is failed at once, `error` says why and
    `on_death()` is called: `camelid serve` then shuts down with exit status 1 rather than restarting
    an engine in an unknown state, and until it has, /health answers 503 and new requests get 503.
    """

    def __init__(self, engine: Engine, tokenizer):
        super().__init__(name="camelid-engine", daemon=True)
        self.engine = engine
        self.tokenizer = tokenizer
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._stop_event = threading.Event()
        self.live: dict[int, Request] = {}  # in the engine and not yet answered, by id (Request is unhashable)
        self.lock = threading.Lock()  # orders submit() against death: nothing is queued once `error` is set
        self.error: str | None = None
        self.on_death = None
        self.beat = time.monotonic()  # when the loop last came round; goes stale while a step hangs
        self.steps = 0
        self.tokens = 0
        self.busy_s = 0.0
        self.step_s = 0.0

    def submit(self, reqs: list[Request]) -> None:
        with self.lock:
            if self.error is not None:
                raise APIError(503, f"the engine has stopped ({self.error}); the server is shutting down",
                               "server_error", code="engine_dead")
            for req in reqs:
                self.inbox.put(("add", req))

    def cancel(self, req: Request) -> None:
        self.inbox.put(("abort", req))

    def stop(self) -> None:
        self._stop_event.set()
        self.inbox.put(("noop", None))

    def state(self, stall_s: float) -> str:
        """"ok", "dead" (the loop has ended), or "wedged" (it has not come round for stall_s seconds)."""
        if self.error is not None or not self.is_alive():
            return "dead"
        return "wedged" if time.monotonic() - self.beat > stall_s else "ok"

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
                    self.live[req.id] = req
                except Exception as e:  # validated before; whatever slipped through fails this request only
                    self._fail(req, f"cannot start this request: {type(e).__name__}: {e}")
            elif op == "abort":
                self.engine.abort(req)
                self.live.pop(req.id, None)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _fail(self, req: Request, message: str) -> None:
        self.live.pop(req.id, None)
        req.finish_reason = req.finish_reason or "error"
        req.data.put(("error", req.data.index, message))

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as e:
            self._die(e)

    def _die(self, e: BaseException) -> None:
        log.error("the engine worker stopped", exc_info=e)  # a bug: the traceback is for whoever fixes it
        why = f"{type(e).__name__}: {e}"
        with self.lock:
            self.error = why
            while True:  # requests queued but not yet in the engine are failed too
                try:
                    op, req = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if op == "add":
                    self.live[req.id] = req
            for req in list(self.live.values()):
                self._fail(req, f"the engine has stopped ({why})")
        if self.on_death is not None:
            self.on_death()

    def _step_failed(self, e: Exception) -> None:
        """A failed step cannot be pinned on one row: fail the rows that were in it, keep those still waiting."""
        log.error("engine step failed", exc_info=e)
        eng = self.engine
        waiting = {r.id for r in eng.waiting}
        for req in list(self.live.values()):
            if req.id not in waiting:
                self._fail(req, f"internal error while generating: {type(e).__name__}: {e}")
        eng.active.clear(), eng.lengths.clear(), eng.last.clear()

    def _loop(self) -> None:
        eng = self.engine
        while not self._stop_event.is_set():
            self.beat = time.monotonic()
            self._drain(block=not eng.has_work)
            if not eng.has_work:
                continue
            t0 = time.perf_counter()
            try:
                events = eng.step()
            except Exception as e:  # never leave clients hanging: fail what was running, keep serving
                self._step_failed(e)
                continue
            self.steps += 1
            self.step_s += time.perf_counter() - t0
            out_by_loop: dict = {}  # one wake-up of each event loop per step, not one per token
            for ev in events:
                if ev.token is not None:
                    self.tokens += 1
                try:
                    item = self._output(ev)
                except Exception as e:  # e.g. the tokenizer cannot decode a token: this request only
                    if not ev.request.done:
                        eng.abort(ev.request)
                    self._fail(ev.request, f"cannot decode the output: {type(e).__name__}: {e}")
                    continue
                if item is not None:
                    sink: _Sink = ev.request.data
                    out_by_loop.setdefault(sink.loop, []).append((sink.queue, item))
            for loop, items in out_by_loop.items():
                _post(loop, _deliver, items)
            self.busy_s += time.perf_counter() - t0

    def _output(self, ev):
        """The item one event sends to its client, or None."""
        sink: _Sink = ev.request.data
        reason = ev.finish_reason
        if sink.stream is None:  # not streamed, no stop strings: decode once at the end
            if not reason:
                return None
            out = self.tokenizer.decode(ev.request.tokens)
        else:
            out = sink.stream.push(ev.token) if ev.token is not None else ""
            if sink.stream.stopped and not ev.request.done:
                self.engine.abort(ev.request)
            if sink.stream.stopped:
                reason = "stop"
            if reason:
                out += sink.stream.finish()
        if reason:
            self.live.pop(ev.request.id, None)
        if reason or out:
            return ("delta", sink.index, out, reason, len(ev.request.tokens))
        return None


# --------------------------------------------------------------------------------------------- request parsing


def _num(body, key, default, kind=float, lo=None, hi=None):
    v = body.get(key, default)
    if v is None:
        v = default
    if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise APIError(400, f"'{key}' must be an integer, got {_short(v)}", param=key)
    if kind is float and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
        raise APIError(400, f"'{key}' must be a number, got {_short(v)}", param=key)
    if lo is not None and v < lo or hi is not None and v > hi:
        raise APIError(400, f"'{key}' must be between {lo} and {hi}, got {_short(v)}", param=key)
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
    if any(len(s) > limits.max_stop_chars for s in stop):
        raise APIError(400, f"each 'stop' string may have at most {limits.max_stop_chars} characters", param="stop")
    return stop


def _top_k(body, vocab_size: int) -> int:
    """0 or -1 (vLLM's spelling) is off; otherwise 1..vocab. Bounded so the sampler's int64 tensor never
    overflows: an overflow there would fail every request in the batch."""
    k = _num(body, "top_k", 0, int, -1, vocab_size)
    return max(k, 0)


def _seed(body) -> int | None:
    """A 64-bit signed seed (vLLM's range); torch takes it modulo 2^64."""
    if body.get("seed") is None:
        return None
    return _num(body, "seed", None, int, INT64_MIN, INT64_MAX)


# OpenAI options this server cannot honour, each with the values that ask for nothing (accepted). Any other
# value is refused by name: silently ignoring `response_format` or `tools` answers a different question.
# Fields not listed here and not used (`user`, `metadata`, `store`, ...) are ignored, as vLLM and llama.cpp do.
_OFF_VALUES = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "min_p": (None, 0, 0.0),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
}


def _refuse_unsupported(body: dict) -> None:
    for key, off in _OFF_VALUES.items():
        v = body.get(key)
        if not any(type(v) is type(o) and v == o for o in off):  # type too: True == 1 but asks for logprobs
            raise APIError(400, f"'{key}' is not supported by this server (got {_short(v)})", param=key)


def _valid_unicode(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _check_tree(body: dict) -> None:
    """Refuse what JSON can carry but nothing here can use: strings with lone surrogates ("\\ud800" parses,
    then fails inside the tokenizer and in every JSON answer that echoes it) and absurd nesting. Walked
    with a stack, not recursion, so no depth can overflow it."""
    for key, value in body.items():
        param = key if _valid_unicode(key) else None
        stack = [(key, 1), (value, 1)]
        while stack:
            v, depth = stack.pop()
            if depth > MAX_JSON_DEPTH:
                raise APIError(400, f"{_short(key)} is nested deeper than {MAX_JSON_DEPTH} levels", param=param)
            if isinstance(v, str):
                if not _valid_unicode(v):
                    raise APIError(400, f"{_short(key)} contains a lone UTF-16 surrogate (not valid Unicode)",
                                   param=param)
            elif isinstance(v, dict):
                stack.extend((x, depth + 1) for kv in v.items() for x in kv)
            elif isinstance(v, list):
                stack.extend((x, depth + 1) for x in v)


def _no_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def parse_body(raw: bytes) -> dict:
    """The request body as a JSON object, or a 400 that says what is wrong with it."""
    try:
        body = json.loads(raw, parse_constant=_no_constant)  # NaN / Infinity are Python's extension, not JSON
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, invalid UTF-8, integers of more than 4,300 digits
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    _check_tree(body)
    return body


def _message_text(i: int, m) -> str:
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
    if not isinstance(content, str):
        raise APIError(400, f"messages[{i}].content must be a string or a list of text parts", param="messages")
    if not isinstance(m.get("role"), str):
        raise APIError(400, f"messages[{i}].role must be a string", param="messages")
    if m.get("tool_calls") or m.get("function_call"):
        raise APIError(400, f"messages[{i}]: tool calls are not supported by this server", param="messages")
    return content


def _token_ids(p) -> bool:
    return isinstance(p, list) and bool(p) and all(isinstance(t, int) and not isinstance(t, bool) for t in p)


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
        _refuse_unsupported(body)
        n = _num(body, "n", 1, int, 1, lim.max_n)
        temperature = _num(body, "temperature", CHAT_TEMPERATURE if chat else 1.0, float, 0.0, 2.0)
        top_p = _num(body, "top_p", CHAT_TOP_P if chat else 1.0, float, 0.0, 1.0)
        if top_p == 0 or temperature < GREEDY_BELOW:
            top_p, temperature = 1.0, 0.0  # OpenAI accepts top_p 0: only the most likely token
        top_k = _top_k(body, self.engine.args.vocab_size)
        seed = _seed(body)
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
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise APIError(400, "'stream' must be true or false", param="stream")
        opts = body.get("stream_options")
        opts = {} if opts is None else opts
        if not isinstance(opts, dict) or not isinstance(opts.get("include_usage", False), (bool, type(None))):
            raise APIError(400, "'stream_options' must be an object like {\"include_usage\": true}",
                           param="stream_options")
        try:
            sp = SamplingParams(float(temperature), float(top_p), int(top_k))
        except ValueError as e:  # pragma: no cover - every value was range-checked above
            raise APIError(400, str(e)) from None
        return _Job(prompts, n, max_tokens, sp, _stop_strings(body, lim), seed, stream,
                    bool(opts.get("include_usage")))

    def parse_chat(self, body: dict) -> _Job:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise APIError(400, "'messages' must be a non-empty list of {role, content} objects", param="messages")
        clean = []
        for i, m in enumerate(msgs):
            text = _message_text(i, m)  # checks that m is an object with a string role
            clean.append({"role": m["role"], "content": text})
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
        elif _token_ids(prompt):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(_token_ids(p) for p in prompt):
            prompts = prompt
        else:
            raise APIError(400, "'prompt' must be a string, a list of strings, a list of token ids or a list of such "
                                "lists", param="prompt")
        if len(prompts) * _num(body, "n", 1, int, 1, self.limits.max_n) > self.limits.max_in_flight:
            raise APIError(400, f"at most {self.limits.max_in_flight} prompts x n per request", param="prompt")
        ids = []
        for p in prompts:
            if isinstance(p, str):
                ids.append(self.tok.encode(p, bos=True))
            else:
                if min(p) < 0 or max(p) >= V:
                    raise APIError(400, f"token ids must lie in [0, {V})", param="prompt")
                ids.append(list(p))
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
                seed = None if job.seed is None else (job.seed + j) % (1 << 64)  # choice j: its own stream
                req = Request(p, mt, job.sampling, (self.tok.eos_id,), seed=seed)
                ts = TextStream(self.tok, job.stop) if job.stream or job.stop else None
                req.data = _Sink(loop, q, i * job.n + j, ts)
                try:
                    self.engine.validate(req)
                except ValueError as e:  # pragma: no cover - parsing checks the same and more
                    raise APIError(400, str(e)) from None
                job.reqs.append(req)
        self.worker.submit(job.reqs)
        self.in_flight += total
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


# --------------------------------------------------------------------------------------------- browsers


def _hostname(host_header: str) -> str | None:
    """'127.0.0.1:8000' -> '127.0.0.1', '[::1]:8000' -> '::1' (lower-cased); None if unparsable."""
    try:
        return urlsplit("//" + host_header).hostname
    except ValueError:
        return None


def _is_loopback_name(name: str | None) -> bool:
    if name is None:
        return False
    if name == "localhost" or name.endswith(".localhost"):  # browsers resolve these to loopback themselves
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _same_origin(origin: str, host_header: str) -> bool:
    """Whether a browser's Origin ('http://127.0.0.1:8000') names the server the request was sent to."""
    try:
        o, h = urlsplit(origin), urlsplit("//" + host_header)
        if o.scheme not in ("http", "https") or not o.hostname:
            return False
        default = 443 if o.scheme == "https" else 80
        return o.hostname == h.hostname and (o.port or default) == (h.port or default)
    except ValueError:  # a bad port number
        return False


def browser_refusal(headers, api_key_set: bool, loopback_only: bool) -> APIError | None:
    """Why a request that a browser may have been tricked into sending must be refused, or None.

    Without an API key, any web page the user opens can make the browser send requests here: a form or a
    `text/plain` fetch from another site needs no CORS preflight, and a site that re-points its own name
    at 127.0.0.1 (DNS rebinding) even reads the answers. Browsers always send Host, and Origin with every
    cross-origin POST, so: an Origin must name this server itself, and when it listens on loopback only
    the Host must be a loopback name (as Jupyter checks). With an API key, the key is the check."""
    if api_key_set:
        return None
    host = headers.get("host", "")
    if loopback_only and host and not _is_loopback_name(_hostname(host)):
        return APIError(403, f"Host {_short(host)} refused: this server listens on loopback and answers only "
                             "requests addressed to localhost (DNS rebinding protection); set --api-key to serve "
                             "other names", type_="permission_error", code="host_not_allowed")
    origin = headers.get("origin")
    if origin is not None and not _same_origin(origin, host):
        return APIError(403, f"cross-origin request from {_short(origin)} refused: without --api-key only this "
                             "server's own page may call it from a browser", type_="permission_error",
                        code="origin_not_allowed")
    return None


class _BrowserGuard:
    """ASGI middleware that applies browser_refusal before anything else runs (the body is not even read)."""

    def __init__(self, app, api_key_set: bool, loopback_only: bool):
        self.app, self.api_key_set, self.loopback_only = app, api_key_set, loopback_only

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            from starlette.datastructures import Headers
            refused = browser_refusal(Headers(scope=scope), self.api_key_set, self.loopback_only)
            if refused is not None:
                await error_response(refused)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def error_response(e: APIError):
    from fastapi.responses import JSONResponse

    class _AsciiJSON(JSONResponse):  # an error may quote the client's text, lone surrogates included
        def render(self, content) -> bytes:
            return json.dumps(content, ensure_ascii=True).encode("ascii")

    return _AsciiJSON(e.body(), status_code=e.status)


class _ClientGone(Exception):
    """The client hung up before its answer was ready."""


async def _disconnected(request) -> None:
    """Returns when the client hangs up. Only once the body has been read: then the ASGI server's next
    message can only be the disconnect (vLLM's listen_for_disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request, awaitable):
    """awaitable's result, or _ClientGone if the client hangs up first (then the awaitable is cancelled)."""
    work = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        work.cancel(), gone.cancel()
    if work.done() and not work.cancelled():
        return work.result()
    raise _ClientGone()


# --------------------------------------------------------------------------------------------- app


def create_app(engine: Engine, tokenizer, model_name: str = "camelid", api_key: str | None = None,
               limits: Limits | None = None, loopback_only: bool = False):
    """The FastAPI app. loopback_only: the server listens on a loopback address only, so a Host header
    naming anything else is refused when there is no API key (`camelid serve` sets it from --host)."""
    from fastapi import FastAPI, Request as HTTPRequest
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from contextlib import asynccontextmanager
    from starlette.requests import ClientDisconnect

    srv = Server(engine, tokenizer, model_name, api_key, limits)

    @asynccontextmanager
    async def lifespan(app):
        if not srv.worker.is_alive():
            srv.worker.start()
        yield
        srv.worker.stop()

    app = FastAPI(title="camelid", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = srv
    app.add_middleware(_BrowserGuard, api_key_set=api_key is not None, loopback_only=loopback_only)

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return error_response(e)

    @app.exception_handler(404)
    async def _not_found(request, e):
        return error_response(APIError(404, f"no route {request.method} {request.url.path}", code="not_found"))

    @app.exception_handler(405)
    async def _bad_method(request, e):
        return error_response(APIError(405, f"method {request.method} not allowed on {request.url.path}"))

    def check_key(request: HTTPRequest) -> None:
        if srv.api_key is not None and request.headers.get("authorization", "") != f"Bearer {srv.api_key}":
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                           type_="authentication_error", code="invalid_api_key")

    async def read_json(request: HTTPRequest) -> dict:
        check_key(request)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > srv.limits.max_body_bytes:
            raise APIError(413, f"request body of {declared} bytes exceeds the limit of {srv.limits.max_body_bytes}")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > srv.limits.max_body_bytes:
                raise APIError(413, f"request body exceeds the limit of {srv.limits.max_body_bytes} bytes")
        return parse_body(bytes(raw))

    @app.get("/health")
    async def health():
        eng, w = srv.engine, srv.worker
        state = w.state(srv.limits.stall_s)
        body = {"status": state, "model": srv.model_name, "running": len(eng.active), "waiting": len(eng.waiting),
                "in_flight": srv.in_flight, "context": srv.context, "max_batch": eng.max_batch,
                "steps": w.steps, "tokens_generated": w.tokens,
                "busy_s": round(w.busy_s, 3), "engine_s": round(w.step_s, 3),
                "last_beat_s": round(time.monotonic() - w.beat, 3)}
        if w.error is not None:
            body["error"] = w.error
        return JSONResponse(body, status_code=200 if state == "ok" else 503)

    @app.get("/v1/models")
    async def models(request: HTTPRequest):
        check_key(request)
        return {"object": "list", "data": [{"id": srv.model_name, "object": "model", "created": srv.created,
                                            "owned_by": "camelid", "max_model_len": srv.context}]}

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(_web_page())

    async def run_job(job: _Job, chat: bool, request: HTTPRequest):
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

        async def collect():
            texts = [""] * total
            reasons: list[str | None] = [None] * total
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
            return texts, reasons

        try:  # a client that hangs up frees its rows now, not when its answer would have been complete
            texts, reasons = await _unless_disconnected(request, collect())
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

    async def answer(request: HTTPRequest, chat: bool):
        """Parse and run one request. Whatever goes wrong answers in JSON: an unexpected exception would
        otherwise get a plain-text 500 and a dropped connection that the client's next pooled request
        trips over."""
        try:
            body = await read_json(request)
            job = srv.parse_chat(body) if chat else srv.parse_completion(body)
            return await run_job(job, chat, request)
        except APIError:
            raise
        except (ClientDisconnect, _ClientGone):
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
        except Exception:
            log.exception("internal error answering %s", request.url.path)
            raise APIError(500, "internal server error (the server log has the details)", "server_error") from None

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest):
        return await answer(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        return await answer(request, chat=False)

    return app


def _web_page() -> str:
    try:
        return resources.files("camelid").joinpath("web/index.html").read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError):  # pragma: no cover - broken install
        return "<!doctype html><title>camelid</title><p>web page missing from this install</p>"


# ----------------------------------------------------------------------------- serving on a socket


def is_loopback_host(host: str) -> bool:
    return _is_loopback_name(host.strip("[]").lower())


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or a one-line CamelidError. Bound before the model loads, so a busy
    port fails at once, and before anything claims to be serving."""
    if not 0 <= port <= 65535:
        raise CamelidError(f"--port must be between 0 and 65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # uvicorn's rule: "localhost" stays IPv4
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise CamelidError(f"cannot listen on {host}:{port}: {e}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart over TIME_WAIT
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise CamelidError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def serve_app(app, sock: socket.socket) -> int:
    """Run uvicorn on a bound socket until it is stopped (0) or the engine dies (1: shut down rather than
    answer 503 forever; a supervisor restarts the process with a fresh engine)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    app.state.uvicorn = server  # so that whoever embeds it can stop it (should_exit)
    worker = app.state.server.worker

    def on_death():
        server.should_exit = True  # uvicorn polls this flag; setting it from another thread is safe

    worker.on_death = on_death
    server.run(sockets=[sock])
    if worker.error is not None:
        print(f"camelid serve: error: the engine stopped ({worker.error}); shutting down", file=sys.stderr)
        return 1
    return 0
