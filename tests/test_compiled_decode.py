"""The compiled decode step (infer/compiled.py): its cache and rotary run eagerly here and must give the
eager engine's logits; compiling itself (tens of seconds) is a slow test, its speed in bench/decode.py."""

import pytest
import torch

from camelid.infer.compiled import SlotCache
from camelid.infer.engine import decode, generate, prefill
from camelid.infer.packing import build_inference_model
from camelid.model import KVCache, apply_rotary, rotary_freqs
from tests.test_infer import prompts_for, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cos_sin_rotary_is_the_complex_one(monkeypatch):
    """The (cos, sin) form a compiled graph uses rotates exactly as Meta's complex multiply."""
    x = torch.randn(2, 5, 3, 8, generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    complex_freqs = rotary_freqs(positions, 8, 10000.0)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    pairs = rotary_freqs(positions, 8, 10000.0)
    assert not pairs.is_complex() and pairs.shape == (*complex_freqs.shape, 2)
    torch.testing.assert_close(apply_rotary(x, pairs), apply_rotary(x, complex_freqs), rtol=1e-6, atol=1e-6)


def test_slot_cache_step_gives_the_engines_logits():
    """One token per row through a SlotCache (positions as a tensor, a key mask over every slot) writes the
    same keys and gives the same logits as the engine's cache, for rows of different lengths."""
    model = tiny_model()
    twin = build_inference_model(model, pack=False, fuse=True)
    seqs = prompts_for(model, [5, 9, 3])
    want_cache, got_cache = (KVCache(model.args, 3, 16) for _ in range(2))
    for cache in (want_cache, got_cache):
        for row, seq in enumerate(seqs):
            prefill(twin, cache, torch.tensor([seq]), row, [len(seq)])
    tokens = torch.tensor([11, 12, 13])
    want = decode(twin, want_cache, tokens)
    lengths = torch.tensor(got_cache.lengths)
    end = max(got_cache.lengths) + 1
    view = SlotCache([k[:, :, :end] for k in got_cache.k], [v[:, :, :end] for v in got_cache.v], lengths)
    with torch.no_grad():
        got = twin(tokens.view(3, 1), cache=view).view(3, -1).float()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for k_want, k_got in zip(want_cache.k + want_cache.v, got_cache.k + got_cache.v):
        for row, n in enumerate(want_cache.lengths):
            torch.testing.assert_close(k_got[row, :, :n], k_want[row, :, :n])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_decode_attention_is_sdpas(monkeypatch, dtype):
    """The form of decode attention that a compiled step traces (sums of products) equals SDPA's, with grouped
    query heads and a key mask that hides a different tail in each row."""
    from camelid import model as model_py

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=g).to(dtype) for shape in ((3, 8, 1, 16), (3, 2, 7, 16), (3, 2, 7, 16)))
    mask = (torch.arange(7) <= torch.tensor([6, 2, 4])[:, None]).view(3, 1, 1, 7)
    want = model_py.decode_attention(q, k, v, mask)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    got = model_py.decode_attention(q, k, v, mask)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(got, want, **tol)
    assert got.dtype == dtype and got.shape == (3, 8, 1, 16)


def test_fused_twin_gives_the_models_logits():
    model = tiny_model()
    x = torch.tensor(prompts_for(model, [7, 7]))
    twin = build_inference_model(model, pack=False, fuse=True)
    assert twin.layers[0].attention.wqkv is not None and twin.layers[0].feed_forward.w13 is not None
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_engine_decodes_the_eager_tokens(dtype):
    """Greedy tokens of the compiled step equal the eager engine's, rows of different lengths, and again
    after the number of rows changes (a recompile). In bf16 the two round differently (fused kernels), so a
    near-tie may flip a token and the rest of the row with it: the first tokens must agree."""
    model = tiny_model().to(dtype)
    prompts = prompts_for(model, [4, 9, 6])
    agree = 12 if dtype == torch.float32 else 3
    want = generate(model, prompts, 12, stop_ids=None)
    got = generate(model, prompts, 12, stop_ids=None, compile=True)
    assert [r[:agree] for r in got] == [r[:agree] for r in want]
    assert generate(model, prompts[:1], 12, stop_ids=None, compile=True)[0][:agree] == want[0][:agree]
