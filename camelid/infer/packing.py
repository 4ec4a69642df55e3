"""The model's weights arranged for inference, as a module swap: `inference_model(model)`.

It returns a twin of the model that runs model.py's own forward, with every projection replaced by a
`PackedLinear`: on a CPU with oneDNN the matrices are pre-packed once (the layout `torch.compile`'s
freezing pass would choose; on the AMD EPYC of docs/PERFORMANCE.md it reads weights about 2.5x faster
than `F.linear` at batch 1, see `plain_matvec_is_faster` for hosts where it does not) and the
projections that read the same input are fused into one matmul (wq|wk|wv, w1|w3). Elsewhere the twin
shares the model's own weights (cast copies only when another dtype is asked for).

RLHF trains the policy between two sampling rounds, so the twin remembers which parameters it was
built from (address, in-place version counter, dtype, device) and is rebuilt when any of them change.
"""

from __future__ import annotations

import functools
import time
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from camelid.model import Transformer


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    if device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16):
        return False
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    except Exception:  # pragma: no cover - exotic builds
        return False


def pack_weight(w: torch.Tensor) -> torch.Tensor:
    # The batch-size hint 1 picks oneDNN's layout for few rows: in bf16 the reference config's matrices
    # ran 8-14% faster at batch 1 and 16 alone, 1-2% in a whole decode step (5% slower for a long
    # prefill); in fp32 it only slows batch 16 down. (Intel Xeon host, 1 thread.)
    return torch.ops.mkldnn._reorder_linear_weight(w, 1 if w.dtype == torch.bfloat16 else None)


@functools.cache
def plain_matvec_is_faster(dtype: torch.dtype, out_features: int, in_features: int) -> bool:
    """Whether `F.linear` (MKL's matrix-vector product) beats the packed weight for one row on this CPU.

    It depends on the host: on the AMD EPYC of docs/PERFORMANCE.md the packed weight read 2.5x faster; on
    an Intel Xeon with AMX, fp32 `F.linear` was about 30% faster at batch 1. So it is timed, once.
    """
    w = torch.randn(out_features, in_features, dtype=dtype)
    x, packed = torch.randn(1, 1, in_features, dtype=dtype), pack_weight(w)  # the shapes a decode step uses
    best = {"plain": float("inf"), "packed": float("inf")}
    for _ in range(5):  # interleaved, best of 5: other processes slow both alike
        for name, run in (("plain", lambda: F.linear(x, w)),
                          ("packed", lambda: torch.ops.mkldnn._linear_pointwise(x[0], packed, None, "none", [], ""))):
            t = time.perf_counter()
            for _ in range(4):
                run()
            best[name] = min(best[name], time.perf_counter() - t)
    return best["plain"] < 0.9 * best["packed"]


class PackedLinear(nn.Module):
    """x @ W.T for one or more weight matrices stacked along the output (their outputs side by side on the
    last dimension: model.py's fused slots read them so), pre-packed for oneDNN, plus the plain matrix
    where `F.linear` is faster for one row. These copies are plain attributes: not parameters, not in
    state_dict."""

    def __init__(self, *linears: nn.Linear, dtype: torch.dtype, plain_matvec: bool = False):
        super().__init__()
        w = torch.cat([lin.weight.detach().to(dtype) for lin in linears]).contiguous()
        self.packed = pack_weight(w)
        self.plain = w if plain_matvec else None

    def forward(self, x):
        if self.plain is not None and x.numel() == x.shape[-1]:  # one row
            y = F.linear(x, self.plain)
        else:  # oneDNN runs a 2-D input faster than the model's [B, T, dim] (15% at batch 1 with 2 threads)
            y = torch.ops.mkldnn._linear_pointwise(x.flatten(0, -2), self.packed, None, "none", [], "")
            y = y.view(*x.shape[:-1], -1)
        return y


def signature(model: nn.Module) -> tuple:
    """What identifies the current weights: an optimizer step bumps `_version`, `model.to()` the rest."""
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())


@torch.no_grad()
def build_inference_model(model: Transformer, dtype: torch.dtype | None = None, pack: bool | None = None) -> Transformer:
    """A twin of `model` for inference (see the module docstring). pack None: when the device allows it."""
    p = next(model.parameters())
    dtype = dtype or p.dtype
    pack = can_pack(p.device, dtype) if pack is None else pack
    if pack and not can_pack(p.device, dtype):
        raise ValueError(f"weight packing needs a CPU with oneDNN and fp32/bf16 weights, not {p.device}/{dtype}")
    with torch.device("meta"):
        twin = Transformer(model.args)
    twin.load_state_dict(model.state_dict(), assign=True)  # the model's own tensors, no copies
    if pack:
        args = model.args
        kw = dict(dtype=dtype, plain_matvec=plain_matvec_is_faster(dtype, args.hidden_dim, args.dim))
        for layer in twin.layers:
            a, f = layer.attention, layer.feed_forward
            a.wqkv, a.wo = PackedLinear(a.wq, a.wk, a.wv, **kw), PackedLinear(a.wo, **kw)
            f.w13, f.w2 = PackedLinear(f.w1, f.w3, **kw), PackedLinear(f.w2, **kw)
            a.wq = a.wk = a.wv = f.w1 = f.w3 = None
        twin.output = PackedLinear(twin.output, **kw)
    twin.to(dtype).requires_grad_(False)  # what is left: embedding and norms (no copy when the dtype is the same)
    twin.pack = pack
    return twin.eval()


_twins: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def inference_model(model: Transformer, dtype: torch.dtype | None = None, pack: bool | None = None) -> Transformer:
    """The model's inference twin, built once and reused while the model's parameters stay unchanged."""
    per_model = _twins.setdefault(model, {})
    p = next(model.parameters())
    key = (dtype or p.dtype, p.device, pack)  # dtype None follows the model, even after model.to(...)
    sig = signature(model)
    built = per_model.get(key)
    if built is None or built[0] != sig:
        per_model[key] = built = (sig, build_inference_model(model, key[0], pack))
    return built[1]
