"""The LLaMA-1 / Llama-2 transformer, as Meta's reference `llama/model.py` defines it.

Pre-norm RMSNorm, rotary position embeddings on q and k (Meta's interleaved pair layout),
grouped-query attention through `scaled_dot_product_attention`, SwiGLU feed-forward, no biases,
untied embedding and output. Module and parameter names are Meta's, so checkpoints and
tensor-parallel plans map one to one. No training, I/O or distributed code lives here.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # None: multi-head attention (n_kv_heads == n_heads)
    vocab_size: int = 32000
    multiple_of: int = 256  # Meta's FFN rule: hidden rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None  # 1.3 for Llama-2-70B
    ffn_hidden_dim: int | None = None  # explicit hidden size (Hugging Face `intermediate_size`); wins over the rule
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048

    def __post_init__(self):
        self.validate()

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        if self.ffn_hidden_dim is not None:
            return self.ffn_hidden_dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def validate(self) -> None:
        def need(ok: bool, msg: str):
            if not ok:
                raise ValueError(f"invalid model config: {msg}")

        for name in ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of", "max_seq_len"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) > 0,
                 f"{name} must be a positive integer, got {getattr(self, name)!r}")
        need(self.dim % self.n_heads == 0, f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        need(self.head_dim % 2 == 0, f"head_dim {self.head_dim} (dim / n_heads) must be even for rotary embeddings")
        need(self.kv_heads > 0 and self.n_heads % self.kv_heads == 0,
             f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.kv_heads}")
        need(self.ffn_hidden_dim is None or self.ffn_hidden_dim > 0, f"ffn_hidden_dim must be positive, got {self.ffn_hidden_dim}")
        need(self.ffn_dim_multiplier is None or self.ffn_dim_multiplier > 0, "ffn_dim_multiplier must be positive")
        need(self.norm_eps > 0, f"norm_eps must be positive, got {self.norm_eps}")
        need(self.rope_theta > 0, f"rope_theta must be positive, got {self.rope_theta}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelArgs":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"invalid model config: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)

    def num_params(self, include_embedding: bool = True) -> int:
        """Exact parameter count, computed from the config alone."""
        d, kv = self.dim, self.kv_heads * self.head_dim
        per_layer = d * d * 2 + d * kv * 2 + 3 * d * self.hidden_dim + 2 * d
        total = self.n_layers * per_layer + d + self.vocab_size * d  # + final norm + output
        return total + (self.vocab_size * d if include_embedding else 0)


def _llama(dim, n_layers, n_heads, *, version, n_kv_heads=None, multiple_of=256, ffn_dim_multiplier=None):
    return dict(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, vocab_size=32000,
                multiple_of=multiple_of, ffn_dim_multiplier=ffn_dim_multiplier,
                norm_eps=1e-6 if version == 1 else 1e-5, max_seq_len=2048 if version == 1 else 4096)


PRESETS: dict[str, dict] = {
    # The papers' models (LLaMA-1 Table 2, Llama-2 Table 1 and Meta's params.json files).
    "llama1-7b": _llama(4096, 32, 32, version=1),
    "llama1-13b": _llama(5120, 40, 40, version=1),
    "llama1-33b": _llama(6656, 60, 52, version=1),
    "llama1-65b": _llama(8192, 80, 64, version=1),
    "llama2-7b": _llama(4096, 32, 32, version=2),
    "llama2-13b": _llama(5120, 40, 40, version=2),
    "llama2-70b": _llama(8192, 80, 64, version=2, n_kv_heads=8, multiple_of=4096, ffn_dim_multiplier=1.3),
    # Laptop sizes (vocab is replaced by the tokenizer's). Llama-2 shape: GQA, eps 1e-5.
    "tiny": dict(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, vocab_size=4096, ffn_hidden_dim=704,
                 norm_eps=1e-5, max_seq_len=256),
    "mini": dict(dim=384, n_layers=6, n_heads=6, n_kv_heads=2, vocab_size=8192, ffn_hidden_dim=1024,
                 norm_eps=1e-5, max_seq_len=512),
    "small": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, vocab_size=8192, ffn_hidden_dim=1408,
                  norm_eps=1e-5, max_seq_len=1024),
    "base": dict(dim=640, n_layers=8, n_heads=10, n_kv_heads=5, vocab_size=8192, ffn_hidden_dim=1728,
                 norm_eps=1e-5, max_seq_len=1024),
}


def preset(name: str, **overrides) -> ModelArgs:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return ModelArgs(**{**PRESETS[name], **overrides})


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # one fused kernel, same arithmetic
        # Otherwise normalise in fp32 whatever the activation dtype, cast back, then scale, as Meta does
        # (the fused kernel without a weight is Meta's x * rsqrt(mean(x^2) + eps): 3 kernels instead of 7)
        return F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).type_as(x) * self.weight

    def reset_parameters(self):
        nn.init.ones_(self.weight)


def rotary_freqs(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """Rotation of each (position, frequency) as a unit complex number: positions [B, T] -> [B, T, 1, head_dim/2]
    (the 1 broadcasts over the heads)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.to(torch.float32)[:, :, None, None] * inv_freq
    if torch.compiler.is_compiling():  # inductor has no complex kernels: (cos, sin) pairs [..., head_dim/2, 2]
        return torch.stack([angles.cos(), angles.sin()], dim=-1)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (x0, x1), (x2, x3), ... of x [B, T, H, D], read as complex numbers, as
    Meta's reference does (one complex multiply: far cheaper in eager mode than the real-valued form).
    Compiled, the same rotation on (cos, sin) pairs, which the compiler fuses into one kernel."""
    if freqs.is_complex():
        xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
        return torch.view_as_real(xc * freqs).flatten(3).type_as(x)
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs.unbind(-1)
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(3).type_as(x)


CPU_ATTENTION_MAX_LEN = 512
CAUSAL_QUERY_BLOCK = 64


def causal_attention_path(q: torch.Tensor) -> str:
    """How causal attention with aligned queries and keys (training, a fresh prefill) runs on this input.

    PyTorch's CPU flash kernel gains nothing from bf16 and takes keys in blocks of up to 512, masking the
    future half of the scores instead of skipping it. So on CPUs, up to 512 tokens: "math" in bf16 (plain
    batched matmuls, which do run 4x faster in bf16), "blocks" in fp32 (queries in blocks of 64, each
    against only the keys up to its end). "flash" everywhere else: the GPU kernels skip masked blocks
    themselves, and so does the CPU kernel beyond 512 tokens (docs/PERFORMANCE.md has the timings)."""
    T = q.shape[2]
    if q.device.type != "cpu" or T > CPU_ATTENTION_MAX_LEN:
        return "flash"
    if q.dtype == torch.bfloat16:
        return "math"
    return "blocks" if q.dtype == torch.float32 and T > CAUSAL_QUERY_BLOCK else "flash"


def masked_attention_path(q: torch.Tensor, k: torch.Tensor) -> str:
    """How attention with a mask (padding, packed samples) runs when queries and keys are aligned.

    PyTorch's CPU flash kernel takes 10-15x longer for a masked call's backward than for its forward; where
    gradients flow in bf16, plain matmuls are 4x faster forward and backward together on short rows (32 x 85
    tokens: 12 ms instead of 50) and 1.2x at 256 tokens: "math". Without gradients the kernel's forward is the
    faster one (1.5-3x), so inference keeps "flash" (docs/PERFORMANCE.md)."""
    T = q.shape[2]
    if (q.device.type == "cpu" and q.dtype == torch.bfloat16 and 1 < T <= CPU_ATTENTION_MAX_LEN
            and k.shape[2] == T and torch.is_grad_enabled() and q.requires_grad):
        return "math"
    return "flash"


def blockwise_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int) -> torch.Tensor:
    """Causal attention one block of queries at a time, each block against the keys at or before its
    last query: about half the work of one causal call on CPUs. q [B, H, T, D]; k, v [B, H_kv, T, D]."""
    T, gqa = q.shape[2], q.shape[1] != k.shape[1]
    out = [F.scaled_dot_product_attention(q[:, :, :block], k[:, :, :block], v[:, :, :block], is_causal=True,
                                          enable_gqa=gqa)]
    positions = torch.arange(T, device=q.device)
    for start in range(block, T, block):
        end = min(start + block, T)
        mask = positions[:end] <= positions[start:end, None]  # bottom-right aligned causal mask
        out.append(F.scaled_dot_product_attention(q[:, :, start:end], k[:, :, :end], v[:, :, :end], attn_mask=mask,
                                                  enable_gqa=gqa))
    return torch.cat(out, dim=2)


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Attention as Meta's reference writes it (scores in the compute dtype, then softmax). q [B, H, T, D];
    k, v [B, H_kv, T, D]; mask None: causal, added inside the score matmul; else the boolean SDPA mask
    [B or 1, 1, T, T] (`build_attention_mask`: every query sees at least itself)."""
    B, H, T, D = q.shape
    groups = H // k.shape[1]
    if groups > 1:
        k = k[:, :, None].expand(-1, -1, groups, -1, -1).reshape(B, H, T, D)
        v = v[:, :, None].expand(-1, -1, groups, -1, -1).reshape(B, H, T, D)
    if mask is None:
        causal = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
        scores = torch.baddbmm(causal.expand(B * H, T, T), q.reshape(B * H, T, D),
                               k.reshape(B * H, T, D).transpose(1, 2), alpha=D**-0.5).view(B, H, T, T)
    else:
        scores = (q @ k.transpose(-1, -2) * D**-0.5).masked_fill(~mask, float("-inf"))
    # the CPU softmax kernel accumulates bf16 in fp32 internally, so no fp32 copy of the scores is needed
    return torch.softmax(scores, dim=-1) @ v


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of one new token per row against its keys: q [B, H, 1, D]; k, v [B, H_kv, S, D]; mask
    [B, 1, 1, S] or None. The query heads that share a kv head ride along as the query-length axis of
    one SDPA call, so each cached key and value is read once instead of being expanded per head."""
    B, H, _, D = q.shape
    q = q.view(B, k.shape[1], -1, D)  # [B, H_kv, groups, D]
    if torch.compiler.is_compiling():
        # compiled (infer/compiled.py), these products and sums become fused loops that read each cached key and
        # value once; SDPA's CPU kernel, a call per row and head, took more time than the step's matmuls at 64
        # rows in bf16 (compiled step 1.3x faster this way at 64 rows, 1.1x at 16; fp32 unchanged)
        scores = (q.unsqueeze(3).float() * k.unsqueeze(2).float()).sum(-1) * D**-0.5  # [B, H_kv, groups, S]
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        out = (torch.softmax(scores, -1).unsqueeze(-1) * v.unsqueeze(2).float()).sum(-2).to(q.dtype)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.view(B, H, 1, D)


class KVCache:
    """Keys and values for every layer, [rows, n_kv_heads, slots, head_dim] each, and each row's own length.

    Row b's next token goes to slot lengths[b] and sees only the slots up to it, so rows of different
    lengths run together with no padding and no key mask beyond `slot <= position`. A forward call works
    on rows first .. first + count: all of them, or a view from `rows()` (a new prompt is prefilled into
    a free row while others are mid-sequence). Rows can be copied (continuous batching keeps the live
    rows at the front) and the whole cache regrown (`resize`); `lengths` may be set directly (a
    right-padded prompt keeps only its real tokens).
    """

    def __init__(self, args: ModelArgs, rows: int, slots: int, device=None, dtype=torch.float32):
        shape = (rows, args.kv_heads, slots, args.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(args.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(args.n_layers)]
        self.lengths = [0] * rows  # Python ints: the shapes of a step depend on them, so no device sync
        self.first, self.count = 0, rows
        self._write, self._end = None, 0

    @property
    def slots(self) -> int:
        return self.k[0].shape[2]

    def rows(self, first: int, count: int) -> "KVCache":
        """A view of `count` rows from `first`: it shares the storage and the lengths."""
        view = copy.copy(self)
        view.first, view.count = self.first + first, count
        return view

    def extend(self, T: int) -> int | torch.Tensor:
        """Claim the next T slots of every row for one forward call and return where they begin: an int
        when all rows have the same length, else a tensor [rows]."""
        lengths = self.lengths[self.first:self.first + self.count]
        lo, hi = min(lengths), max(lengths)
        if hi + T > self.slots:
            raise ValueError(f"KV cache is full: {hi + T} positions needed, {self.slots} allocated")
        if lo == hi:  # the common case (a fresh prefill, or rows in step): the same slots for every row
            start = self._write = lo
        else:
            device = self.k[0].device
            start = torch.tensor(lengths, device=device)
            self._write = (torch.arange(self.count, device=device)[:, None], start[:, None] + torch.arange(T, device=device))
        self._end = hi + T
        for i in range(self.first, self.first + self.count):
            self.lengths[i] += T
        return start

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, n_kv, T, D] in the slots `extend` claimed; return each row's keys and values so far
        (up to the longest row; `build_attention_mask` hides what lies past a shorter row's end)."""
        # (narrow: one op where indexing takes several; a decode step is mostly such overhead)
        ck, cv = self.k[layer], self.v[layer]
        if self.count != ck.shape[0]:
            ck, cv = ck.narrow(0, self.first, self.count), cv.narrow(0, self.first, self.count)
        if isinstance(self._write, int):
            ck.narrow(2, self._write, k.shape[2]).copy_(k)
            cv.narrow(2, self._write, v.shape[2]).copy_(v)
        else:  # advanced indices on rows and slots put [B, T] first: the values go in as [B, T, n_kv, D]
            ck[self._write[0], :, self._write[1]] = k.transpose(1, 2)
            cv[self._write[0], :, self._write[1]] = v.transpose(1, 2)
        return ck.narrow(2, 0, self._end), cv.narrow(2, 0, self._end)

    def attention_mask(self, T: int, start, key_mask=None, segment_ids=None, device=None) -> torch.Tensor | None:
        """The mask of a forward call over this cache (a cache of another layout, e.g. a compiled decode
        step's, builds its own)."""
        return build_attention_mask(T, start, key_mask, segment_ids, device)

    def copy_row(self, src: int, dst: int) -> None:
        n = self.lengths[src]
        for t in self.k + self.v:
            t[dst, :, :n].copy_(t[src, :, :n])
        self.lengths[dst] = n

    def resize(self, rows: int, slots: int) -> None:
        """Reallocate to rows x slots, keeping what fits."""
        keep_rows, keep_slots = min(rows, len(self.lengths)), min(slots, self.slots)
        for store in (self.k, self.v):
            for i, old in enumerate(store):
                new = old.new_zeros(rows, old.shape[1], slots, old.shape[3])
                new[:keep_rows, :, :keep_slots] = old[:keep_rows, :, :keep_slots]
                store[i] = new
        self.lengths = (self.lengths + [0] * rows)[:rows]
        self.first, self.count = 0, rows


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of q [B, H, T, D] over k, v [B, H_kv, S, D]; mask None with S == T means plain causal."""
    T = q.shape[2]
    path = causal_attention_path(q) if mask is None and k.shape[2] == T else masked_attention_path(q, k)
    if path == "math":
        return math_attention(q, k, v, mask)
    if path == "blocks":
        return blockwise_causal_attention(q, k, v, CAUSAL_QUERY_BLOCK)
    if T == 1:
        return decode_attention(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                          enable_gqa=q.shape[1] != k.shape[1])


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)
        # inference may put one matmul for all three here (infer/packing.py): its output is [q | k | v]
        self.wqkv: nn.Module | None = None

    def forward(self, x, freqs, mask=None, cache: KVCache | None = None, layer: int = 0):
        B, T, _ = x.shape
        if self.wqkv is None:
            q = self.wq(x).view(B, T, -1, self.head_dim)  # -1, not n_heads: tensor parallel shards the heads
            k = self.wk(x).view(B, T, -1, self.head_dim)
            v = self.wv(x).view(B, T, -1, self.head_dim)
            q, k = apply_rotary(q, freqs), apply_rotary(k, freqs)
        else:  # q and k heads side by side: one rotation for both (a decode step is short; each op counts)
            qkv = self.wqkv(x).view(B, T, -1, self.head_dim)
            qk, v = qkv.split([self.n_heads + self.n_kv_heads, self.n_kv_heads], dim=2)
            q, k = apply_rotary(qk, freqs).split([self.n_heads, self.n_kv_heads], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
        if cache is not None:
            k, v = cache.update(layer, k, v)
        return self.wo(attend(q, k, v, mask).transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)
        self.w13: nn.Module | None = None  # inference may put one matmul for w1 and w3 here: [gate | up]

    def forward(self, x):
        gate, up = (self.w1(x), self.w3(x)) if self.w13 is None else self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x, freqs, mask=None, cache: KVCache | None = None):
        h = x + self.attention(self.attention_norm(x), freqs, mask, cache, self.layer_id)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs, lm_head: bool = True):
        """lm_head=False builds the backbone alone (a reward model puts a scalar head on it instead)."""
        super().__init__()
        args.validate()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(i, args) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        if lm_head:
            self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, seed: int | None = None) -> None:
        """Fresh weights for pre-training: N(0, 0.02), with the residual projections (wo, w2) scaled by
        1/sqrt(2 * n_layers) as in GPT-2 so the residual stream does not grow with depth."""
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.tok_embeddings.weight.device).manual_seed(seed)
        out_std = std / math.sqrt(2 * self.args.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, out_std if name.endswith(("wo.weight", "w2.weight")) else std, generator=gen)

    def forward(self, tokens: torch.Tensor, *, positions=None, mask=None, segment_ids=None,
                cache: KVCache | None = None) -> torch.Tensor:
        """tokens [B, T] -> logits [B, T, vocab]. See `hidden` for the optional arguments."""
        return self.output(self.hidden(tokens, positions=positions, mask=mask, segment_ids=segment_ids, cache=cache))

    def hidden(self, tokens: torch.Tensor, *, positions: torch.Tensor | None = None, mask: torch.Tensor | None = None,
               segment_ids: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """The final normalised hidden states [B, T, dim] (what the output head, or a reward head, reads).

        positions:   [B, T] rotary positions of each token; default: consecutive from each row's cache length.
                     Left-padded rows pass positions that count only their real tokens.
        mask:        [B, S] bool over all keys this call sees (cached ones first, S = cached + T):
                     False marks padding that nobody may attend to.
        segment_ids: [B, T] for packed samples: a token attends only within its own segment.
        cache:       a KVCache (or a view of some of its rows) to read each row's prefix from and append
                     this call's keys and values to.
        """
        B, T = tokens.shape
        start = cache.extend(T) if cache is not None else 0
        if positions is None:
            offset = start.unsqueeze(1) if isinstance(start, torch.Tensor) else start
            positions = (offset + torch.arange(T, device=tokens.device)).expand(B, T)
        freqs = rotary_freqs(positions, self.args.head_dim, self.args.rope_theta)
        attn_mask = (cache.attention_mask if cache is not None else build_attention_mask)(T, start, mask, segment_ids,
                                                                                          tokens.device)
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, freqs, attn_mask, cache)
        return self.norm(h)


def build_attention_mask(T: int, start: int | torch.Tensor, key_mask=None, segment_ids=None,
                         device=None) -> torch.Tensor | None:
    """The boolean SDPA mask [B or 1, 1, T, S], or None when plain causal attention will do.

    start: how many keys each row has cached, an int for all rows or a tensor [B]; S = max(start) + T.
    Query i of row b sits at key index start[b] + i and sees keys j <= start[b] + i (SDPA's `is_causal`
    would align the diagonal to the top-left when there is a cached prefix, which is wrong here); for a
    shorter row this also hides the slots past its end. Every query may always see itself, so a padding
    query never has an all-masked row (which would give NaN).
    """
    ragged = isinstance(start, torch.Tensor)
    if key_mask is None and segment_ids is None and not ragged and (start == 0 or T == 1):
        return None
    S = (int(start.max()) if ragged else start) + T
    q_idx = ((start.unsqueeze(1) if ragged else start) + torch.arange(T, device=device)).view(-1, T, 1)
    k_idx = torch.arange(S, device=device)
    allowed = k_idx <= q_idx  # [B or 1, T, S]
    if key_mask is not None:
        if key_mask.shape[-1] != S:
            raise ValueError(f"mask covers {key_mask.shape[-1]} keys but this call sees {S} (cached {S - T} + new {T})")
        allowed = allowed & key_mask.bool().unsqueeze(1)
    if segment_ids is not None:
        if S != T:
            raise ValueError("segment_ids (packed samples) cannot be combined with a KV cache prefix")
        allowed = allowed & (segment_ids.unsqueeze(2) == segment_ids.unsqueeze(1))
    allowed = allowed | (k_idx == q_idx)
    return allowed.unsqueeze(1)
