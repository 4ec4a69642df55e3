"""Post-training stages under torchrun on CPU with gloo: 2-rank SFT, reward-model, rejection-sampling and PPO
runs log the single-process losses, rewards and KL (same global batch and seed, fp32), and a 2-rank
checkpoint resumes on one rank on the same curve. The stage runner opens the process group and shards the
trained models (FSDP2); rank 0 writes run files; rejection sampling and PPO sample each rank's share of the
prompts, every sample seeded by its global index."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ENV

REL = 1e-5  # the largest relative difference allowed between a 2-rank and a 1-process figure
# (PPO's KL, a sum of ~6-nat log-probability differences, and its nearly cancelling policy loss are the
# figures most sensitive to the weights: they hold only because both runs clip the gradients by the same
# factor, see train/optim.py clip_gradients)
TINY = 1e-6  # a figure that is 0 (the KL of identical policies) is compared absolutely

STAGES = {
    "sft": ["--data", "proving-ground", "--set", "sft.dialogs=64", "--set", "sft.instruction_dialogs=8",
            "--set", "sft.batch_size=8", "--set", "sft.seq_len=128", "--set", "sft.val_n=8",
            "--set", "sft.eval_n=0", "--set", "sft.eval_gatt=0",
            "--set", "train.warmup_steps=4"],  # LR in warmup: the same whether a run is 2 or 4 steps long
    "rm": ["--data", "proving-ground", "--kind", "helpful", "--set", "rm.prompts=16", "--set", "rm.val_prompts=8",
           "--set", "rm.samples=1", "--set", "rm.batch_pairs=8", "--set", "rm.max_len=96"],  # warmup >= 5 steps
    # 5 prompts x K 2 and 5 held-out prompts: the ranks' shares differ in size (3 and 2)
    "rs": ["--set", "rs.prompts_per_iteration=5", "-k", "2", "--set", "rs.max_new_tokens=24", "--set", "rs.eval_n=5",
           "--set", "rs.batch_size=4", "--set", "rs.temperature=1.0", "--set", "train.lr=1e-3",
           "--set", "rs.logprob_weight=0.5"],  # the regularized pick: each rank scores its share of log pi
    "ppo": ["--set", "ppo.rollout_batch=8", "--set", "ppo.minibatch=4", "--set", "ppo.max_new_tokens=16",
            "--set", "ppo.eval_every=1", "--set", "ppo.eval_n=5", "--set", "ppo.patience=0",
            "--set", "train.lr=1e-3", "--set", "ppo.value_lr=1e-3", "--set", "ppo.beta=0.05"],
}
START = {"sft": "pretrain", "rm": "sft"}  # the smoke run's model each stage starts from
POLICY_STAGES = ("rs", "ppo")  # their length is in iterations, not steps
DONE = ("weights:", "reward model:", "policy:")  # the last line each command prints


def start_args(smoke_run, stage) -> list[str]:
    out = smoke_run[0]
    if stage in POLICY_STAGES:
        return ["--policy", str(out / "sft" / "model"), "--reward-helpful", str(out / "rm-helpful" / "model"),
                "--reward-safety", str(out / "rm-safety" / "model")]
    return ["--model", str(out / START[stage] / "model")]


def run_stage_cli(smoke_run, stage, out, nproc=1, steps=4, resume=False):
    """Run `camelid STAGE` (steps: optimizer steps, or iterations of rs / ppo); returns metrics.jsonl's rows."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    length = ["--iterations", str(steps)] if stage in POLICY_STAGES else ["--set", f"train.max_steps={steps}"]
    cmd = launcher + ["-m", "camelid", stage, *start_args(smoke_run, stage), "--out", str(out), *STAGES[stage],
                      *length, "--set", "train.micro_batch=2", "--set", "train.dtype=fp32", "--set", "log.every=1",
                      "--set", "log.progress=false", "--set", "checkpoint.every=2"] \
        + (["--resume"] if resume and stage != "rs" else [])  # rs always continues after its finished iterations
    r = subprocess.run(cmd, env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout[-2000:]}\nstderr:\n{r.stderr[-4000:]}"
    done = [ln for ln in r.stdout.splitlines() if ln.startswith(DONE)]
    assert len(done) == 1, r.stdout  # rank 0 speaks for all ranks
    return read_rows(out / "metrics.jsonl")


