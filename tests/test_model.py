"""The Transformer itself: parity with transformers' Llama, KV-cache decoding, padding, presets."""

import pytest
import torch

from camelid.checkpoint import to_hf_state_dict
import camelid.model as model_module
from camelid.model import PRESETS, KVCache, ModelArgs, Transformer, math_attention, preset

# GQA, and an FFN size that Meta's rounding rule would never produce.
SMALL = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, ffn_hidden_dim=100, norm_eps=1e-5,
             max_seq_len=64, rope_theta=10000.0)


def tiny_model(seed=0, std=None, **kw) -> Transformer:
    """A random model with non-trivial norm weights; std: a larger init gives peaked logits."""
    torch.manual_seed(seed)
    m = Transformer(ModelArgs(**{**SMALL, **kw}))
    if std is not None:
        m.init_weights(std=std, seed=seed)
    with torch.no_grad():  # non-trivial norm weights so a misnamed norm would show
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return m.eval()


def hf_twin(model: Transformer):
    import transformers
    a = model.args
    cfg = transformers.LlamaConfig(
        hidden_size=a.dim, intermediate_size=a.hidden_dim, num_hidden_layers=a.n_layers,
        num_attention_heads=a.n_heads, num_key_value_heads=a.kv_heads, vocab_size=a.vocab_size,
        rms_norm_eps=a.norm_eps, rope_theta=a.rope_theta, max_position_embeddings=a.max_seq_len,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0, attn_implementation="eager")
    hf = transformers.LlamaForCausalLM(cfg).eval()
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model.state_dict(), a), strict=False)
    assert not [k for k in missing if "rotary" not in k] and not unexpected
    return hf


def test_logits_match_transformers():
    model = tiny_model()
    hf = hf_twin(model)
    x = torch.randint(0, SMALL["vocab_size"], (3, 17))
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    assert (ours - theirs).abs().max() <= 1e-4


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_math_attention_equals_sdpa(kv_heads):
    torch.manual_seed(0)
    q = torch.randn(3, 4, 19, 8, dtype=torch.float64)
    k, v = torch.randn(2, 3, kv_heads, 19, 8, dtype=torch.float64)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert (math_attention(q, k, v) - want).abs().max() <= 1e-12


@pytest.mark.parametrize("kv_heads", [4, 1])
def test_masked_math_attention_equals_sdpa(kv_heads):
    """With padding and packed samples (the mask `build_attention_mask` makes): the same outputs and gradients
    as SDPA given the mask."""
    torch.manual_seed(0)
    q = torch.randn(3, 4, 19, 8, dtype=torch.float64, requires_grad=True)
    k, v = torch.randn(2, 3, kv_heads, 19, 8, dtype=torch.float64, requires_grad=True).unbind(0)
    key_mask = torch.arange(19) < torch.tensor([19, 7, 12])[:, None]  # rows of 19, 7 and 12 real tokens
    segments = torch.tensor([0] * 5 + [1] * 9 + [2] * 5).expand(3, 19)
    mask = model_module.build_attention_mask(19, 0, key_mask, segments)
    grad = torch.randn(3, 4, 19, 8, dtype=torch.float64)
    results = []
    for attend in (lambda: math_attention(q, k, v, mask),
                   lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)):
        out = attend()
        results.append((out, *torch.autograd.grad(out, (q, k, v), grad)))
    for ours, want in zip(*results):
        assert (ours - want).abs().max() <= 1e-12


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_blockwise_attention_equals_sdpa(kv_heads):
    """Queries in blocks (the last one short) against the keys up to each block's end: the same outputs
    and gradients as one causal call."""
    torch.manual_seed(0)
    q = torch.randn(3, 4, 19, 8, dtype=torch.float64, requires_grad=True)
    k, v = torch.randn(2, 3, kv_heads, 19, 8, dtype=torch.float64, requires_grad=True).unbind(0)
    grad = torch.randn(3, 4, 19, 8, dtype=torch.float64)
    results = []
    for attend in (lambda: model_module.blockwise_causal_attention(q, k, v, block=5),
                   lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)):
        out = attend()
        results.append((out, *torch.autograd.grad(out, (q, k, v), grad)))
    for ours, want in zip(*results):
        assert (ours - want).abs().max() <= 1e-12


