"""Memory per GPU for the post-training stages (Llama-2 §3): SFT, a reward model, rejection sampling, PPO.

Every model a stage holds is listed with its bytes per GPU, in the layout camelid uses (FSDP2 over the
data-parallel ranks, tensor parallelism over tp; the terms of `planner.memory_per_gpu`):

- a trained model: its pre-training states (fp32 master weights, gradients, AdamW moments: 16 bytes per
  parameter, sharded over all G GPUs), the FSDP gather buffers, activations and, for a language model,
  the logits; a reward or value model has a scalar head instead of the vocabulary projection.
- a frozen model (PPO's reference, the two reward models): bf16 weights sharded over the G GPUs (2 bytes
  per parameter / G) plus one block's gather buffer; no gradients, optimizer state or saved activations.
- generation (rejection sampling and PPO rollouts): Llama-2 §3.2.3 gathers the policy's full weights
  before sampling (generation from FSDP shards was ~20x slower) and frees them afterwards: 2 bytes per
  parameter / tp while sampling, plus the KV cache of this rank's rollouts, 2 (k and v) × layers ×
  kv_heads × head_dim × tokens × 2 bytes / tp per sequence.

The training and the sampling phases do not overlap (the gathered copy is freed before training), so
the peak is the larger of the two plus what both keep (the sharded states of every model).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from camelid.errors import CamelidError
from camelid.scaling.planner import (AC_MODES, GIB, USABLE_FRACTION, _check_layout, activation_bytes_per_layer,
                                     get_gpu, layer_params)

STAGES = ("sft", "rm", "rs", "ppo")


@dataclass
class StagePlan:
    stage: str
    model: str
    gpus: int
    gpu: str
    tp: int
    ac: str
    resident: dict  # model -> bytes every phase keeps (sharded states, frozen weights)
    training: dict  # what the training phase adds (gather buffers, activations, logits)
    sampling: dict  # what the sampling phase adds (gathered policy, KV cache); empty for SFT and RM
    peak: float
    capacity: float
    fits: bool
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        gib = lambda d: {k: v / GIB for k, v in d.items()}  # noqa: E731
        return {"stage": self.stage, "model": self.model, "gpus": self.gpus, "gpu": self.gpu, "tp": self.tp,
                "ac": self.ac, "resident_gib": gib(self.resident), "training_gib": gib(self.training),
                "sampling_gib": gib(self.sampling), "peak_gib": self.peak / GIB,
                "capacity_gib": self.capacity / GIB, "fits": self.fits, "notes": self.notes}


def _trained(args, gpus, tp, seq_len, micro_batch, ac, lm_head: bool) -> tuple[float, dict]:
    """(sharded states, working set) of one model being trained."""
    n = args.num_params() - (0 if lm_head else args.vocab_size * args.dim - args.dim)
    unit = max(layer_params(args), args.vocab_size * args.dim if lm_head else 0)
    acts = args.n_layers * activation_bytes_per_layer(args, seq_len, micro_batch, tp, ac, True)
    if ac == "full":
        acts += activation_bytes_per_layer(args, seq_len, micro_batch, tp, "none", True)
    work = {"FSDP gather buffers (bf16)": 8 * unit / tp, "activations": acts}
    if lm_head:
        work["logits + loss"] = 6 * seq_len * micro_batch * args.vocab_size / tp
    return 16 * n / gpus, work


def _frozen(args, gpus, tp) -> float:
    """bf16 weights sharded over every GPU plus one block's gather buffer."""
    return 2 * args.num_params() / gpus + 2 * layer_params(args) / tp


def kv_cache_bytes(args, tokens: int, sequences: int, tp: int) -> float:
    return 2 * args.n_layers * args.kv_heads * args.head_dim * tokens * sequences * 2 / tp


