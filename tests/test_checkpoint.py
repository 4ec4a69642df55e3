"""Checkpoint formats: each loads to the same logits as transformers, round trips, and bad input is refused."""

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers

from camelid.checkpoint import CheckpointError, load_checkpoint, load_model, meta_params, save_model
from camelid.model import ModelArgs, Transformer
from tests.test_model import SMALL, hf_twin, tiny_model


def logits(model, x):
    with torch.no_grad():
        return model(x)


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=1)


@pytest.fixture(scope="module")
def reference(model):
    """Logits of transformers.LlamaForCausalLM holding the same weights."""
    x = torch.randint(0, SMALL["vocab_size"], (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return x, hf_twin(model)(x).logits


@pytest.mark.parametrize("fmt", ["camelid", "hf", "meta"])
def test_each_format_gives_transformers_logits(model, reference, tmp_path, fmt):
    x, expected = reference
    save_model(model, tmp_path / fmt, format=fmt)
    loaded = load_model(tmp_path / fmt, dtype=torch.float32)
    assert (logits(loaded, x) - expected).abs().max() <= 1e-4


def test_hf_output_loads_in_transformers(model, reference, tmp_path):
    x, expected = reference
    save_model(model, tmp_path / "hf", format="hf")
    hf, info = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        assert (hf(x).logits - expected).abs().max() <= 1e-4
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["temperature"] == 0.6 and gen["top_p"] == 0.9


def test_transformers_saved_checkpoint_loads(model, reference, tmp_path):
    """A directory written by transformers itself (not by us), sharded, with safetensors and with .bin."""
    x, expected = reference
    hf = hf_twin(model)
    hf.save_pretrained(tmp_path / "st", max_shard_size="20KB")
    assert (tmp_path / "st" / "model.safetensors.index.json").exists()
    assert (logits(load_model(tmp_path / "st"), x) - expected).abs().max() <= 1e-4
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    assert (logits(load_model(tmp_path / "bin"), x) - expected).abs().max() <= 1e-4


def test_round_trip_camelid_hf_meta_camelid(model, reference, tmp_path):
    x, expected = reference
    save_model(model, tmp_path / "a", format="camelid")
    cli = [sys.executable, "-m", "camelid", "convert"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    for src, dst, to in [("a", "b", "hf"), ("b", "c", "meta"), ("c", "d", "camelid")]:
        subprocess.run(cli + [str(tmp_path / src), str(tmp_path / dst), "--to", to], check=True, env=env,
                       capture_output=True)
    final = load_model(tmp_path / "d")
    assert final.args.hidden_dim == SMALL["ffn_hidden_dim"]  # the odd FFN size survived Meta's params.json
    assert (logits(final, x) - expected).abs().max() <= 1e-4
    for k, v in model.state_dict().items():
        assert torch.equal(final.state_dict()[k], v), k


def test_meta_model_parallel_shards_merge(model, reference, tmp_path):
    """Meta's 13B+ checkpoints are split over ranks: embedding by columns, wo/w2 by rows, the rest by outputs."""
    x, expected = reference
    save_model(model, tmp_path / "m", format="meta", shards=2)
    shard = torch.load(tmp_path / "m" / "consolidated.01.pth", weights_only=True)
    assert shard["tok_embeddings.weight"].shape == (SMALL["vocab_size"], SMALL["dim"] // 2)
    assert shard["layers.0.attention.wo.weight"].shape == (SMALL["dim"], SMALL["dim"] // 2)
    assert shard["layers.0.attention.wk.weight"].shape == (SMALL["dim"] // 4, SMALL["dim"])
    assert (logits(load_model(tmp_path / "m"), x) - expected).abs().max() <= 1e-4


def test_meta_checkpoint_as_meta_ships_it(tmp_path):
    """vocab_size -1, a rope.freqs buffer, bf16 weights, no context length in params.json (LLaMA-1 7B style)."""
    torch.manual_seed(0)
    args = ModelArgs(dim=64, n_layers=1, n_heads=4, vocab_size=50, multiple_of=32, norm_eps=1e-6)
    m = Transformer(args)
    sd = {k: v.to(torch.bfloat16) for k, v in m.state_dict().items()}
    sd["rope.freqs"] = torch.ones(8, dtype=torch.bfloat16)
    torch.save(sd, tmp_path / "consolidated.00.pth")
    (tmp_path / "params.json").write_text(json.dumps(
        {"dim": 64, "multiple_of": 32, "n_heads": 4, "n_layers": 1, "norm_eps": 1e-06, "vocab_size": -1}))
    loaded = load_model(tmp_path)
    assert loaded.args.vocab_size == 50 and loaded.args.max_seq_len == 2048 and loaded.args.hidden_dim == 192
    assert loaded.tok_embeddings.weight.dtype == torch.bfloat16
    assert load_model(tmp_path, dtype=torch.float32).output.weight.dtype == torch.float32


def test_meta_params_rebuild_any_ffn_size():
    for dim, hidden in [(64, 100), (64, 300), (64, 171), (4096, 11008), (128, 1)]:
        args = ModelArgs(dim=dim, n_heads=4, vocab_size=10, ffn_hidden_dim=hidden)
        rebuilt = ModelArgs(**meta_params(args))
        assert rebuilt.hidden_dim == hidden


def test_tokenizer_travels_with_weights(model, tmp_path):
    tok = tmp_path / "tokenizer.model"
    tok.write_bytes(b"not really a tokenizer, but it must be copied byte for byte")
    save_model(model, tmp_path / "a", tokenizer_path=tok)
    loaded = load_checkpoint(tmp_path / "a")
    assert loaded.tokenizer_path == tmp_path / "a" / "tokenizer.model" and loaded.kind == "lm"
    loaded.save(tmp_path / "b", format="hf")
    assert (tmp_path / "b" / "tokenizer.model").read_bytes() == tok.read_bytes()
    cfg = json.loads((tmp_path / "b" / "tokenizer_config.json").read_text())
    assert "[INST]" in cfg["chat_template"] and cfg["bos_token"] == "<s>"


# ------------------------------------------------------------------------------------------------ bad input

def test_truncated_safetensors_names_the_file(model, tmp_path):
    save_model(model, tmp_path / "c")
    f = tmp_path / "c" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated or corrupted"):
        load_model(tmp_path / "c")


def test_corrupted_safetensors_header(model, tmp_path):
    save_model(model, tmp_path / "c")
    f = tmp_path / "c" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:40] = b"x" * 32
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path / "c")


def test_truncated_pth_names_the_file(model, tmp_path):
    save_model(model, tmp_path / "m", format="meta")
    f = tmp_path / "m" / "consolidated.00.pth"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="consolidated.00.pth.*truncated"):
        load_model(tmp_path / "m")


def test_missing_meta_shard(model, tmp_path):
    save_model(model, tmp_path / "m", format="meta", shards=4)
    (tmp_path / "m" / "consolidated.02.pth").unlink()
    with pytest.raises(CheckpointError, match="missing consolidated.02.pth"):
        load_model(tmp_path / "m")


def test_missing_shard_named_in_index(model, tmp_path):
    hf_twin(model).save_pretrained(tmp_path / "st", max_shard_size="20KB")
    victim = sorted(tmp_path.glob("st/model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name):
        load_model(tmp_path / "st")


def test_wrong_shape_names_file_and_tensor(model, tmp_path):
    from safetensors.torch import load_file, save_file

    save_model(model, tmp_path / "c")
    f = tmp_path / "c" / "model.safetensors"
    sd = load_file(f)
    sd["layers.1.feed_forward.w3.weight"] = torch.zeros(99, SMALL["dim"])
    save_file(sd, f)
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'layers.1.feed_forward.w3.weight' has shape"):
        load_model(tmp_path / "c")


def test_missing_tensor(model, tmp_path):
    from safetensors.torch import load_file, save_file

    save_model(model, tmp_path / "c")
    f = tmp_path / "c" / "model.safetensors"
    sd = load_file(f)
    del sd["norm.weight"]
    save_file(sd, f)
    with pytest.raises(CheckpointError, match="missing tensors.*norm.weight"):
        load_model(tmp_path / "c")


@pytest.mark.parametrize("change, match", [
    ({"num_attention_heads": 5}, "not divisible by n_heads"),
    ({"num_key_value_heads": 3}, "not divisible by n_kv_heads"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling"),
    ({"tie_word_embeddings": True}, "tie_word_embeddings"),
    ({"attention_bias": True}, "no biases"),
    ({"vocab_size": 128256, "bos_token_id": 128000}, "Llama-3"),
    ({"model_type": "mistral"}, "model_type"),
])
def test_unsupported_or_impossible_hf_configs(model, tmp_path, change, match):
    save_model(model, tmp_path / "hf", format="hf")
    cfg_file = tmp_path / "hf" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(change)
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=match) as e:
        load_model(tmp_path / "hf")
    assert "config.json" in str(e.value)


def test_llama3_meta_params_refused(model, tmp_path):
    save_model(model, tmp_path / "m", format="meta")
    p = json.loads((tmp_path / "m" / "params.json").read_text())
    p.update(rope_theta=500000.0, use_scaled_rope=True)
    (tmp_path / "m" / "params.json").write_text(json.dumps(p))
    with pytest.raises(CheckpointError, match="Llama-3"):
        load_model(tmp_path / "m")


def test_failed_save_keeps_the_old_checkpoint(model, tmp_path, monkeypatch):
    save_model(model, tmp_path / "c")
    before = (tmp_path / "c" / "model.safetensors").read_bytes()
    import camelid.checkpoint as ck

    def explode(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "_save_camelid", explode)
    with pytest.raises(OSError):
        save_model(tiny_model(seed=5), tmp_path / "c")
    assert (tmp_path / "c" / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no temporary directory left behind


def test_torch_load_always_weights_only():
    """The house rule, checked on the source: every torch.load passes weights_only=True."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1] / "camelid"
    for f in root.rglob("*.py"):
        for call in re.findall(r"torch\.load\([^)]*\)", f.read_text()):
            assert "weights_only=True" in call, f"{f}: {call}"


def test_checkpoint_object_checks_its_tokenizer(model, tmp_path):
    import mistral_common

    save_model(model, tmp_path / "bare")
    with pytest.raises(CheckpointError, match="no tokenizer.model beside the weights"):
        load_checkpoint(tmp_path / "bare").tokenizer()
    big = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")  # 32,000 pieces
    save_model(model, tmp_path / "mismatch", tokenizer_path=big)
    with pytest.raises(CheckpointError, match="has 32000 pieces but the model in .* has a vocabulary of"):
        load_checkpoint(tmp_path / "mismatch").tokenizer()
