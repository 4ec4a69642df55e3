"""The weights of model.py's projections laid out for inference: the modules infer/packing.py puts in a twin.

Each computes exactly what the `nn.Linear`s it replaces compute:

* `PackedLinear`: x @ W.T for one or more matrices stacked along the output (wq|wk|wv, w1|w3 side by side:
  the model's `wqkv` and `w13` slots), the weight pre-packed once for oneDNN. On hosts where MKL's one-row
  product beats the packed weight (timed once per shape and dtype, `plain_matvec_is_faster`), a one-row
  input takes the plain matrix.
* `FusedLinear`: the same stacking over plain weights, for a compiler (infer/compiled.py), which freezes
  and packs them itself and fuses the elementwise rest.

Running the residual sums and SwiGLU as oneDNN post-ops (as the engine before the one forward did) was
tried and measured no faster in a whole decode step (0.98-1.03x, fp32 and bf16, batch 1 and 16), so the
model's own elementwise code runs.
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


class PackedLinear(nn.Module):
    """x @ W.T for one or more `nn.Linear`s stacked along the output (their outputs side by side on the
    last dimension), pre-packed for oneDNN, plus the plain matrix where `F.linear` is faster for one row.
    The copies are plain attributes: not parameters, not in state_dict."""

    def __init__(self, *linears: nn.Linear, dtype: torch.dtype, plain_matvec: bool | None = None):
        super().__init__()
        w = _weights(linears, dtype)
        self.packed = pack_weight(w)
        self.plain = w if (plain_matvec_is_faster(w.dtype, *w.shape) if plain_matvec is None else plain_matvec) \
            else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plain is not None and x.numel() == x.shape[-1]:  # one row
            return F.linear(x, self.plain)
        # oneDNN runs a 2-D input faster than the model's [B, T, dim] (15% at batch 1 with 2 threads)
        y = _mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), self.packed, None, "none", [], "")
        return y.view(*x.shape[:-1], -1)


class FusedLinear(nn.Linear):
    """One `nn.Linear` for several stacked along the output (wq|wk|wv): plain weights, one matmul."""

    def __init__(self, *linears: nn.Linear, dtype: torch.dtype):
        w = _weights(linears, dtype)
        super().__init__(w.shape[1], w.shape[0], bias=False, device="meta")
        self.weight = nn.Parameter(w, requires_grad=False)
