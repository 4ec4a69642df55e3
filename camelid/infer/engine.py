"""The sampling engine: batched generation with a preallocated KV cache and continuous batching.

One engine serves both ends of camelid: batch-1 chat (latency) and many-prompt sampling for rejection
sampling and PPO (throughput). How it is fast:

* Its own lean forward pass over the model's weights (`FastWeights`). On CPU the q/k/v projections are
  fused and every matrix is pre-packed once for oneDNN (the layout `torch.compile`'s freezing pass would
  choose), which reads weights about 2.5x faster than `F.linear` does at batch 1; SiLU, the SwiGLU
  product and the residual additions run as post-ops of the matmuls, so a layer is about a dozen ops.
  The packed copies are rebuilt automatically when the model's parameters change (a training step in
  between two calls), and cached on the model otherwise. On GPU it uses the model's own weights.
* Every row keeps its own length in the cache: a new prompt is prefilled straight into a free row
  (right-padded, plain causal attention, no padding mask at all), decoding writes each row's new key at
  its own slot, and a key mask `slot <= position` hides the unused tail of shorter rows. There is no
  left padding, no re-slicing and no copying of the cache per step.
* Active rows are kept packed at the front of the cache: when a row finishes, the last active row moves
  into its slot, so a decode step always works on a contiguous view `[:n]`.
* Grouped-query attention reads each cached key/value head once: the query heads that share a kv head
  ride along as the query-length axis of one SDPA call, instead of expanding k and v.

Continuous batching: `Engine.add()` queues a request at any time; the next `step()` prefills it into a
free row and it decodes with the others from then on. `generate()` and `stream()` are thin loops
around it; the server runs the same loop in a worker thread.

The result matches `model.forward` (same formulas and rounding order in fp32; tests compare greedy
tokens with Hugging Face's `generate` and with uncached decoding).
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from camelid.infer.sampling import SamplingParams, sample

LLAMA_EOS_ID = 2


def _can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    if device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16):
        return False
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    except Exception:  # pragma: no cover - exotic builds
        return False


class FastWeights:
    """The model's weights arranged for inference: fused projections, oneDNN-packed on CPU.

    `pack=None` packs when the device is a CPU with oneDNN and the dtype is fp32 or bf16.
    `dtype` casts the weights (e.g. bf16 inference from an fp32 model) without touching the model.
    """

    def __init__(self, model, dtype: torch.dtype | None = None, pack: bool | None = None):
        self.model = model
        self.args = model.args
        p = next(model.parameters())
        self.device = p.device
        self.dtype = dtype or p.dtype
        self.pack = _can_pack(self.device, self.dtype) if pack is None else pack
        if self.pack and not _can_pack(self.device, self.dtype):
            raise ValueError(f"weight packing needs a CPU with oneDNN and fp32/bf16 weights, not {self.device}/{self.dtype}")
        self._signature = None
        self.refresh()

    def _params(self):
        return [p for _, p in sorted(self.model.named_parameters())]

    def _current_signature(self):
        return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self._params())

    @torch.no_grad()
    def refresh(self) -> None:
        """Rebuild the fused/packed copies if any parameter changed since they were built."""
        sig = self._current_signature()
        if sig == self._signature:
            return
        m, dt = self.model, self.dtype

        def cast(w):
            return w.detach().to(dt)

        def prep(*ws):
            if not self.pack:
                return tuple(cast(w) for w in ws)
            w = cast(ws[0]) if len(ws) == 1 else torch.cat([cast(w) for w in ws], 0)
            return (torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), None),)

        self.embedding = cast(m.tok_embeddings.weight)
        self.layers = []
        for layer in m.layers:
            a, f = layer.attention, layer.feed_forward
            self.layers.append(dict(
                attn_norm=cast(layer.attention_norm.weight), attn_eps=layer.attention_norm.eps,
                qkv=prep(a.wq.weight, a.wk.weight, a.wv.weight), wo=prep(a.wo.weight),
                ffn_norm=cast(layer.ffn_norm.weight), ffn_eps=layer.ffn_norm.eps,
                w1=prep(f.w1.weight), w3=prep(f.w3.weight), w2=prep(f.w2.weight)))
        self.norm, self.norm_eps = cast(m.norm.weight), m.norm.eps
        self.output = prep(m.output.weight)
        self._signature = sig

    def linear(self, x: torch.Tensor, ws: tuple) -> torch.Tensor:
        if self.pack:
            return torch.ops.mkldnn._linear_pointwise(x, ws[0], None, "none", [], "")
        if len(ws) == 1:
            return F.linear(x, ws[0])
        return torch.cat([F.linear(x, w) for w in ws], dim=-1)

    def linear_add(self, x: torch.Tensor, ws: tuple, residual: torch.Tensor) -> torch.Tensor:
        """residual + x @ W.T (one oneDNN call with a fused sum when packed)."""
        if self.pack:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, ws[0], None, "add")
        return residual + F.linear(x, ws[0])

    def swiglu(self, x: torch.Tensor, L: dict) -> torch.Tensor:
        """silu(x @ W1.T) * (x @ W3.T), with silu and the product fused into the matmuls when packed."""
        if self.pack:
            a = torch.ops.mkldnn._linear_pointwise(x, L["w1"][0], None, "swish", [], "")
            return torch.ops.mkldnn._linear_pointwise.binary(x, a, L["w3"][0], None, "mul")
        return F.silu(F.linear(x, L["w1"][0])) * F.linear(x, L["w3"][0])


_fast_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def fast_weights(model, dtype=None, pack=None) -> FastWeights:
    """The model's FastWeights, built once and reused while the parameters stay unchanged."""
    per_model = _fast_cache.setdefault(model, {})
    p = next(model.parameters())
    key = (dtype or p.dtype, p.device, pack)  # dtype None follows the model, even after model.to(...)
    fw = per_model.get(key)
    if fw is None:
        fw = per_model[key] = FastWeights(model, dtype=key[0], pack=pack)
    else:
        fw.refresh()
    return fw