@pytest.mark.parametrize("path,dtype,tol", [("math", torch.bfloat16, 0.05), ("blocks", torch.bfloat16, 0.05),
                                            ("blocks", torch.float32, 1e-5)])
def test_cpu_attention_paths_match_flash(monkeypatch, path, dtype, tol):
    """The CPU training paths (plain matmuls in bf16, query blocks) against SDPA's flash kernel in the
    whole model: same logits and gradients up to rounding."""
    model = tiny_model()
    x = torch.randint(0, SMALL["vocab_size"], (2, 33))
    results = {}
    monkeypatch.setattr(model_module, "CAUSAL_QUERY_BLOCK", 8)  # several blocks in 33 tokens
    for use in (path, "flash"):
        monkeypatch.setattr(model_module, "causal_attention_path", lambda q, use=use: use)
        model.zero_grad()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            logits = model(x).float()
        logits.logsumexp(-1).mean().backward()
        results[use] = logits.detach(), model.layers[0].attention.wq.weight.grad.clone()
    (lm, gm), (lf, gf) = results[path], results["flash"]
    assert (lm - lf).abs().max() <= tol * lf.abs().max()
    assert (gm - gf).norm() <= tol * gf.norm()


def test_masked_math_path_matches_flash_in_the_model(monkeypatch):
    """Padded rows in bf16 with gradients (reward-model and PPO training): plain matmuls against SDPA's flash
    kernel in the whole model, same outputs and gradients up to bf16 rounding."""
    model = tiny_model()
    x = torch.randint(0, SMALL["vocab_size"], (3, 21))
    mask = torch.arange(21) < torch.tensor([21, 9, 14])[:, None]
    results = {}
    for use in ("math", "flash"):
        monkeypatch.setattr(model_module, "masked_attention_path", lambda q, k, use=use: use)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x, mask=mask).float()
        logits[mask].logsumexp(-1).mean().backward()
        results[use] = logits.detach()[mask], model.layers[0].attention.wq.weight.grad.clone()
    (lm, gm), (lf, gf) = results["math"], results["flash"]
    assert (lm - lf).abs().max() <= 0.05 * lf.abs().max()
    assert (gm - gf).norm() <= 0.05 * gf.norm()


def test_masked_attention_takes_plain_matmuls_only_where_gradients_flow_on_cpu_in_bf16():
    path = model_module.masked_attention_path
    q = torch.zeros(2, 4, 16, 8, dtype=torch.bfloat16, requires_grad=True)
    assert path(q, q) == "math"
    with torch.no_grad():
        assert path(q, q) == "flash"  # inference: the kernel's forward is the faster one
    assert path(q.detach(), q) == "flash"
    assert path(q.float(), q) == "flash"
    assert path(q, q[:, :, :8]) == "flash"  # a cached prefix: keys and queries not aligned
    assert path(q[:, :, :1], q[:, :, :1]) == "flash"  # one query: decoding has its own path
    long = torch.zeros(1, 1, model_module.CPU_ATTENTION_MAX_LEN + 1, 4, dtype=torch.bfloat16, requires_grad=True)
    assert path(long, long) == "flash"


def test_causal_attention_path_choice():
    block, longest = model_module.CAUSAL_QUERY_BLOCK, model_module.CPU_ATTENTION_MAX_LEN
    path = model_module.causal_attention_path
    assert path(torch.zeros(1, 1, block, 4)) == "flash"  # one block: nothing to skip
    assert path(torch.zeros(1, 1, longest, 4)) == "blocks"
    assert path(torch.zeros(1, 1, longest, 4).bfloat16()) == "math"
    assert path(torch.zeros(1, 1, 2, 4).bfloat16()) == "math"
    assert path(torch.zeros(1, 1, longest + 1, 4)) == "flash"  # the kernel skips whole key blocks there
    assert path(torch.zeros(1, 1, longest + 1, 4).bfloat16()) == "flash"
    assert path(torch.zeros(1, 1, longest, 4, device="meta")) == "flash"  # not a CPU


