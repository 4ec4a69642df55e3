"""Megatron-style tensor parallelism with sequence parallelism (torchtitan's `apply_tp`).

wq/wk/wv/w1/w3 are split by output features (column-wise), wo/w2 by input features (row-wise), so
each block needs one all-gather before and one reduce-scatter after attention and the FFN. Between
them the residual stream and the norms are sharded along the sequence (sequence parallel). The
embedding is split by vocabulary rows, the output head by columns.
"""

from __future__ import annotations

from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, RowwiseParallel,
                                               SequenceParallel, parallelize_module)

from camelid.errors import CamelidError


def apply_tp(model, tp_mesh, loss_parallel: bool = False):
    tp = tp_mesh.size()
    a = model.args
    for what, n in (("n_heads", a.n_heads), ("n_kv_heads", a.kv_heads), ("ffn hidden", a.hidden_dim)):
        if n % tp:
            raise CamelidError(f"tensor parallel degree {tp} does not divide the model's {what} ({n})")
    parallelize_module(model, tp_mesh, {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "norm": SequenceParallel(),
        "output": ColwiseParallel(input_layouts=Shard(1), output_layouts=Shard(-1) if loss_parallel else Replicate(),
                                  use_local_output=not loss_parallel),
    })
    # Attention.forward(x, freqs, mask, cache, layer) / FeedForward.forward(x): only x is a DTensor.
    rest = (None,) * 4
    for block in model.layers:
        parallelize_module(block, tp_mesh, {
            "attention_norm": SequenceParallel(),
            "attention": PrepareModuleInput(input_layouts=(Shard(1), *rest), desired_input_layouts=(Replicate(), *rest)),
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
            "ffn_norm": SequenceParallel(),
            "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
            "feed_forward.w3": ColwiseParallel(),
        })
    return model