def plan_stage(args, stage: str, *, model_name: str, gpus: int, gpu: str = "a100", tp: int = 1, ac: str = "none",
               seq_len: int | None = None, micro_batch: int = 1, rollout_batch: int = 512,
               rollout_tokens: int | None = None, suggest: bool = True) -> StagePlan:
    """Memory per GPU of one post-training stage of model `args` (the policy; Llama-2's reward models have
    the policy's size). `rollout_batch` sequences are sampled per iteration over all data-parallel ranks,
    each up to `rollout_tokens` (prompt and answer; default: the context)."""
    if stage not in STAGES:
        raise CamelidError(f"--stage must be one of {', '.join(STAGES)}, not {stage!r}")
    if ac not in AC_MODES:
        raise CamelidError(f"--ac must be one of {', '.join(AC_MODES)}, not {ac!r}")
    _check_layout(args, gpus, tp)
    card = get_gpu(gpu)
    s = seq_len or args.max_seq_len
    dp = gpus // tp
    resident, sampling = {}, {}
    states, training = _trained(args, gpus, tp, s, micro_batch, ac, lm_head=stage != "rm")
    name = {"sft": "policy (trained)", "rm": "reward model (trained)", "rs": "policy (trained)",
            "ppo": "policy (trained)"}[stage]
    resident[name + ": states"] = states
    if stage == "ppo":
        value_states, value_work = _trained(args, gpus, tp, s, micro_batch, ac, lm_head=False)
        resident["value model (trained): states"] = value_states
        training["value model activations"] = value_work["activations"]
        resident["reference policy (frozen, bf16)"] = _frozen(args, gpus, tp)
    if stage in ("rs", "ppo"):
        resident["helpfulness RM (frozen, bf16)"] = _frozen(args, gpus, tp)
        resident["safety RM (frozen, bf16)"] = _frozen(args, gpus, tp)
        per_rank = -(-rollout_batch // dp)
        sampling["gathered policy for generation (bf16)"] = 2 * args.num_params() / tp
        sampling[f"KV cache ({per_rank} sequences x {rollout_tokens or s} tokens)"] = \
            kv_cache_bytes(args, rollout_tokens or s, per_rank, tp)
    kept = sum(resident.values())
    peak = kept + max(sum(training.values()), sum(sampling.values()))
    fits = peak <= USABLE_FRACTION * card.memory_bytes
    notes = []
    if stage in ("rs", "ppo"):
        notes.append("sampling and training alternate: the gathered policy is freed before training, so the "
                     "peak is the larger phase on top of what every phase keeps")
    if not fits and suggest:
        notes += _layouts_that_fit(args, stage, model_name, gpus, gpu, tp, ac, s, micro_batch, rollout_batch,
                                   rollout_tokens)
    return StagePlan(stage, model_name, gpus, card.name, tp, ac, resident, training, sampling, peak,
                     card.memory_bytes, fits, notes)


def _layouts_that_fit(args, stage, model_name, gpus, gpu, tp, ac, seq_len, micro_batch, rollout_batch,
                      rollout_tokens) -> list[str]:
    for t in (1, 2, 4, 8):
        if t < tp or gpus % t or args.n_heads % t or args.kv_heads % t:
            continue
        for mode in AC_MODES[AC_MODES.index(ac) if t == tp else 0:]:
            p = plan_stage(args, stage, model_name=model_name, gpus=gpus, gpu=gpu, tp=t, ac=mode, seq_len=seq_len,
                           micro_batch=micro_batch, rollout_batch=rollout_batch, rollout_tokens=rollout_tokens,
                           suggest=False)
            if p.fits:
                return [f"to make it fit: --tp {t} --ac {mode} ({p.peak / GIB:.1f} GiB)"]
    return ["no tp <= 8 / checkpointing mode fits: use more GPUs, fewer rollouts per iteration or a bigger card"]


def describe_stage_plan(p: StagePlan) -> str:
    lines = [f"plan: {p.stage} of {p.model} on {p.gpus:,} x {p.gpu} (tp {p.tp} x dp {p.gpus // p.tp}), "
             f"activation checkpointing {p.ac}", "", "memory per GPU                                        GiB"]
    for title, part in (("kept in every phase", p.resident), ("training phase", p.training),
                        ("sampling phase", p.sampling)):
        if part:
            lines.append(f"  {title}")
            lines += [f"    {k:<50} {v / GIB:8.2f}" for k, v in part.items()]
    usable = USABLE_FRACTION * p.capacity
    lines.append(f"  {'peak':<52} {p.peak / GIB:8.2f}   of {usable / GIB:.1f} usable ({p.capacity / GIB:.0f} GiB "
                 f"card): {'fits' if p.fits else 'DOES NOT FIT'}")
    if p.notes:
        lines += ["", "notes"] + [f"  - {n}" for n in p.notes]
    return "\n".join(lines)