@pytest.mark.parametrize("chunks", [[1] * 12, [5, 1, 3, 3], [4, 8], [12]])
def test_kv_cache_matches_full_forward(chunks):
    model = tiny_model()
    x = torch.randint(0, SMALL["vocab_size"], (2, sum(chunks)))
    with torch.no_grad():
        full = model(x)
        cache = KVCache(model.args, rows=2, slots=32)
        outs, i = [], 0
        for n in chunks:  # multi-token chunks after a cached prefix need bottom-right causal alignment
            outs.append(model(x[:, i:i + n], cache=cache))
            i += n
    assert cache.lengths == [x.shape[1]] * 2
    assert (torch.cat(outs, 1) - full).abs().max() <= 1e-5


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_rows_equal_each_row_alone(side):
    model = tiny_model()
    lengths = [9, 4, 6]
    T = max(lengths)
    rows = [torch.randint(3, SMALL["vocab_size"], (n,)) for n in lengths]
    tokens = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for b, r in enumerate(rows):
        sl = slice(T - len(r), T) if side == "left" else slice(0, len(r))
        tokens[b, sl], mask[b, sl] = r, True
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        batched = model(tokens, positions=positions, mask=mask)
        assert torch.isfinite(batched).all()  # padding queries never see an all-masked row
        for b, r in enumerate(rows):
            alone = model(r[None])[0]
            assert (batched[b][mask[b]] - alone).abs().max() <= 1e-5


def test_left_padded_batch_decodes_with_cache():
    """Prompts of different lengths prefilled together, then decoded a token at a time."""
    model = tiny_model()
    rows = [torch.randint(3, 96, (n,)) for n in (7, 3)]
    T = 7
    tokens = torch.zeros(2, T, dtype=torch.long)
    mask = torch.zeros(2, T + 4, dtype=torch.bool)
    for b, r in enumerate(rows):
        tokens[b, T - len(r):] = r
        mask[b, T - len(r):] = True
    mask[:, T:] = True
    nxt = torch.randint(3, 96, (2, 4))
    with torch.no_grad():
        cache = KVCache(model.args, 2, 16)
        pos = (mask[:, :T].long().cumsum(1) - 1).clamp(min=0)
        model(tokens, positions=pos, mask=mask[:, :T], cache=cache)
        steps = []
        for t in range(4):
            p = pos[:, -1:] + 1 + t
            steps.append(model(nxt[:, t:t + 1], positions=p, mask=mask[:, :T + t + 1], cache=cache))
        for b, r in enumerate(rows):
            alone = model(torch.cat([r, nxt[b]])[None])[0, len(r):]
            assert (torch.cat(steps, 1)[b] - alone).abs().max() <= 1e-5


def test_packed_segments_equal_separate_samples():
    model = tiny_model()
    a, b = torch.randint(3, 96, (5,)), torch.randint(3, 96, (7,))
    tokens = torch.cat([a, b])[None]
    seg = torch.tensor([[0] * 5 + [1] * 7])
    pos = torch.cat([torch.arange(5), torch.arange(7)])[None]
    with torch.no_grad():
        packed = model(tokens, positions=pos, segment_ids=seg)[0]
        assert (packed[:5] - model(a[None])[0]).abs().max() <= 1e-5
        assert (packed[5:] - model(b[None])[0]).abs().max() <= 1e-5