def _rms_norm(x, weight, eps):
    # Meta's RMSNorm: normalise in fp32, cast back, then scale (one fused op when x is fp32).
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    return F.rms_norm(x.float(), weight.shape, None, eps).type_as(x) * weight


def _rotate(x, cis):
    """Meta's rotary (pairs (x0, x1), (x2, x3), ... as complex numbers) on x [..., D]; cis broadcasts to [..., D/2]."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * cis).flatten(-2).type_as(x)


class KVStore:
    """Keys and values for every layer, [rows, n_kv_heads, slots, head_dim], each row with its own length.

    Grows (by doubling) in rows and slots as needed, up to the limits given.
    """

    def __init__(self, args, device, dtype, max_rows: int, max_slots: int):
        self.args, self.device, self.dtype = args, device, dtype
        self.max_rows, self.max_slots = max_rows, max_slots
        self.rows, self.slots = 0, 0
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []

    def ensure(self, rows: int, slots: int) -> None:
        if rows <= self.rows and slots <= self.slots:
            return
        if rows > self.max_rows or slots > self.max_slots:
            raise ValueError(f"KV cache limit: {rows} rows x {slots} slots asked, {self.max_rows} x {self.max_slots} allowed")
        new_rows = min(self.max_rows, max(rows, 2 * self.rows if rows > self.rows else self.rows))
        new_slots = min(self.max_slots, max(slots, 2 * self.slots if slots > self.slots else self.slots, 64))
        shape = (new_rows, self.args.kv_heads, new_slots, self.args.head_dim)
        k = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.args.n_layers)]
        v = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.args.n_layers)]
        for old, new in zip(self.k + self.v, k + v):
            new[: self.rows, :, : self.slots].copy_(old)
        self.k, self.v, self.rows, self.slots = k, v, new_rows, new_slots

    def move_row(self, src: int, dst: int, length: int) -> None:
        for t in itertools.chain(self.k, self.v):
            t[dst, :, :length].copy_(t[src, :, :length])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in itertools.chain(self.k, self.v))


class FastRunner:
    """Prefill and decode over a KVStore with the model's fast weights."""

    def __init__(self, weights: FastWeights, kv: KVStore):
        self.w, self.kv, self.args = weights, kv, weights.args
        a = self.args
        self.n_heads, self.n_kv, self.hd = a.n_heads, a.kv_heads, a.head_dim
        self.group = self.n_heads // self.n_kv
        inv_freq = 1.0 / (a.rope_theta ** (torch.arange(0, self.hd, 2, device=weights.device, dtype=torch.float32) / self.hd))
        self._inv_freq = inv_freq
        self._cis = torch.empty(0, self.hd // 2, device=weights.device, dtype=torch.complex64)

    def _rope(self, n: int) -> torch.Tensor:
        """cos + i sin of the rotary angles for positions 0..n-1 (the same angles model.py computes)."""
        if self._cis.shape[0] < n:
            n = max(n, 2 * self._cis.shape[0], 256)
            angles = torch.arange(n, device=self._inv_freq.device, dtype=torch.float32).unsqueeze(-1) * self._inv_freq
            self._cis = torch.complex(angles.cos(), angles.sin())
        return self._cis

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, row0: int, last: torch.Tensor) -> torch.Tensor:
        """Run right-padded prompts tokens [m, P] into cache rows row0..row0+m-1 (slots 0..P-1).

        last [m]: index of each prompt's final token. Returns the logits there, [m, vocab] fp32.
        """
        w, kv = self.w, self.kv
        m, P = tokens.shape
        H, KV, D = self.n_heads, self.n_kv, self.hd
        cis = self._rope(P)[:P].view(1, P, 1, -1)
        h = F.embedding(tokens, w.embedding)
        for i, L in enumerate(w.layers):
            x = _rms_norm(h, L["attn_norm"], L["attn_eps"])
            qkv = w.linear(x, L["qkv"]).view(m, P, H + 2 * KV, D)
            q = _rotate(qkv[:, :, :H], cis).transpose(1, 2)
            k = _rotate(qkv[:, :, H:H + KV], cis).transpose(1, 2)
            v = qkv[:, :, H + KV:].transpose(1, 2)
            kv.k[i][row0:row0 + m, :, :P].copy_(k)
            kv.v[i][row0:row0 + m, :, :P].copy_(v)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=P > 1, enable_gqa=KV != H)
            h = w.linear_add(o.transpose(1, 2).reshape(m, P, H * D), L["wo"], h)
            x = _rms_norm(h, L["ffn_norm"], L["ffn_eps"])
            h = w.linear_add(w.swiglu(x, L), L["w2"], h)
        h = h[torch.arange(m, device=h.device), last]  # [m, dim]: only the last prompt token needs logits
        h = _rms_norm(h, w.norm, w.norm_eps)
        return w.linear(h, w.output).float()

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, pos: torch.Tensor, max_pos: int, uniform: bool) -> torch.Tensor:
        """One token for each of the first n cache rows: tokens [n] at slots pos [n] -> logits [n, vocab] fp32.

        max_pos: max(pos) as a Python int; uniform: all rows are at the same position (no key mask needed).
        """
        w, kv = self.w, self.kv
        n = tokens.shape[0]
        H, KV, D, G = self.n_heads, self.n_kv, self.hd, self.group
        S = max_pos + 1
        cis = self._rope(S)[pos].view(n, 1, -1)
        if uniform:
            mask = None
            index = (slice(0, n), slice(None), max_pos)
        else:
            mask = (torch.arange(S, device=pos.device).unsqueeze(0) <= pos.unsqueeze(1)).view(n, 1, 1, S)
            index = (torch.arange(n, device=pos.device), slice(None), pos)
        h = F.embedding(tokens, w.embedding)  # [n, dim]
        for i, L in enumerate(w.layers):
            x = _rms_norm(h, L["attn_norm"], L["attn_eps"])
            qkv = w.linear(x, L["qkv"]).view(n, H + 2 * KV, D)
            qk = _rotate(qkv[:, :H + KV], cis)
            ck, cv = kv.k[i], kv.v[i]
            ck[index] = qk[:, H:]
            cv[index] = qkv[:, H + KV:]
            # query heads sharing a kv head sit on the "query length" axis: k and v are read once
            o = F.scaled_dot_product_attention(qk[:, :H].view(n, KV, G, D), ck[:n, :, :S], cv[:n, :, :S], attn_mask=mask)
            h = w.linear_add(o.reshape(n, H * D), L["wo"], h)
            x = _rms_norm(h, L["ffn_norm"], L["ffn_eps"])
            h = w.linear_add(w.swiglu(x, L), L["w2"], h)
        h = _rms_norm(h, w.norm, w.norm_eps)
        return w.linear(h, w.output).float()


