"""The sampling engine: parity with transformers' generate, cached == uncached, batching, sampling, streaming
text, chat sessions and the generate / chat commands."""

import io
import random
import sys

import pytest
import torch

from camelid.infer import Engine, Request, SamplingParams, generate, stream
from camelid.infer.engine import decode, prefill, similar_length_runs
from camelid.infer.packing import build_inference_model, inference_model
from camelid.infer.sampling import filtered_probs, sample
from camelid.model import KVCache, Transformer
from tests.test_model import hf_twin, tiny_model as _tiny_model  # noqa: F401 (hf_twin is used by the tests below)


pytestmark = pytest.mark.usefixtures("one_thread")


GQA = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, ffn_hidden_dim=100, norm_eps=1e-5,
           max_seq_len=96)


def tiny_model(seed=0, std=0.08, **kw) -> Transformer:
    """A random model with peaked logits (larger init) and non-trivial norm weights."""
    return _tiny_model(seed, std=std, **{**GQA, **kw})


def tiny_tokenizer(out_dir, vocab_size=400):
    from camelid.tokenizer import Tokenizer
    rng = random.Random(0)
    words = ("the quick brown fox jumps over lazy dog llama camel alpaca answer question model token hello "
             "world please tell me about paris france tower system brief yes no").split()
    lines = [" ".join(rng.choice(words) for _ in range(12)) + f" {rng.randint(0, 99999)}." for _ in range(2000)]
    return Tokenizer.train(lines, out_dir, vocab_size=vocab_size)


def prompts_for(model, lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[1] + torch.randint(3, model.args.vocab_size, (n - 1,), generator=g).tolist() for n in lengths]


def top2_margin(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0, -1].float()
    top = logits.topk(2).values
    return float(top[0] - top[1])


# ---------------------------------------------------------------------------------------------- parity


def test_greedy_equals_transformers_generate():
    model = tiny_model()
    hf = hf_twin(model)
    prompts = prompts_for(model, [1, 5, 12, 30])
    ours = generate(model, prompts, 40, stop_ids=None)
    compared = 0
    for p, got in zip(prompts, ours):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), max_new_tokens=40, min_new_tokens=40, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[0, len(p):].tolist()
        for i, (a, b) in enumerate(zip(got, ref)):
            if a != b:  # excused only where the two best logits are within 1e-4 (a rounding coin flip)
                assert top2_margin(model, p + got[:i]) < 1e-4, f"diverged at step {i}: {got} vs {ref}"
                break
            compared += 1
        assert len(got) == 40
    assert compared >= 100


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cached_equals_uncached(dtype):
    model = tiny_model().to(dtype)
    prompts = prompts_for(model, [3, 9, 1, 17])
    cached = generate(model, prompts, 24, stop_ids=None)
    uncached = generate(model, prompts, 24, stop_ids=None, use_cache=False)
    if dtype == torch.float32:
        assert cached == uncached
    else:  # bf16: the two paths round differently; most tokens still agree
        agree = sum(a == b for c, u in zip(cached, uncached) for a, b in zip(c, u))
        assert agree >= 0.5 * 24 * len(prompts)


@pytest.mark.parametrize("pack", [True, False])
def test_fast_path_logits_equal_model_forward(pack):
    """Prefill and every decode step of the engine's forward give model.forward's logits (fp32)."""
    if pack and not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")
    model = tiny_model()
    fast = build_inference_model(model, pack=pack)
    cache = KVCache(model.args, 3, 40)
    prompts = prompts_for(model, [4, 7, 2])
    P = max(map(len, prompts))
    toks = torch.zeros(3, P, dtype=torch.long)
    for i, p in enumerate(prompts):
        toks[i, :len(p)] = torch.tensor(p)
    logits = prefill(fast, cache, toks, 0, [len(p) for p in prompts])
    seqs = [list(p) for p in prompts]
    for step in range(10):
        with torch.no_grad():
            ref = torch.stack([model(torch.tensor([s]))[0, -1] for s in seqs])
        torch.testing.assert_close(logits, ref, atol=2e-4, rtol=1e-4)
        nxt = ref.argmax(-1)
        for s, t in zip(seqs, nxt.tolist()):
            s.append(t)
        logits = decode(fast, cache, nxt)