EXPECTED_PARAMS = {
    "llama1-7b": 6_738_415_616, "llama2-7b": 6_738_415_616,
    "llama1-13b": 13_015_864_320, "llama2-13b": 13_015_864_320,
    "llama1-33b": 32_528_943_616, "llama1-65b": 65_285_660_672, "llama2-70b": 68_976_648_192,
}


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_preset_parameter_counts_on_meta_device(name):
    args = preset(name)
    with torch.device("meta"):
        model = Transformer(args)
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name] == args.num_params()
    assert args.norm_eps == (1e-6 if name.startswith("llama1") else 1e-5)
    assert args.max_seq_len == (2048 if name.startswith("llama1") else 4096)


def test_presets_for_laptops_are_small():
    for name in ("tiny", "mini", "small", "base"):
        assert 2e6 <= preset(name).num_params() <= 60e6


def test_ffn_hidden_rule():
    assert ModelArgs(dim=4096).hidden_dim == 11008
    assert ModelArgs(dim=8192, n_heads=64, multiple_of=4096, ffn_dim_multiplier=1.3).hidden_dim == 28672
    assert ModelArgs(dim=64, n_heads=4, ffn_hidden_dim=100).hidden_dim == 100


@pytest.mark.parametrize("bad, match", [
    (dict(dim=100, n_heads=3), "not divisible by n_heads"),
    (dict(dim=64, n_heads=4, n_kv_heads=3), "not divisible by n_kv_heads"),
    (dict(dim=60, n_heads=4, n_kv_heads=2), "must be even"),
    (dict(dim=0), "dim must be a positive"),
    (dict(dim=64, n_heads=4, norm_eps=0.0), "norm_eps"),
])
def test_impossible_configs_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        ModelArgs(**{**dict(vocab_size=10), **bad})


def test_unknown_preset_and_unknown_keys():
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("llama3-8b")
    with pytest.raises(ValueError, match="unknown keys"):
        ModelArgs.from_dict({"dim": 64, "n_heads": 4, "hidden_size": 3})
    assert set(PRESETS) >= set(EXPECTED_PARAMS)


def test_ragged_cache_rows_equal_uncached_forward():
    """Rows of different lengths in one KVCache: prefilled one by one into views of single rows, then run
    together (one token, then chunks of three) with each row at its own position, a finished row replaced
    by the last one (continuous batching) and the cache regrown midway. Every call gives model.forward's
    logits for each row's whole sequence."""
    model = tiny_model()
    torch.manual_seed(1)
    seqs = [torch.randint(3, SMALL["vocab_size"], (n,)).tolist() for n in (5, 9, 2)]
    cache = KVCache(model.args, rows=3, slots=20)

    def check(out, rows):
        for b, s in enumerate(rows):
            want = model(torch.tensor([s]))[0, -out.shape[1]:]
            assert (out[b] - want).abs().max() <= 1e-5

    with torch.no_grad():
        for i, s in enumerate(seqs):
            check(model(torch.tensor([s]), cache=cache.rows(i, 1)), [s])
        assert cache.lengths == [5, 9, 2]
        for T in (1, 3, 1):
            new = torch.randint(3, SMALL["vocab_size"], (len(seqs), T))
            for s, t in zip(seqs, new.tolist()):
                s.extend(t)
            check(model(new, cache=cache.rows(0, len(seqs))), seqs)
        cache.copy_row(2, 0)  # row 0 finished: the last row moves into its place
        seqs = [seqs[2], seqs[1]]
        cache.resize(4, 32)
        assert cache.lengths[:2] == [len(s) for s in seqs] and cache.slots == 32
        for T in (1, 2):
            new = torch.randint(3, SMALL["vocab_size"], (2, T))
            for s, t in zip(seqs, new.tolist()):
                s.extend(t)
            check(model(new, cache=cache.rows(0, 2)), seqs)
    assert cache.lengths[:2] == [len(s) for s in seqs]
    with pytest.raises(ValueError, match="full"):
        model(torch.zeros(2, 32 - len(seqs[1]) + 1, dtype=torch.long), cache=cache.rows(0, 2))