_ids = itertools.count()


@dataclass
class Request:
    """One sequence to generate. `tokens` collects the new tokens; `finish_reason` is set when done:
    "stop" (a stop id was produced, not included in `tokens`), "length" (max_new_tokens or the context
    is full), or "abort"."""

    prompt: list[int]
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_ids: tuple[int, ...] = (LLAMA_EOS_ID,)
    seed: int | None = None
    id: int = field(default_factory=lambda: next(_ids))
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    data: object = None  # free for the caller (the server keeps its queue here)
    generator: torch.Generator | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


@dataclass
class Event:
    """What a step produced for one request: a new token (None when the request ended without one)."""

    request: Request
    token: int | None
    finish_reason: str | None


class Engine:
    """Continuous-batching generator over one model.

    max_batch: rows decoded together; max_seq_len: context (prompt + new tokens), default the model's.
    dtype: inference dtype (default the model's); pack: see FastWeights; seed: the shared generator's
    seed (requests with their own `seed` use their own generator).
    """

    def __init__(self, model, max_batch: int = 16, max_seq_len: int | None = None, dtype=None, pack=None,
                 seed: int | None = None, max_prefill_tokens: int = 8192):
        self.model = model
        self.weights = fast_weights(model, dtype=dtype, pack=pack)
        self.args = model.args
        self.max_seq_len = max_seq_len or self.args.max_seq_len
        self.max_batch = max_batch
        self.max_prefill_tokens = max_prefill_tokens
        self.kv = KVStore(self.args, self.weights.device, self.weights.dtype, max_batch, self.max_seq_len)
        self.runner = FastRunner(self.weights, self.kv)
        self.generator = torch.Generator(device=self.weights.device)
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()
        self.waiting: list[Request] = []
        self.active: list[Request] = []  # row i of the cache holds active[i]
        self.lengths: list[int] = []  # cache slots filled per row (the next token goes at this slot)
        self.last: list[int] = []  # last sampled token per row (the next decode input)

    # ---- requests ----
    def validate(self, req: Request) -> None:
        if not req.prompt:
            raise ValueError("the prompt is empty (it needs at least one token, e.g. BOS)")
        if req.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {req.max_new_tokens}")
        if len(req.prompt) >= self.max_seq_len:
            raise ValueError(f"the prompt has {len(req.prompt)} tokens but the context is {self.max_seq_len}; "
                             "at least one slot must be left for a new token")
        V = self.args.vocab_size
        if min(req.prompt) < 0 or max(req.prompt) >= V:
            raise ValueError(f"prompt token ids must lie in [0, {V})")

    def add(self, req: Request) -> Request:
        self.validate(req)
        if req.seed is not None and req.generator is None:
            req.generator = torch.Generator(device=self.weights.device).manual_seed(req.seed)
        self.waiting.append(req)
        return req

    def abort(self, req: Request) -> None:
        """Finish a request now (client went away, a stop string matched). Safe between steps."""
        if req.done:
            return
        if req in self.waiting:
            self.waiting.remove(req)
            req.finish_reason = "abort"
        elif req in self.active:
            self._finish_row(self.active.index(req), "abort")

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.active)

    # ---- stepping ----
    def step(self) -> list[Event]:
        """Admit waiting requests (prefill), then decode one token for every row that was already running."""
        events: list[Event] = []
        n_running = len(self.active)
        if n_running:
            events += self._decode()
        if self.waiting and len(self.active) < self.max_batch:
            events += self._admit()
        return events

    def _admit(self) -> list[Event]:
        free = self.max_batch - len(self.active)
        batch, budget = [], self.max_prefill_tokens
        while self.waiting and len(batch) < free:
            req = self.waiting[0]
            if batch and len(req.prompt) * (len(batch) + 1) > budget:
                break
            batch.append(self.waiting.pop(0))
        events = []
        ready = []
        for req in batch:
            if req.max_new_tokens == 0:
                req.finish_reason = "length"
                events.append(Event(req, None, "length"))
            else:
                ready.append(req)
        if not ready:
            return events
        row0 = len(self.active)
        # identical prompts (K samples of one prompt) are prefilled once and their cache rows copied
        groups: dict[tuple, list[Request]] = {}
        for req in ready:
            groups.setdefault(tuple(req.prompt), []).append(req)
        prompts = list(groups)
        dups = [(u, r) for u, g in enumerate(groups.values()) for r in g[1:]]
        reqs = [g[0] for g in groups.values()] + [r for _, r in dups]
        P = max(len(p) for p in prompts)
        self.kv.ensure(row0 + len(reqs), min(self.max_seq_len, max(P + 1, max(len(r.prompt) + r.max_new_tokens for r in reqs))))
        dev = self.weights.device
        toks = torch.zeros(len(prompts), P, dtype=torch.long)
        for j, p in enumerate(prompts):
            toks[j, :len(p)] = torch.tensor(p)
        last = torch.tensor([len(p) - 1 for p in prompts], device=dev)
        logits = self.runner.prefill(toks.to(dev), row0, last)
        if dups:
            for k, (u, _) in enumerate(dups):
                self.kv.move_row(row0 + u, row0 + len(prompts) + k, len(prompts[u]))
            logits = torch.cat([logits, logits[torch.tensor([u for u, _ in dups], device=dev)]])
        for req in reqs:
            self.active.append(req)
            self.lengths.append(len(req.prompt))
            self.last.append(-1)
        return events + self._sample_and_emit(logits, row0)

    def _decode(self) -> list[Event]:
        n = len(self.active)
        dev = self.weights.device
        need = max(self.lengths) + 1
        if need > self.kv.slots:
            self.kv.ensure(n, need)
        tokens = torch.tensor(self.last, device=dev)
        uniform = min(self.lengths) == max(self.lengths)
        pos = torch.tensor(self.lengths, device=dev)
        logits = self.runner.decode(tokens, pos, max(self.lengths), uniform)
        for i in range(n):
            self.lengths[i] += 1
        return self._sample_and_emit(logits, 0)

    def _sample_and_emit(self, logits: torch.Tensor, row0: int) -> list[Event]:
        reqs = self.active[row0:]
        params = [r.sampling for r in reqs]
        if all(p.greedy for p in params):
            next_tokens = logits.argmax(-1).tolist()
        else:
            dev = logits.device
            row_gens = {i: r.generator for i, r in enumerate(reqs) if r.generator is not None}
            next_tokens = sample(logits, torch.tensor([p.temperature for p in params], device=dev),
                                 torch.tensor([p.top_p for p in params], device=dev),
                                 torch.tensor([p.top_k for p in params], device=dev),
                                 self.generator, row_gens).tolist()
        events, finished = [], []
        for i, (req, tok) in enumerate(zip(reqs, next_tokens)):
            row = row0 + i
            if tok in req.stop_ids:
                finished.append((row, "stop"))
                events.append(Event(req, None, "stop"))
                continue
            req.tokens.append(tok)
            self.last[row] = tok
            reason = None
            if len(req.tokens) >= req.max_new_tokens or self.lengths[row] + 1 >= self.max_seq_len:
                reason = "length"
                finished.append((row, reason))
            events.append(Event(req, tok, reason))
        for row, reason in sorted(finished, reverse=True):  # highest row first: moves never clash
            self._finish_row(row, reason)
        return events

    def _finish_row(self, row: int, reason: str) -> None:
        req = self.active[row]
        req.finish_reason = reason
        last = len(self.active) - 1
        if row != last:
            self.kv.move_row(last, row, self.lengths[last])
            self.active[row], self.lengths[row], self.last[row] = self.active[last], self.lengths[last], self.last[last]
        self.active.pop()
        self.lengths.pop()
        self.last.pop()

    def run(self, callback=None) -> None:
        """Step until every request has finished; callback(event) sees each event."""
        while self.has_work:
            for ev in self.step():
                if callback is not None:
                    callback(ev)


