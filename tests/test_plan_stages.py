"""`camelid plan --stage`: memory per GPU of the post-training stages, each model listed, on exact sums."""

import pytest

from camelid.model import ModelArgs, preset
from camelid.scaling.planner import GIB, memory_per_gpu
from camelid.scaling.post_training import kv_cache_bytes, plan_stage


def test_sft_is_pretraining_accounting():
    args = preset("llama2-7b")
    p = plan_stage(args, "sft", model_name="llama2-7b", gpus=8, gpu="a100", seq_len=4096, ac="selective")
    want = memory_per_gpu(args, gpus=8, tp=1, seq_len=4096, micro_batch=1, ac="selective", flash=True)
    assert p.peak == pytest.approx(sum(want.values()))
    assert not p.sampling


def test_reward_model_has_a_scalar_head():
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=1000, max_seq_len=128)
    lm = plan_stage(args, "sft", model_name="x", gpus=2)
    rm = plan_stage(args, "rm", model_name="x", gpus=2)
    # 16 bytes per parameter over 2 GPUs: the vocabulary projection (1000 x 64) gives way to a 64-wide head
    assert lm.resident["policy (trained): states"] - rm.resident["reward model (trained): states"] == \
        16 * (1000 * 64 - 64) / 2
    assert "logits + loss" in lm.training and "logits + loss" not in rm.training


def test_ppo_lists_every_model_and_the_rollout_cache():
    args = preset("llama2-70b")
    p = plan_stage(args, "ppo", model_name="llama2-70b", gpus=64, gpu="h100", tp=8, rollout_batch=512,
                   rollout_tokens=1024)
    names = " ".join(list(p.resident) + list(p.training) + list(p.sampling))
    for model in ("policy", "value model", "reference policy", "helpfulness RM", "safety RM", "KV cache",
                  "gathered policy"):
        assert model in names
    n = args.num_params()
    assert p.resident["reference policy (frozen, bf16)"] > 2 * n / 64
    assert p.sampling["gathered policy for generation (bf16)"] == 2 * n / 8
    per_rank = 512 // 8  # dp = 64 / tp 8
    assert kv_cache_bytes(args, 1024, per_rank, 8) == 2 * 80 * 8 * 128 * 1024 * per_rank * 2 / 8
    assert p.peak == pytest.approx(sum(p.resident.values()) + max(sum(p.training.values()), sum(p.sampling.values())))
    assert 0 < p.peak / GIB < 10_000


def test_a_layout_that_fits_is_suggested():
    p = plan_stage(preset("llama2-70b"), "ppo", model_name="llama2-70b", gpus=16, gpu="a100", tp=1)
    assert not p.fits and any("to make it fit" in n or "no tp" in n for n in p.notes)


def test_plan_stage_command_lists_each_model(capsys):
    import json

    from camelid.cli import main

    with pytest.raises(SystemExit) as e:
        main(["plan", "--stage", "ppo", "--model", "llama2-70b", "--gpus", "64", "--gpu", "h100", "--json"])
    assert e.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stage"] == "ppo" and out["peak_gib"] > 0
    assert {"value model (trained): states", "reference policy (frozen, bf16)", "safety RM (frozen, bf16)"} <= \
        set(out["resident_gib"])
    with pytest.raises(SystemExit) as e:
        main(["plan", "--model", "llama2-7b", "--gpus", "8"])
    assert e.value.code == 2 and "--tokens" in capsys.readouterr().err
