"""Cluster planner: memory per GPU, throughput, step time, days and GPU-hours of a pre-training run.

Memory accounting (bytes per GPU; G GPUs = tp × dp; N parameters; the layout of camelid.parallel:
FSDP2 over the dp ranks with MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32), tensor
parallelism with sequence parallelism over tp ranks, torchtitan style):

- Model states, sharded over all G ranks (FSDP shards what TP has already split): fp32 master
  parameters 4, fp32 gradients 4, AdamW exp_avg and exp_avg_sq 4 + 4 = 16 bytes per parameter, / G.
  This is ZeRO-3's "16 bytes per parameter for mixed-precision Adam" (Rajbhandari et al. 2020),
  here with the bf16 copy only materialised per layer.
- FSDP working set: the all-gathered bf16 parameters of the unit being computed and of the prefetched
  next unit (2 × 2 bytes), plus its unsharded gradients before the fp32 reduce-scatter (4 bytes): 8 bytes
  × the largest unit (one transformer block, or the output projection) / tp.
- Activations saved for backward, per layer per micro-batch (s tokens per sequence, b sequences,
  h = dim, f = FFN hidden, r = kv_heads / n_heads, a = heads), 2-byte activations, divided by tp
  (sequence parallelism also splits the norms and residuals):
    none:      s·b·h·(12 + 4r + 8f/h)   (+ 2·a·s²·b without flash attention: the softmax output)
               attention: norm input and output, q, k and v, attention output (2 + 2 + 2 + 4r + 2 = 8 + 4r);
               FFN: norm input and output (4), w1 x, w3 x, silu(w1 x), their product (4 × 2f/h).
    selective: s·b·h·(8 + 4r + 4f/h)   keep the linear-layer outputs (LLaMA-1 §2.4's "expensive
               activations": q, k, v, attention output, w1 x, w3 x) and the block inputs; recompute the
               norms, the element-wise ops and the attention core.
    full:      2·s·b·h per layer (the block input) + one layer's `none` activations while it recomputes.
  This is Korthikanti et al. 2022's count (GPT: 34·s·b·h + 5·a·s²·b per layer) redone for LLaMA's
  block: no dropout (their 5as²b becomes 2as²b: no mask, no dropout output), SwiGLU instead of a 4h
  GeLU MLP, grouped-query k and v. Flash attention (PyTorch SDPA) never stores the s² scores.
- Output: bf16 logits and their fp32 copy for the cross-entropy, 6·s·b·V / tp.
- The run fits when the total is at most 90% of the card's memory: the rest is for the CUDA context,
  NCCL buffers and allocator fragmentation.

Throughput: model FLOPs per token are 6N (Chinchilla; what the Llama-2 model card's GPU-hours imply at
MFU 0.40) or PaLM's 6N + 12·L·h·s (`flops_per_token="palm"`, attention included). Tokens/s/GPU =
MFU × peak / FLOPs-per-token, or given directly (LLaMA-1 reports 380 tokens/s/GPU for 65B); the
other is derived. Activation recompute does not change MFU's numerator (model FLOPs); it does raise
the hardware FLOPs (HFU): full recompute adds one forward, 8N instead of 6N per token.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from camelid.errors import CamelidError
from camelid.scaling.laws import fmt_count

GIB = 2 ** 30


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: float
    bf16_flops: float  # dense bf16 tensor-core peak
    note: str = ""


GPUS: dict[str, GPU] = {
    "a100": GPU("A100-SXM4-80GB", 80 * GIB, 312e12, "LLaMA-1 and Llama-2 were trained on these"),
    "a100-40gb": GPU("A100-SXM4-40GB", 40 * GIB, 312e12),
    "h100": GPU("H100-SXM5-80GB", 80 * GIB, 989e12),
    "h200": GPU("H200-SXM-141GB", 140 * GIB, 989e12),
}

AC_MODES = ("none", "selective", "full")
USABLE_FRACTION = 0.90
DEFAULT_MFU = 0.40
DEFAULT_BATCH_TOKENS = 4 * 2 ** 20  # LLaMA's "4M tokens": 2,048 sequences of 2,048


def get_gpu(name: str) -> GPU:
    key = name.lower()
    if key not in GPUS:
        raise CamelidError(f"unknown GPU {name!r}; choose one of {', '.join(GPUS)}")
    return GPUS[key]


@dataclass
class Plan:
    model: str
    n_params: int
    tokens: float
    gpus: int
    gpu: str
    tp: int
    dp: int
    ac: str
    flash: bool
    seq_len: int
    micro_batch: int
    grad_accum: int
    batch_tokens: int
    flops_per_token: float
    mfu: float
    hfu: float
    tokens_per_gpu_s: float
    step_time_s: float
    steps: int
    days: float
    gpu_hours: float
    total_flops: float
    memory: dict  # component -> bytes
    memory_total: float
    memory_capacity: float
    fits: bool
    notes: list = field(default_factory=list)
    suggestions: list = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["memory_gib"] = {k: v / GIB for k, v in self.memory.items()}
        d["memory_total_gib"] = self.memory_total / GIB
        d["memory_capacity_gib"] = self.memory_capacity / GIB
        return d


def flops_per_token(args, n_params: int, seq_len: int, kind: str = "6N") -> float:
    if kind.upper() == "6N":
        return 6.0 * n_params
    if kind.lower() == "palm":  # PaLM appendix B: 6N + 12·L·H·Q·T (attention score and value matmuls)
        return 6.0 * n_params + 12.0 * args.n_layers * args.dim * seq_len
    raise CamelidError(f"--flops-per-token must be 6N or palm, not {kind!r}")


def layer_params(args) -> int:
    d, kv = args.dim, args.kv_heads * args.head_dim
    return d * d * 2 + d * kv * 2 + 3 * d * args.hidden_dim + 2 * d


def activation_bytes_per_layer(args, seq_len: int, micro_batch: int, tp: int, ac: str, flash: bool) -> float:
    """Bytes one transformer block keeps for backward (see the module docstring)."""
    s, b, h, a = seq_len, micro_batch, args.dim, args.n_heads
    r = args.kv_heads / args.n_heads
    f = args.hidden_dim / args.dim
    if ac == "none":
        per = s * b * h * (12 + 4 * r + 8 * f)
        if not flash:
            per += 2 * a * s * s * b
    elif ac == "selective":
        per = s * b * h * (8 + 4 * r + 4 * f)
    elif ac == "full":
        per = 2 * s * b * h
    else:
        raise CamelidError(f"--ac must be one of {', '.join(AC_MODES)}, not {ac!r}")
    return per / tp


def memory_per_gpu(args, *, gpus: int, tp: int, seq_len: int, micro_batch: int, ac: str, flash: bool) -> dict:
    n = args.num_params()
    unit = max(layer_params(args), args.vocab_size * args.dim)
    mem = {
        "params (fp32 shard)": 4 * n / gpus,
        "grads (fp32 shard)": 4 * n / gpus,
        "AdamW m, v (fp32 shard)": 8 * n / gpus,
        "FSDP gather buffers (bf16)": 8 * unit / tp,
        "activations": args.n_layers * activation_bytes_per_layer(args, seq_len, micro_batch, tp, ac, flash),
        "logits + loss": 6 * seq_len * micro_batch * args.vocab_size / tp,
    }
    if ac == "full":  # one layer recomputes its activations at a time
        mem["activations"] += activation_bytes_per_layer(args, seq_len, micro_batch, tp, "none", flash)
    return mem


def _check_layout(args, gpus: int, tp: int) -> None:
    if gpus < 1 or tp < 1:
        raise CamelidError("--gpus and --tp must be at least 1")
    if gpus % tp:
        raise CamelidError(f"--tp {tp} must divide --gpus {gpus}")
    if args.n_heads % tp or args.kv_heads % tp:
        raise CamelidError(f"--tp {tp} must divide the number of heads ({args.n_heads}) and of kv heads "
                           f"({args.kv_heads})")


def load_model_args(name: str):
    """A preset name, or a recipe TOML (its [model] section; the preset's vocabulary unless it sets one)."""
    from pathlib import Path

    from camelid.model import preset

    if name.endswith(".toml"):
        from camelid.config import load_config, model_args_from
        if not Path(name).is_file():
            raise CamelidError(f"{name}: no such recipe file")
        cfg = load_config(name)
        return model_args_from(cfg.model)
    try:
        return preset(name)
    except ValueError as e:
        raise CamelidError(str(e))


def plan_run(args, *, model_name: str, tokens: float, gpus: int, gpu: str = "a100", tp: int = 1,
             ac: str = "none", mfu: float | None = None, tokens_per_gpu_s: float | None = None,
             seq_len: int | None = None, micro_batch: int = 1, batch_tokens: int = DEFAULT_BATCH_TOKENS,
             flash: bool = True, fpt_kind: str = "6N", suggest: bool = True) -> Plan:
    """Plan a pre-training run of model `args` on `tokens` tokens; see the module docstring."""
    card = get_gpu(gpu)
    _check_layout(args, gpus, tp)
    if ac not in AC_MODES:
        raise CamelidError(f"--ac must be one of {', '.join(AC_MODES)}, not {ac!r}")
    if tokens <= 0:
        raise CamelidError("--tokens must be positive")
    if micro_batch < 1 or batch_tokens < 1:
        raise CamelidError("--micro-batch and --batch-tokens must be at least 1")
    if mfu is not None and tokens_per_gpu_s is not None:
        raise CamelidError("give --mfu or --tokens-per-gpu-s, not both")
    s = seq_len or args.max_seq_len
    n = args.num_params()
    dp = gpus // tp
    notes = []
    fpt = flops_per_token(args, n, s, fpt_kind)
    if tokens_per_gpu_s is not None:
        if tokens_per_gpu_s <= 0:
            raise CamelidError("--tokens-per-gpu-s must be positive")
        mfu = tokens_per_gpu_s * fpt / card.bf16_flops
    else:
        mfu = DEFAULT_MFU if mfu is None else mfu
        if not 0 < mfu <= 1:
            raise CamelidError(f"--mfu must be in (0, 1], got {mfu}")
        tokens_per_gpu_s = mfu * card.bf16_flops / fpt
    if mfu > 0.75:
        notes.append(f"MFU {mfu:.2f} is above what dense training reaches in practice (0.4-0.6)")
    recompute = {"none": 0.0, "selective": 0.0, "full": 2.0 * n}[ac]
    hfu = mfu * (fpt + recompute) / fpt

    micro_tokens = s * micro_batch * dp
    accum = max(1, math.ceil(batch_tokens / micro_tokens))
    actual_batch = accum * micro_tokens
    if micro_tokens > batch_tokens:
        notes.append(f"one micro-step already holds {micro_tokens:,} tokens (dp {dp} × {micro_batch} × {s}), "
                     f"more than --batch-tokens {batch_tokens:,}: the global batch is {actual_batch:,}")
    elif actual_batch != batch_tokens:
        notes.append(f"global batch rounded up to {actual_batch:,} tokens ({accum} accumulation steps)")
    cluster_tps = tokens_per_gpu_s * gpus
    seconds = tokens / cluster_tps
    mem = memory_per_gpu(args, gpus=gpus, tp=tp, seq_len=s, micro_batch=micro_batch, ac=ac, flash=flash)
    total = sum(mem.values())
    capacity = card.memory_bytes
    fits = total <= USABLE_FRACTION * capacity
    if tp > 8:
        notes.append("tp above 8 spans nodes: tensor parallelism over the inter-node network is slow")
    if s > args.max_seq_len:
        notes.append(f"sequence length {s} is longer than the model's context {args.max_seq_len}")
    suggestions = []
    if not fits and suggest:
        for t in (1, 2, 4, 8):
            if t < tp or gpus % t or args.n_heads % t or args.kv_heads % t:
                continue
            for mode in AC_MODES[AC_MODES.index(ac) if t == tp else 0:]:
                m = memory_per_gpu(args, gpus=gpus, tp=t, seq_len=s, micro_batch=micro_batch, ac=mode, flash=flash)
                if sum(m.values()) <= USABLE_FRACTION * capacity:
                    suggestions.append(f"--tp {t} --ac {mode}: {sum(m.values()) / GIB:.1f} GiB")
                    break
        if not suggestions:
            suggestions.append("no tp <= 8 / checkpointing mode fits: use more GPUs, a shorter sequence "
                               "or a bigger card")
    return Plan(
        model=model_name, n_params=n, tokens=tokens, gpus=gpus, gpu=card.name, tp=tp, dp=dp, ac=ac,
        flash=flash, seq_len=s, micro_batch=micro_batch, grad_accum=accum, batch_tokens=actual_batch,
        flops_per_token=fpt, mfu=mfu, hfu=hfu, tokens_per_gpu_s=tokens_per_gpu_s,
        step_time_s=actual_batch / cluster_tps, steps=math.ceil(tokens / actual_batch),
        days=seconds / 86400, gpu_hours=seconds * gpus / 3600, total_flops=fpt * tokens,
        memory=mem, memory_total=total, memory_capacity=capacity, fits=fits, notes=notes,
        suggestions=suggestions,
    )


def describe_plan(p: Plan) -> str:
    attn = "flash attention" if p.flash else "eager attention"
    lines = [
        f"plan: {p.model} ({p.n_params:,} params) on {fmt_count(p.tokens)} tokens, "
        f"{p.gpus:,} × {p.gpu} (tp {p.tp} × dp {p.dp}), activation checkpointing {p.ac}, {attn}",
        "",
        "memory per GPU                          GiB",
    ]
    for k, v in p.memory.items():
        lines.append(f"  {k:<36} {v / GIB:7.2f}")
    usable = USABLE_FRACTION * p.memory_capacity
    verdict = "fits" if p.fits else "DOES NOT FIT"
    lines += [
        f"  {'total':<36} {p.memory_total / GIB:7.2f}   of {usable / GIB:.1f} usable "
        f"({p.memory_capacity / GIB:.0f} GiB card): {verdict}",
        "",
        "throughput",
        f"  {p.tokens_per_gpu_s:,.0f} tokens/s/GPU, {p.tokens_per_gpu_s * p.gpus / 1e6:,.2f}M tokens/s in all",
        f"  MFU {p.mfu:.3f} at {p.flops_per_token / p.n_params:.2f}·N FLOPs/token"
        + (f" (HFU {p.hfu:.3f} with recompute)" if p.hfu != p.mfu else ""),
        f"  global batch {p.batch_tokens:,} tokens = dp {p.dp} × micro-batch {p.micro_batch} × "
        f"{p.seq_len} × {p.grad_accum} accumulation",
        f"  step {p.step_time_s:.2f} s, {p.steps:,} steps",
        "",
        "time and cost",
        f"  {p.days:.1f} days ({p.days * 24:,.0f} hours), {p.gpu_hours:,.0f} GPU-hours, "
        f"{p.total_flops:.3g} model FLOPs",
    ]
    if p.notes:
        lines += ["", "notes"] + [f"  - {n}" for n in p.notes]
    if p.suggestions:
        lines += ["", "to make it fit"] + [f"  - {s}" for s in p.suggestions]
    return "\n".join(lines)
