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

import weakref

import torch
from torch import nn

from camelid.kernels import FusedLinear, PackedLinear, can_pack
from camelid.model import Transformer


def signature(model: nn.Module) -> tuple:
    """What identifies the current weights: an optimizer step bumps `_version`, `model.to()` the rest."""
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())


@torch.no_grad()
def build_inference_model(model: Transformer, dtype: torch.dtype | None = None, pack: bool | None = None,
                          fuse: bool = False) -> Transformer:
    """A twin of `model` for inference (see the module docstring). pack None: when the device allows it.
    fuse (without packing): the same fused slots over plain weights, the twin a compiler wants (it packs
    frozen weights itself: infer/compiled.py)."""
    p = next(model.parameters())
    dtype = dtype or p.dtype
    pack = (can_pack(p.device, dtype) and not fuse) if pack is None else pack
    if pack and fuse:
        raise ValueError("fuse is the unpacked layout: pass pack=False")
    if pack and not can_pack(p.device, dtype):
        raise ValueError(f"weight packing needs a CPU with oneDNN and fp32/bf16 weights, not {p.device}/{dtype}")
    with torch.device("meta"):
        twin = Transformer(model.args)
    twin.load_state_dict(model.state_dict(), assign=True)  # the model's own tensors, no copies
    if pack:
        kw = dict(dtype=dtype)  # each projection times its own one-row kernels (kernels.plain_matvec_is_faster)
        for layer in twin.layers:
            a, f = layer.attention, layer.feed_forward
            a.wqkv, a.wo = PackedLinear(a.wq, a.wk, a.wv, **kw), PackedLinear(a.wo, **kw)
            f.w13, f.w2 = PackedLinear(f.w1, f.w3, **kw), PackedLinear(f.w2, **kw)
            a.wq = a.wk = a.wv = f.w1 = f.w3 = None
        twin.output = PackedLinear(twin.output, **kw)
    elif fuse:
        for layer in twin.layers:
            a, f = layer.attention, layer.feed_forward
            a.wqkv, f.w13 = FusedLinear(a.wq, a.wk, a.wv, dtype=dtype), FusedLinear(f.w1, f.w3, dtype=dtype)
            a.wq = a.wk = a.wv = f.w1 = f.w3 = None
    twin.to(dtype).requires_grad_(False)  # what is left: embedding and norms (no copy when the dtype is the same)
    twin.pack, twin.fuse = pack, fuse
    return twin.eval()


_twins: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def inference_model(model: Transformer, dtype: torch.dtype | None = None, pack: bool | None = None,
                    fuse: bool = False) -> Transformer:
    """The model's inference twin, built once and reused while the model's parameters stay unchanged."""
    per_model = _twins.setdefault(model, {})
    p = next(model.parameters())
    key = (dtype or p.dtype, p.device, pack, fuse)  # dtype None follows the model, even after model.to(...)
    sig = signature(model)
    built = per_model.get(key)
    if built is None or built[0] != sig:
        per_model[key] = built = (sig, build_inference_model(model, key[0], pack, fuse))
    return built[1]