def read_rows(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def figures(rows, keys, split=None) -> dict:
    """{(step, key): value} of the rows of one split (None: training rows); NaN (the best of K when every
    sample was cut off) is left out, after checking both runs agree on it."""
    out = {(r["step"], k): r[k] for r in rows if r.get("split") == split for k in keys if k in r}
    return {k: v for k, v in out.items() if v == v} | {(k[0], "nan:" + k[1]): 1.0 for k, v in out.items() if v != v}


def rel_diffs(got: dict, want: dict) -> dict:
    assert sorted(got) == sorted(want) and want
    return {k: abs(got[k] - want[k]) / max(abs(want[k]), TINY) for k in want}


def assert_same(got: dict, want: dict) -> float:
    diffs = rel_diffs(got, want)
    assert max(diffs.values()) <= REL, {k: (got[k], want[k], d) for k, d in diffs.items() if d > REL}
    return max(diffs.values())


# What each stage must log identically: its training rows and, where it has them, its held-out rows.
TRAIN_KEYS = {"sft": ["loss"], "rm": ["loss"],
              "ppo": ["loss", "reward", "reward_helpful", "reward_safety", "kl", "policy_loss", "value_loss"],
              "rs": ["sample_mean", "best_mean", "pool_mean", "heldout_reward"]}
VAL_KEYS = {"sft": ["loss"], "rm": ["loss"], "ppo": ["reward", "kl"], "rs": []}


def same_run(got_dir, want_dir, stage, got_rows, want_rows, resumed=False) -> float:
    """The largest relative difference of everything the two runs logged (and, for rs, the fine-tuning
    losses of each iteration's SFT run). A resumed run also validated where its first part ended."""
    worst = assert_same(figures(got_rows, TRAIN_KEYS[stage]), figures(want_rows, TRAIN_KEYS[stage]))
    if VAL_KEYS[stage]:
        want_val = figures(want_rows, VAL_KEYS[stage], "val")
        got_val = {k: v for k, v in figures(got_rows, VAL_KEYS[stage], "val").items() if not resumed or k in want_val}
        worst = max(worst, assert_same(got_val, want_val))
    if stage == "rs":  # an iteration whose samples were all cut off has nothing to fine-tune on
        tuned = [f"iter_{r['step']}/sft/metrics.jsonl" for r in want_rows if r["pool_size"]]
        assert tuned and all((got_dir / f).exists() == (f in tuned) for f in
                             (f"iter_{r['step']}/sft/metrics.jsonl" for r in want_rows))
        for sft in tuned:
            worst = max(worst, assert_same(figures(read_rows(got_dir / sft), ["loss"]),
                                           figures(read_rows(want_dir / sft), ["loss"])))
    return worst


@pytest.mark.parametrize("stage", ["sft", "rm", "rs", "ppo"])
def test_two_ranks_match_one_process_and_resume_on_one(smoke_run, tmp_path, stage):
    steps, half = (2, 1) if stage in POLICY_STAGES else (4, 2)
    want = run_stage_cli(smoke_run, stage, tmp_path / "one", steps=steps)
    got = run_stage_cli(smoke_run, stage, tmp_path / "two", nproc=2, steps=steps)
    worst = same_run(tmp_path / "two", tmp_path / "one", stage, got, want)
    assert (tmp_path / "two" / "model" / "config.json").exists()  # rank 0 saved the gathered weights
    # a 2-rank run stopped half way goes on in one process, on the same curve
    run_stage_cli(smoke_run, stage, tmp_path / "resumed", nproc=2, steps=half)
    saved = "iter_1/iteration.json" if stage == "rs" else f"checkpoints/step_{2:08d}/.metadata"
    assert (tmp_path / "resumed" / saved).exists()
    resumed = run_stage_cli(smoke_run, stage, tmp_path / "resumed", steps=steps, resume=True)
    worst = max(worst, same_run(tmp_path / "resumed", tmp_path / "one", stage, resumed, want, resumed=True))
    print(f"{stage}: largest relative difference, 2 ranks (and resumed on 1) vs 1 process: {worst:.2e}")


# The report card's figures that count something (accuracies, refusal and adherence rates, per task) must be
# the same, and its measured ones (rewards, KL) agree to REL: measured at 0 difference (2026-12-05, CPU).
COUNTED = ("accuracy", "refusal_rate", "gatt_adherence", "over_refusal_rate", "tasks", "rm_accuracy", "score",
           "accuracy_vs_sft", "score_vs_sft", "rm_accuracy_on_policy")
MEASURED = ("reward", "kl")


def test_quickstart_smoke_on_two_ranks_gives_the_one_process_report_card(smoke_run, tmp_path):
    out = tmp_path / "qs"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "camelid", "quickstart", "--smoke", "--out", str(out)],
                       env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout[-2000:]}\nstderr:\n{r.stderr[-4000:]}"
    assert r.stdout.count(". report card:") == 1 and r.stdout.count("== done in") == 1  # rank 0 alone speaks
    got, want = (json.loads((d / "report_card.json").read_text())["stages"] for d in (out, smoke_run[0]))
    assert [s["name"] for s in got] == [s["name"] for s in want]
    worst = 0.0
    for g, w in zip(got, want):
        assert {k: g.get(k) for k in COUNTED} == {k: w.get(k) for k in COUNTED}, g["name"]
        for k in MEASURED:
            assert (g[k] is None) == (w[k] is None)
            if w[k] is not None:
                worst = max(worst, abs(g[k] - w[k]) / max(abs(w[k]), TINY))
                assert abs(g[k] - w[k]) <= REL * max(abs(w[k]), TINY), (g["name"], k, g[k], w[k])
    print(f"quickstart --smoke report card, 2 ranks vs 1 process: counted figures equal; rewards and KL within "
          f"{worst:.2e} (relative)")
