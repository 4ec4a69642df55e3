"""A compiled decode step: `torch.compile` of model.py's own forward for one new token per row.

In eager mode a decode step is mostly fixed costs: a Python module call per projection and norm, and
per kernel a dispatch (a oneDNN call costs ~15 us however small the matrix, a bf16 one ~17 us). Compiled,
the step is a few dozen C++ kernels called from C++ (inductor's `cpp_wrapper`), with the norms,
rotary, SwiGLU and residual sums fused into them, and the weights frozen into the graph, where inductor
packs them for its own matrix kernels (`max_autotune` picks them for bf16, whose oneDNN one-row
kernels are slow). That is what gpt-fast does on GPUs; here it is what gets a CPU near llama.cpp
(docs/PERFORMANCE.md).

What makes the forward traceable is the cache: `SlotCache` views the engine's `KVCache` tensors, and
each row's position is a tensor, not a Python int (a compiled graph would bake ints in): the new key of
row b goes to slot positions[b] by index, and the key mask `slot <= position` comes from the same
tensor. The slot count (up to the longest row) is a dynamic dimension, so a growing sequence does not
recompile; another number of rows does, once (then that dimension is dynamic too).

A step belongs to one set of weights (they are frozen into it), so it is compiled for an inference twin,
which is rebuilt when the weights change. Compiling takes 20-60 s on a 2-core CPU: worth it for serving,
chat and long generations with fixed weights (`Engine(compile=True)`, `--compile`), not for RLHF
rollouts whose weights change every iteration.
"""

from __future__ import annotations

import torch

from camelid.model import KVCache, Transformer


class SlotCache:
    """The cache interface of model.py (`extend`, `update`, `attention_mask`) over a decode step's views of
    the KV tensors [rows, n_kv_heads, slots, head_dim], with one new token per row at `positions` [rows]."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], positions: torch.Tensor):
        self.k, self.v, self.positions = k, v, positions
        self.rows = torch.arange(positions.shape[0], device=positions.device)

    def extend(self, T: int) -> torch.Tensor:
        assert T == 1, "a SlotCache takes one new token per row"
        return self.positions

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ck, cv = self.k[layer], self.v[layer]
        ck[self.rows, :, self.positions] = k[:, :, 0]  # row b's key to its own slot: [rows, n_kv, head_dim]
        cv[self.rows, :, self.positions] = v[:, :, 0]
        return ck, cv

    def attention_mask(self, T, start, key_mask=None, segment_ids=None, device=None) -> torch.Tensor:
        slots = self.k[0].shape[2]
        return (torch.arange(slots, device=device) <= start[:, None]).view(-1, 1, 1, slots)


def _step(model: Transformer, tokens: torch.Tensor, positions: torch.Tensor, k: list, v: list) -> torch.Tensor:
    n = tokens.shape[0]
    return model(tokens.view(n, 1), cache=SlotCache(k, v, positions)).view(n, -1).float()


def compile_settings(weight: torch.Tensor) -> tuple[str | None, dict]:
    """torch.compile's mode and the inductor settings the step compiles under (freezing is read from inductor's
    config when a graph compiles, so it is set around each call rather than passed as an option)."""
    on_cpu = weight.device.type == "cpu"
    # bf16 on CPU: inductor's own GEMM templates (max-autotune) beat oneDNN's one-row kernels by ~2x
    # (reference config); in fp32 the default choice was ~10% faster than autotuning and compiles in half the time
    mode = "max-autotune-no-cudagraphs" if on_cpu and weight.dtype == torch.bfloat16 else None
    return mode, {"freezing": True, "cpp_wrapper": on_cpu}



class CompiledDecoder:
    """decoder(cache, tokens [n]) -> logits [n, vocab] fp32 for the first n rows of `cache`, which it extends
    by one slot per row (like `engine.decode`, compiled)."""

    def __init__(self, twin: Transformer):
        self.twin = twin
        import torch._inductor.config  # noqa: F401 (imported here: the engine without compile never needs it)

        mode, self.settings = compile_settings(twin.tok_embeddings.weight)
        self.step = torch.compile(_step, mode=mode, fullgraph=True)
        self.shapes_seen: set[tuple] = set()

    @torch.inference_mode()
    def __call__(self, cache: KVCache, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[0]
        lengths = cache.lengths[:n]
        end = max(lengths) + 1
        if end > cache.slots:
            raise ValueError(f"KV cache is full: {end} positions needed, {cache.slots} allocated")
        k = [t[:n, :, :end] for t in cache.k]
        v = [t[:n, :, :end] for t in cache.v]
        if not self.shapes_seen:  # the slot count grows every step: compile it as a variable from the start
            for t in k + v:
                torch._dynamo.mark_dynamic(t, 2)
        positions = torch.tensor(lengths, device=tokens.device)
        shapes = (n, *cache.k[0].shape)  # what a graph is specialised on: rows, and the cache's layout
        if shapes in self.shapes_seen:  # compiled already: no need for the compile settings (~15 us a step)
            logits = self.step(self.twin, tokens, positions, k, v)
        else:
            with torch._inductor.config.patch(self.settings):
                logits = self.step(self.twin, tokens, positions, k, v)
            self.shapes_seen.add(shapes)
        cache.lengths[:n] = [x + 1 for x in lengths]
        return logits


def compiled_decoder(twin: Transformer) -> CompiledDecoder:
    """The twin's compiled decode step, made once per twin (every Engine over the same weights shares it)."""
    if getattr(twin, "compiled_decoder", None) is None:
        twin.compiled_decoder = CompiledDecoder(twin)
    return twin.compiled_decoder
