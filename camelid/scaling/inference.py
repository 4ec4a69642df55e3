"""Inference-aware sizing: for a target loss and a lifetime of served tokens, the cheapest model overall.

Training costs 6·N·D FLOPs; serving S tokens costs about 2·N·S more (a forward pass per token; the
KV-cache attention FLOPs are ignored, like the attention FLOPs in 6ND). For a target loss L*, every
N above the law's floor reaches L* after D(N) = (B / (L* - E - A/N^alpha))^(1/beta) tokens, and

    total(N) = 6·N·D(N) + 2·N·S

is minimised where its derivative vanishes (Sardana & Frankle 2023, "Beyond Chinchilla-Optimal"):

    6·D·(1 - alpha·A·N^-alpha / (beta·B·D^-beta)) + 2·S = 0.

At S = 0 that is the compute-optimal (Chinchilla) point; as S grows the optimum moves to smaller
models trained on more tokens. Read backwards, a model (N, D) is the optimum at its own loss for

    S(N, D) = 3·D·(alpha·A·N^-alpha / (beta·B·D^-beta) - 1)

served tokens: this is LLaMA's argument for training a 7B model on 1-2T tokens (LLaMA-1 §1).
"""

from __future__ import annotations

import math

from camelid.errors import CamelidError
from camelid.scaling.laws import (FLOPS_PER_PARAM_TOKEN, INFERENCE_FLOPS_PER_PARAM_TOKEN, ParametricLaw)

DEFAULT_SERVED = (0.0, 1e11, 1e12, 1e13, 1e14)


def total_flops(law: ParametricLaw, n_params: float, target: float, served: float) -> float:
    d = law.tokens_for_loss(n_params, target)
    return FLOPS_PER_PARAM_TOKEN * n_params * d + INFERENCE_FLOPS_PER_PARAM_TOKEN * n_params * served


def _slope(law: ParametricLaw, n: float, target: float, served: float) -> float:
    """d total / dN, divided by 2 (sign is what matters)."""
    rest = target - law.E - law.A / n ** law.alpha
    d = (law.B / rest) ** (1.0 / law.beta)
    ratio = law.alpha * law.A / n ** law.alpha / (law.beta * rest)
    return 3.0 * d * (1.0 - ratio) + served


def inference_optimal(law: ParametricLaw, target: float, served: float) -> dict:
    """The (N, D) reaching loss `target` that minimises 6ND + 2N·served."""
    if served < 0:
        raise CamelidError("served tokens must be non-negative")
    excess = target - law.E
    if excess <= 0:
        raise CamelidError(f"target loss {target:.4f} is not above the law's irreducible loss E = {law.E:.4f}")
    n_floor = (law.A / excess) ** (1.0 / law.alpha)  # below this, no amount of data reaches the target
    # the slope runs from -inf just above the floor to 3·D(inf) + served > 0: bisect on log N
    lo, hi = math.log(n_floor) + 1e-12, math.log(n_floor) + 60.0
    for _ in range(300):
        mid = 0.5 * (lo + hi)
        if _slope(law, math.exp(mid), target, served) < 0:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13:
            break
    n = math.exp(0.5 * (lo + hi))
    d = law.tokens_for_loss(n, target)
    train = FLOPS_PER_PARAM_TOKEN * n * d
    infer = INFERENCE_FLOPS_PER_PARAM_TOKEN * n * served
    return {"served": served, "params": n, "tokens": d, "tokens_per_param": d / n, "train_flops": train,
            "inference_flops": infer, "total_flops": train + infer}


def breakeven_served(law: ParametricLaw, n_params: float, n_tokens: float) -> float:
    """Lifetime served tokens for which (N, D) is the inference-aware optimum at its own loss.

    Negative: the model is larger than compute-optimal for its loss, which no serving demand justifies.
    """
    ratio = (law.alpha * law.A / n_params ** law.alpha) / (law.beta * law.B / n_tokens ** law.beta)
    return 3.0 * n_tokens * (ratio - 1.0)


def inference_table(law: ParametricLaw, target: float, served_list=DEFAULT_SERVED,
                    reference: tuple[float, float] | None = None) -> dict:
    """Rows of inference_optimal for each served count, each compared with the compute-optimal
    (Chinchilla) model at the same loss and, if given, a reference model (N, D)."""
    chin_n, chin_d = law.optimal_for_loss(target)
    rows = []
    for s in served_list:
        r = inference_optimal(law, target, s)
        chin_total = FLOPS_PER_PARAM_TOKEN * chin_n * chin_d + INFERENCE_FLOPS_PER_PARAM_TOKEN * chin_n * s
        r["compute_optimal_total_flops"] = chin_total
        r["saving_vs_compute_optimal"] = 1.0 - r["total_flops"] / chin_total
        if reference is not None:
            ref_n, ref_d = reference
            ref_total = FLOPS_PER_PARAM_TOKEN * ref_n * ref_d + INFERENCE_FLOPS_PER_PARAM_TOKEN * ref_n * s
            r["reference_total_flops"] = ref_total
            r["reference_excess"] = ref_total / r["total_flops"] - 1.0
        rows.append(r)
    out = {"law": law.name, "law_params": law.params(), "target_loss": target,
           "compute_optimal": {"params": chin_n, "tokens": chin_d, "tokens_per_param": chin_d / chin_n,
                               "train_flops": FLOPS_PER_PARAM_TOKEN * chin_n * chin_d},
           "rows": rows}
    if reference is not None:
        out["reference"] = {"params": reference[0], "tokens": reference[1],
                            "tokens_per_param": reference[1] / reference[0],
                            "loss": float(law.loss(*reference)),
                            "breakeven_served": breakeven_served(law, *reference)}
    return out
