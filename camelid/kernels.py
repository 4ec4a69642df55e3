"""Fused CPU kernels for the model's inference slots: the projections of model.py, pre-packed for oneDNN.

model.py has three places where inference may put a faster module than training's `nn.Linear`s
(`Attention.wqkv`, `FeedForward.w13`, and any projection whose output is added to the residual stream);
infer/packing.py builds a twin of the model with these in them. Each computes exactly what the
`nn.Linear`s it replaces compute, in fewer kernels:

* `PackedLinear`: x @ W.T for one or more matrices stacked along the output (wq|wk|wv side by side), with
  the weight pre-packed once in the layout `torch.compile`'s freezing pass would choose; `adds_residual`:
  the residual sum of wo and w2 runs inside the matmul (a oneDNN post-op).
* `PackedSwiGLU`: silu(x @ W1.T) * (x @ W3.T), the SiLU and the product as post-ops of the two matmuls.
* `FusedLinear`, `FusedSwiGLU`: the same fusions over plain weights, for a compiler (infer/compiled.py):
  one matmul for wq|wk|wv and one for w1|w3, the rest left for it to fuse.

A decode step is mostly per-kernel overhead (docs/PERFORMANCE.md), so each kernel saved counts. On hosts
where MKL's one-row product beats the packed weight for fp32 (timed once, `plain_matvec_is_faster`), a
one-row input takes the plain path.
"""

from __future__ import annotations

import functools
import time

import torch
import torch.nn.functional as F
from torch import nn

_mkldnn = torch.ops.mkldnn


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    if device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16):
        return False
    try:
        return torch.backends.mkldnn.is_available() and hasattr(_mkldnn, "_linear_pointwise") \
            and hasattr(_mkldnn, "_reorder_linear_weight")
    except Exception:  # pragma: no cover - exotic builds
        return False


def pack_weight(w: torch.Tensor) -> torch.Tensor:
    # The batch-size hint 1 picks oneDNN's layout for few rows: in bf16 the reference config's matrices
    # ran 8-14% faster at batch 1 and 16 alone, 1-2% in a whole decode step (5% slower for a long
    # prefill); in fp32 it only slows batch 16 down. (Intel Xeon host, 1 thread.)
    return _mkldnn._reorder_linear_weight(w, 1 if w.dtype == torch.bfloat16 else None)


@functools.cache
def plain_matvec_is_faster(dtype: torch.dtype, out_features: int, in_features: int) -> bool:
    """Whether `F.linear` (MKL's matrix-vector product) beats the packed weight for one row on this CPU.

    It depends on the host and the matrix: on the AMD EPYC of docs/PERFORMANCE.md the packed weight read
    2.5x faster; on an Intel Xeon with AMX, fp32 `F.linear` was about 30% faster at batch 1, and a oneDNN
    call costs about 15 us however small the matrix (MKL's: 3 us), so small matrices go plain in both
    dtypes. So it is timed, once per shape and dtype.
    """
    w = torch.randn(out_features, in_features, dtype=dtype)
    x, packed = torch.randn(1, in_features, dtype=dtype), pack_weight(w)  # the shapes a decode step uses
    runs = {"plain": lambda: F.linear(x, w), "packed": lambda: _mkldnn._linear_pointwise(x, packed, None, "none", [], "")}
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(2):  # the first calls set kernels up
        for run in runs.values():
            run()
    for _ in range(7):  # interleaved, best of 7: other processes slow both alike
        for name, run in runs.items():
            t = time.perf_counter()
            for _ in range(8):
                run()
            best[name] = min(best[name], time.perf_counter() - t)
    return best["plain"] < 0.9 * best["packed"]


def _weights(linears, dtype: torch.dtype) -> torch.Tensor:
    return torch.cat([lin.weight.detach().to(dtype) for lin in linears]).contiguous()


def _choose_plain(plain_matvec: bool | None, w: torch.Tensor) -> bool:
    return plain_matvec_is_faster(w.dtype, *w.shape) if plain_matvec is None else plain_matvec


def _one_row(x: torch.Tensor) -> bool:
    return x.numel() == x.shape[-1]


class PackedLinear(nn.Module):
    """x @ W.T for one or more `nn.Linear`s stacked along the output (their outputs side by side on the
    last dimension), pre-packed for oneDNN, plus the plain matrix where `F.linear` is faster for one row.
    forward(x, residual) adds the residual inside the matmul. The copies are plain attributes: not
    parameters, not in state_dict."""

    adds_residual = True

    def __init__(self, *linears: nn.Linear, dtype: torch.dtype, plain_matvec: bool | None = None):
        super().__init__()
        w = _weights(linears, dtype)
        self.packed = pack_weight(w)
        self.plain = w if _choose_plain(plain_matvec, w) else None

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.plain is not None and _one_row(x):
            y = F.linear(x, self.plain)
            return y if residual is None else residual + y
        # oneDNN runs a 2-D input faster than the model's [B, T, dim] (15% at batch 1 with 2 threads)
        x2 = x.reshape(-1, x.shape[-1])
        if residual is None:
            y = _mkldnn._linear_pointwise(x2, self.packed, None, "none", [], "")
        else:
            y = _mkldnn._linear_pointwise.binary(x2, residual.reshape(x2.shape[0], -1), self.packed, None, "add")
        return y.view(*x.shape[:-1], -1)


class PackedSwiGLU(nn.Module):
    """silu(x @ W1.T) * (x @ W3.T), for `FeedForward.w13`: SiLU is a post-op of the first matmul and the
    product one of the second, so the gate and up activations are never written out separately."""

    def __init__(self, w1: nn.Linear, w3: nn.Linear, dtype: torch.dtype, plain_matvec: bool | None = None):
        super().__init__()
        w1, w3 = _weights([w1], dtype), _weights([w3], dtype)
        self.packed1, self.packed3 = pack_weight(w1), pack_weight(w3)
        self.plain = (w1, w3) if _choose_plain(plain_matvec, w1) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plain is not None and _one_row(x):
            return F.silu(F.linear(x, self.plain[0])) * F.linear(x, self.plain[1])
        x2 = x.reshape(-1, x.shape[-1])
        gate = _mkldnn._linear_pointwise(x2, self.packed1, None, "swish", [], "")
        return _mkldnn._linear_pointwise.binary(x2, gate, self.packed3, None, "mul").view(*x.shape[:-1], -1)


class FusedLinear(nn.Linear):
    """One `nn.Linear` for several stacked along the output (wq|wk|wv): plain weights, one matmul."""

    def __init__(self, *linears: nn.Linear, dtype: torch.dtype):
        w = _weights(linears, dtype)
        super().__init__(w.shape[1], w.shape[0], bias=False, device="meta")
        self.weight = nn.Parameter(w, requires_grad=False)


class FusedSwiGLU(nn.Module):
    """silu(x @ W1.T) * (x @ W3.T) as one matmul over [W1 | W3] and the elementwise rest."""

    def __init__(self, w1: nn.Linear, w3: nn.Linear, dtype: torch.dtype):
        super().__init__()
        self.w13 = FusedLinear(w1, w3, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return F.silu(gate) * up