def _stop_tuple(stop_ids) -> tuple[int, ...]:
    if stop_ids is None:
        return ()
    if isinstance(stop_ids, int):
        return (stop_ids,)
    return tuple(int(s) for s in stop_ids)


def generate(model, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             top_k: int = 0, seed: int | None = None, stop_ids=(LLAMA_EOS_ID,), max_batch: int | None = None,
             max_seq_len: int | None = None, dtype=None, callback=None, use_cache: bool = True) -> list[list[int]]:
    """Generate continuations of token-id prompts; returns the new tokens of each prompt (stop id excluded).

    temperature 0 is greedy; top_p / top_k filter the sampled distribution. seed makes sampling
    reproducible (for the same prompts and batch). stop_ids: token ids that end a sequence (default
    LLaMA's EOS, 2; None for none). max_batch: rows decoded together (default: all prompts, at most
    128; further prompts join as rows free up). callback(index, token) streams tokens as they come.
    use_cache=False recomputes the whole sequence with `model.forward` at every step (a slow reference).
    """
    if isinstance(prompts, (str, bytes)) or (prompts and isinstance(prompts[0], int)):
        raise TypeError("prompts must be a list of token-id lists, e.g. [[1, 415, 2502]]")
    sp = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k)
    stops = _stop_tuple(stop_ids)
    if not prompts:
        return []
    if not use_cache:
        return _generate_uncached(model, prompts, max_new_tokens, sp, seed, stops, max_seq_len, callback)
    eng = Engine(model, max_batch=max_batch or min(len(prompts), 128), max_seq_len=max_seq_len, dtype=dtype, seed=seed)
    reqs = [eng.add(Request(list(p), max_new_tokens, sp, stops)) for p in prompts]
    index = {r.id: i for i, r in enumerate(reqs)}
    cb = None
    if callback is not None:
        def cb(ev):
            if ev.token is not None:
                callback(index[ev.request.id], ev.token)
    eng.run(cb)
    return [r.tokens for r in reqs]