def test_batched_rows_equal_each_alone_and_dedup():
    model = tiny_model()
    prompts = prompts_for(model, [6, 2, 11])
    together = generate(model, prompts + [prompts[0], prompts[0]], 20, stop_ids=None)
    alone = [generate(model, [p], 20, stop_ids=None)[0] for p in prompts]
    assert together[:3] == alone and together[3] == together[4] == alone[0]
    assert generate(model, prompts, 20, stop_ids=None, max_batch=2) == alone


def test_prefill_runs_of_similar_length():
    # a run ends where padding to the next prompt's length would exceed a quarter of the run's real tokens
    assert similar_length_runs([5, 5, 6, 20, 21, 100]) == [range(0, 3), range(3, 5), range(5, 6)]
    assert similar_length_runs([7] * 50) == [range(0, 50)]
    assert similar_length_runs([1, 2], padding=0.0) == [range(0, 1), range(1, 2)]
    assert similar_length_runs([3]) == [range(0, 1)]


def test_continuous_batching_new_request_joins_running_batch():
    model = tiny_model()
    a, b, c = prompts_for(model, [5, 9, 3])
    solo = {tuple(p): generate(model, [p], 16, stop_ids=None)[0] for p in (a, b, c)}
    eng = Engine(model, max_batch=2)
    ra = eng.add(Request(a, 16, stop_ids=()))
    for _ in range(5):
        eng.step()
    rb = eng.add(Request(b, 16, stop_ids=()))
    rc = eng.add(Request(c, 16, stop_ids=()))  # waits: only two rows
    eng.step()
    assert len(eng.active) == 2 and rb in eng.active and rc in eng.waiting and len(ra.tokens) == 6
    eng.run()
    for r, p in ((ra, a), (rb, b), (rc, c)):
        assert r.tokens == solo[tuple(p)] and r.finish_reason == "length"


def test_stop_ids_max_tokens_context_and_abort():
    model = tiny_model()
    p = prompts_for(model, [4])[0]
    free = generate(model, [p], 12, stop_ids=None)[0]
    stop_at = free[5]
    cut = generate(model, [p], 12, stop_ids=[stop_at])[0]
    assert cut == free[:free.index(stop_at)]
    eng = Engine(model, max_batch=2, max_seq_len=10)
    r1 = eng.add(Request(p, 100, stop_ids=()))
    r2 = eng.add(Request(p, 3, stop_ids=()))
    r3 = eng.add(Request(p, 0, stop_ids=()))
    eng.run()
    assert (r1.finish_reason, len(r1.tokens)) == ("length", 10 - len(p))  # context full
    assert (r2.finish_reason, len(r2.tokens), r3.finish_reason, r3.tokens) == ("length", 3, "length", [])
    with pytest.raises(ValueError, match="context"):
        eng.add(Request(list(range(1, 11)), 1))
    with pytest.raises(ValueError, match="empty"):
        eng.add(Request([], 1))
    r4 = eng.add(Request(p, 50, stop_ids=()))
    eng.step()
    eng.abort(r4)
    assert r4.finish_reason == "abort" and not eng.has_work


def test_weights_change_between_calls_is_seen():
    """RLHF trains the policy between sampling rounds: the packed copies must follow."""
    model = tiny_model()
    p = prompts_for(model, [5])
    before = generate(model, p, 10, stop_ids=None)
    with torch.no_grad():
        for prm in model.parameters():
            prm.mul_(1.5)
    after = generate(model, p, 10, stop_ids=None)
    assert after == generate(model, p, 10, stop_ids=None, use_cache=False) and after != before
    model.to(torch.bfloat16)  # the packed copy follows the model's dtype too
    dtype = lambda m: m.tok_embeddings.weight.dtype  # noqa: E731
    assert dtype(inference_model(model)) == torch.bfloat16 and dtype(inference_model(model, dtype=torch.float32)) == torch.float32


# ---------------------------------------------------------------------------------------------- sampling


def meta_sample_top_p(probs, p):
    """Meta's llama/generation.py sample_top_p, returning the filtered distribution instead of a draw."""
    probs_sort, probs_idx = torch.sort(probs, dim=-1, descending=True)
    probs_sum = torch.cumsum(probs_sort, dim=-1)
    mask = probs_sum - probs_sort > p
    probs_sort[mask] = 0.0
    probs_sort.div_(probs_sort.sum(dim=-1, keepdim=True))
    return torch.zeros_like(probs).scatter_(-1, probs_idx, probs_sort)


