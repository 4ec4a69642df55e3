"""The inference twin (infer/packing.py): it runs model.py's own modules, adds nothing to the model, and
follows the model's weights when training changes them between two generations."""

import collections
import io
import tokenize
from pathlib import Path

import pytest
import torch

import camelid.model as model_module
from camelid.infer import generate, packing
from camelid.infer.engine import decode, prefill
from camelid.infer.packing import build_inference_model, inference_model
from camelid import kernels
from camelid.kernels import PackedLinear
from tests.test_infer import prompts_for, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

INFER = Path(__file__).resolve().parents[1] / "camelid" / "infer"
# What a forward pass of its own would need: normalisation, rotary, SwiGLU (also as oneDNN post-ops, with
# `binary` for the product and the residual sum), attention.
OWN_MATH_NAMES = {"rsqrt", "rms_norm", "silu", "view_as_complex", "polar", "cos", "sin", "scaled_dot_product_attention",
                  "apply_rotary", "rotary_freqs", "binary"}
OWN_MATH_STRINGS = {"swish", "silu"}  # oneDNN post-op names


def own_math(source: str) -> list[str]:
    return [f"{tok.start[0]}: {tok.string}" for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if (tok.type == tokenize.NAME and tok.string in OWN_MATH_NAMES)
            or (tok.type == tokenize.STRING and tok.string.strip("\"'") in OWN_MATH_STRINGS)]


def test_infer_has_no_forward_math_of_its_own():
    """infer/ schedules and samples; the arithmetic of a forward pass is model.py's alone."""
    assert {path.name: own_math(path.read_text()) for path in INFER.glob("*.py")} == \
        {path.name: [] for path in INFER.glob("*.py")}
    assert len(own_math(ENGINE_WITH_ITS_OWN_FORWARD)) == 7  # the check does see such code


# excerpts of the engine before the one forward (aceefde), which the check above must catch
ENGINE_WITH_ITS_OWN_FORWARD = '''
def _rotate(x, cis):
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return F.rms_norm(x.float(), weight.shape, None, eps).type_as(x) * weight
a = torch.ops.mkldnn._linear_pointwise(x, L["w1"][0], None, "swish", [], "")
h = torch.ops.mkldnn._linear_pointwise.binary(x, a, L["w3"][0], None, "mul")
o = F.scaled_dot_product_attention(q, k, v, is_causal=P > 1, enable_gqa=KV != H)
self._cis = torch.complex(angles.cos(), angles.sin())
'''


def test_generation_runs_through_the_model_modules(monkeypatch):
    """Prefill and every decode step go through model.py's blocks, norms, attention (with its rotary)
    and feed-forward: one call of each per layer and step."""
    model = tiny_model()
    twin = inference_model(model)
    calls = collections.Counter()
    for m in twin.modules():
        if isinstance(m, (model_module.TransformerBlock, model_module.Attention, model_module.FeedForward,
                          model_module.RMSNorm)):
            m.register_forward_hook(lambda mod, args, out: calls.update([type(mod).__name__]))
    rotary = model_module.apply_rotary
    monkeypatch.setattr(model_module, "apply_rotary", lambda *a: calls.update(["rotary"]) or rotary(*a))
    steps, L = 6, model.args.n_layers
    out = generate(model, prompts_for(model, [6, 7]), steps, stop_ids=None)  # similar lengths: one prefill
    assert inference_model(model) is twin and len(out[0]) == steps
    rotations = 1 if twin.layers[0].attention.wqkv is not None else 2  # fused: q and k heads rotate together
    assert calls == {"TransformerBlock": L * steps, "Attention": L * steps, "FeedForward": L * steps,
                     "RMSNorm": (2 * L + 1) * steps, "rotary": rotations * L * steps}


@pytest.mark.parametrize("pack", [True, False])
def test_twin_follows_an_optimizer_step(pack):
    """PPO and rejection sampling train the policy between generations: after a step the twin is rebuilt
    and gives the updated model's logits; while nothing changes it is reused."""
    if pack and not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")
    model = tiny_model()
    x = torch.tensor(prompts_for(model, [9, 9]))
    twin = inference_model(model, pack=pack)
    assert inference_model(model, pack=pack) is twin
    with torch.no_grad():
        before = twin(x)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(x).logsumexp(-1).mean().backward()
    opt.step()  # in place: same tensors, new version counters
    fresh = inference_model(model, pack=pack)
    with torch.no_grad():
        after, want = fresh(x), model(x)
    assert fresh is not twin
    assert (after - want).abs().max() <= 1e-4 and (before - want).abs().max() > 1e-2


def test_twin_adds_nothing_to_the_model():
    model = tiny_model()
    names = list(model.state_dict())
    twin = build_inference_model(model, dtype=torch.bfloat16)
    assert list(model.state_dict()) == names and next(model.parameters()).dtype == torch.float32
    assert all(layer.attention.wqkv is None and layer.feed_forward.w13 is None for layer in model.layers)
    assert not any(p.requires_grad for p in twin.parameters())
    if twin.pack:
        assert isinstance(twin.layers[0].attention.wqkv, PackedLinear) and not list(twin.layers[0].attention.wqkv.parameters())


@pytest.mark.parametrize("plain", [True, False])
def test_both_one_row_kernels_give_the_model_logits(monkeypatch, plain):
    """Whichever kernel the one-row timing picks on this host, batch-1 decoding gives model.forward's logits."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")
    monkeypatch.setattr(kernels, "plain_matvec_is_faster", lambda *a: plain)
    model = tiny_model()
    twin = build_inference_model(model, pack=True)
    assert (twin.output.plain is not None) == plain
    seq = prompts_for(model, [6])[0]
    cache = model_module.KVCache(model.args, 1, 16)
    logits = prefill(twin, cache, torch.tensor([seq]), 0, [len(seq)])
    for _ in range(4):
        with torch.no_grad():
            want = model(torch.tensor([seq]))[0, -1:]
        torch.testing.assert_close(logits, want, atol=2e-4, rtol=1e-4)
        seq.append(int(want.argmax()))
        logits = decode(twin, cache, torch.tensor(seq[-1:]))