def stream(model, prompt: list[int], max_new_tokens: int, **kw):
    """Yield the new tokens of one prompt as they are produced (same options as `generate`)."""
    sp = SamplingParams(kw.pop("temperature", 0.0), kw.pop("top_p", 1.0), kw.pop("top_k", 0))
    stops = _stop_tuple(kw.pop("stop_ids", (LLAMA_EOS_ID,)))
    eng = Engine(model, max_batch=1, seed=kw.pop("seed", None), **kw)
    req = eng.add(Request(list(prompt), max_new_tokens, sp, stops))
    while eng.has_work:
        for ev in eng.step():
            if ev.token is not None:
                yield ev.token


@torch.inference_mode()
def _generate_uncached(model, prompts, max_new_tokens, sp, seed, stops, max_seq_len, callback):
    """Reference decoding: the full sequence through `model.forward` each step, no cache."""
    dev = next(model.parameters()).device
    limit = max_seq_len or model.args.max_seq_len
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed) if seed is not None else gen.seed()
    seqs = [list(p) for p in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    live = list(range(len(prompts)))
    for _ in range(max_new_tokens):
        live = [i for i in live if len(seqs[i]) < limit]
        if not live:
            break
        T = max(len(seqs[i]) for i in live)
        toks = torch.zeros(len(live), T, dtype=torch.long)
        for j, i in enumerate(live):
            toks[j, :len(seqs[i])] = torch.tensor(seqs[i])
        logits = model(toks.to(dev))  # right padding + causal attention: real tokens never see pads
        last = torch.tensor([len(seqs[i]) - 1 for i in live], device=dev)
        logits = logits[torch.arange(len(live), device=dev), last].float()
        nxt = sample(logits, sp.temperature, sp.top_p, sp.top_k, gen).tolist()
        still = []
        for i, t in zip(live, nxt):
            if t in stops:
                continue
            seqs[i].append(t)
            out[i].append(t)
            if callback is not None:
                callback(i, t)
            still.append(i)
        live = still
        if not live:
            break
    return out


def kv_bytes_per_token(args, dtype=torch.float32) -> int:
    """Bytes of KV cache one token occupies (all layers, keys and values)."""
    return 2 * args.n_layers * args.kv_heads * args.head_dim * torch.empty(0, dtype=dtype).element_size()


def weight_bytes_per_token(args, dtype=torch.float32) -> int:
    """Bytes of weights a batch-1 decode step must read: every matrix except the embedding table (one row)."""
    n = args.num_params(include_embedding=False)
    return (n + args.dim) * torch.empty(0, dtype=dtype).element_size()


__all__ = ["Engine", "Request", "Event", "SamplingParams", "generate", "stream", "FastWeights", "fast_weights",
           "LLAMA_EOS_ID", "kv_bytes_per_token", "weight_bytes_per_token"]