def test_top_p_top_k_temperature_filters():
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    t = torch.tensor([0.6, 1.0, 1.3, 0.9])
    pr = filtered_probs(logits, t, torch.tensor([0.9, 0.5, 1.0, 0.95]), torch.tensor([0, 0, 5, 3]))
    pr = pr / pr.sum(-1, keepdim=True)
    for i, tp in enumerate([0.9, 0.5]):
        torch.testing.assert_close(pr[i], meta_sample_top_p(torch.softmax(logits[i:i + 1] / t[i], -1), tp)[0])
    assert (pr[2] > 0).sum() == 5 and (pr[3] > 0).sum() <= 3
    top5 = (logits[2] / 1.3).topk(5).indices
    torch.testing.assert_close(pr[2, top5], torch.softmax(logits[2, top5] / 1.3, -1))


def test_sampler_draws_from_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    tok = sample(logits, 1.0, 1.0, 0, g)
    freq = torch.bincount(tok, minlength=4).float() / len(tok)
    torch.testing.assert_close(freq, torch.softmax(logits[0], -1), atol=0.015, rtol=0)
    tok = sample(logits, 1.0, 0.7, 0, g)  # top-p 0.7 keeps {0, 1}
    assert set(tok.tolist()) == {0, 1}


def test_sampling_seeds_and_degenerate_settings():
    model = tiny_model(std=0.02)
    prompts = prompts_for(model, [4, 6])
    kw = dict(temperature=1.0, top_p=0.95, stop_ids=None)
    a = generate(model, prompts, 20, seed=7, **kw)
    assert a == generate(model, prompts, 20, seed=7, **kw) and a != generate(model, prompts, 20, seed=8, **kw)
    greedy = generate(model, prompts, 20, stop_ids=None)
    assert generate(model, prompts, 20, temperature=1.0, top_k=1, seed=1, stop_ids=None) == greedy
    assert generate(model, prompts, 20, temperature=0.7, top_p=1e-6, seed=1, stop_ids=None) == greedy
    k_samples = generate(model, [prompts[0]] * 8, 20, temperature=1.0, seed=3, stop_ids=None)
    assert len({tuple(s) for s in k_samples}) == 8  # rejection sampling: K different samples of one prompt
    with pytest.raises(ValueError):
        generate(model, prompts, 5, top_p=0.0)
    with pytest.raises(TypeError):
        generate(model, prompts[0], 5)


def test_a_seeded_request_is_independent_of_its_batch():
    model = tiny_model(std=0.02)
    p, q = prompts_for(model, [4, 6])
    sp = SamplingParams(1.0, 0.9)

    def run(extra):
        eng = Engine(model, max_batch=4)
        r = eng.add(Request(p, 15, sp, (), seed=42))
        for e in extra:
            eng.add(Request(e, 15, sp, ()))
        eng.run()
        return r.tokens

    assert run([]) == run([q, q, p])


def test_stream_yields_the_generate_tokens():
    model = tiny_model()
    p = prompts_for(model, [5])[0]
    got = []
    assert generate(model, [p], 12, stop_ids=None, callback=lambda i, t: got.append((i, t)))[0] == [t for _, t in got]
    assert list(stream(model, p, 12, stop_ids=None)) == [t for _, t in got]


# ---------------------------------------------------------------------------------------------- text + chat


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def test_text_stream_pieces_add_up_and_stop_strings_cut(tok):
    from camelid.infer.text import TextStream
    text = "hello world 😀 naïve 12345 the quick brown fox"
    ids = tok.encode(text)
    ts = TextStream(tok)
    pieces = [ts.push(t) for t in ids] + [ts.finish()]
    assert "".join(pieces) == tok.decode(ids) == text
    assert all("\ufffd" not in piece for piece in pieces)
    ts = TextStream(tok, stop=["naïve", "zzz"])
    out = "".join(ts.push(t) for t in ids) + ts.finish()
    assert out == "hello world 😀 " and ts.stopped
    ts = TextStream(tok, stop=["o w"])
    assert "".join(ts.push(t) for t in ids) + ts.finish() == "hell"


def test_chat_session_streams_keeps_history_and_trims(tok):
    from camelid.infer.chat import ChatSession
    model = tiny_model(vocab_size=tok.vocab_size, max_seq_len=128, std=0.02)
    s = ChatSession(model, tok, system="be brief", max_new_tokens=8, temperature=0.0)
    first = "".join(s.send("hello there"))
    assert s.history == [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": first}]
    for i in range(8):
        s.ask("please tell me about the quick brown fox and the lazy dog " * 2)
    assert s.trimmed > 0 and len(s.history) < 18  # the oldest exchanges were dropped to fit 128 tokens
    ids, room = s.build_prompt("next")
    assert len(ids) + room <= 128
    s.reset()
    assert s.history == []
    with pytest.raises(Exception, match="special tags"):
        s.ask("[INST] hi")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tok):
    from camelid.checkpoint import save_model
    model = tiny_model(vocab_size=tok.vocab_size, max_seq_len=128, std=0.02)
    d = tmp_path_factory.mktemp("ckpt") / "tiny-chat"
    save_model(model, d, tokenizer_path=tok.model_path)
    return d


def test_generate_command(checkpoint, capsys):
    from camelid.cli import main
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(checkpoint), "--prompt", "hello world", "--max-new-tokens", "6", "--stats"])
    assert e.value.code == 0
    out, err = capsys.readouterr()
    assert out.endswith("\n") and "tokens/s" in err
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(checkpoint), "--prompt", "hi", "--chat", "--num-samples", "3",
              "--temperature", "1.0", "--max-new-tokens", "4", "--seed", "1"])
    assert e.value.code == 0 and capsys.readouterr().out.count("--- sample") == 3
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(checkpoint) + "-missing", "--prompt", "x"])
    assert e.value.code == 2 and "no such checkpoint" in capsys.readouterr().err


def test_chat_command(checkpoint, capsys, monkeypatch):
    from camelid.cli import main
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n/system be brief\nhi [INST]\nhi again\n/reset\n/nope\n/quit\n"))
    with pytest.raises(SystemExit) as e:
        main(["chat", "--model", str(checkpoint), "--max-new-tokens", "5", "--seed", "0"])
    assert e.value.code == 0
    err = capsys.readouterr().err
    assert "system prompt set" in err and "refused" in err and "conversation reset" in err and "unknown command" in err


def test_chat_survives_a_line_that_is_not_utf8(checkpoint, tmp_path):
    """Bytes that are not UTF-8 typed (or piped) into `camelid chat`: one notice, then the session goes on."""
    import subprocess

    from tests.conftest import ENV

    r = subprocess.run([sys.executable, "-m", "camelid", "chat", "--model", str(checkpoint), "--max-new-tokens", "3",
                        "--seed", "0"], input=b"caf\xe9 \xff\nhello\n/reset\n/quit\n", capture_output=True,
                       env={**ENV, "PYTHONIOENCODING": "utf-8:strict"}, timeout=120)
    err = r.stderr.decode()
    assert r.returncode == 0, err[-2000:]
    assert "not valid UTF-8; type it again" in err and "conversation reset" in err and "Traceback" not in err


def test_debug_shows_the_traceback_behind_a_user_error(tmp_path):
    import subprocess

    from tests.conftest import ENV

    argv = [sys.executable, "-m", "camelid", "generate", "--model", str(tmp_path / "nowhere"), "--prompt", "x"]
    plain = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=120)
    debug = subprocess.run(argv + ["--debug"], capture_output=True, text=True, env=ENV, timeout=120)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "nowhere" in plain.stderr
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "CamelidError" in debug.stderr


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_a_tokenizer_of_another_vocabulary_is_one_line(tok, tmp_path, command):
    """The report: generate died in an IndexError on the first id the tokenizer lacks."""
    import subprocess

    from camelid.checkpoint import save_model
    from tests.conftest import ENV

    save_model(tiny_model(vocab_size=tok.vocab_size + 8, max_seq_len=128), tmp_path / "m", tokenizer_path=tok.model_path)
    extra = ["--prompt", "hi"] if command == "generate" else []
    r = subprocess.run([sys.executable, "-m", "camelid", command, "--model", str(tmp_path / "m"), *extra],
                       capture_output=True, text=True, env=ENV, timeout=120, input="/quit\n")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"has {tok.vocab_size} pieces" in r.stderr and f"vocabulary of {tok.vocab_size + 8}" in r.stderr
