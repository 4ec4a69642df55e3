"""Reward models: the ranking loss on exact tensors, padding invariance, the combination rule, checkpoints."""

import json
import math

import pytest
import torch

from camelid.checkpoint import load_model, save_model
from camelid.data.preferences import load_pairs
from camelid.errors import CamelidError
from camelid.model import ModelArgs, Transformer
from camelid.reward_model import MARGINS, RewardModel, combined_reward, ranking_loss, whiten
from camelid.train.reward import accuracy_by_rating, fit_calibration
from camelid.train.rm_pairs import rating_for_gap
from tests.conftest import camelid

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, ffn_hidden_dim=128, max_seq_len=64)


def test_margin_tables_are_llama2s():
    assert MARGINS["small"] == {"significantly_better": 1.0, "better": 2 / 3, "slightly_better": 1 / 3,
                                "negligibly_better": 0.0}
    assert MARGINS["large"] == {"significantly_better": 3.0, "better": 2.0, "slightly_better": 1.0,
                                "negligibly_better": 0.0}


@pytest.mark.parametrize("table", ["none", "small", "large"])
def test_ranking_loss_exact(table):
    chosen = torch.tensor([2.0, 0.5, -1.0, 0.25])
    rejected = torch.tensor([0.0, 1.0, -3.0, 0.25])
    ratings = ["significantly_better", "better", "slightly_better", "negligibly_better"]
    m = torch.tensor([MARGINS[table][r] for r in ratings])
    expected = sum(-math.log(1 / (1 + math.exp(-(c - r - mm))))
                   for c, r, mm in zip(chosen.tolist(), rejected.tolist(), m.tolist()))
    assert ranking_loss(chosen, rejected, m).item() == pytest.approx(expected, rel=1e-6)
    # hand-computed anchor: with no margin and equal scores the loss is log 2 per pair
    assert ranking_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(3 * math.log(2))


def test_ranking_loss_large_margin_by_hand():
    # chosen 2, rejected 0, margin 3 (significantly better, large): -log sigmoid(-1) = log(1 + e)
    loss = ranking_loss(torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([3.0]))
    assert loss.item() == pytest.approx(math.log(1 + math.e), rel=1e-6)


def test_score_ignores_padding_side_and_amount():
    torch.manual_seed(0)
    rm = RewardModel(ARGS).eval()
    seqs = [torch.randint(3, 96, (n,)) for n in (9, 4, 13)]
    alone = torch.stack([rm(s[None])[0] for s in seqs])
    for side in ("left", "right"):
        for T in (13, 20):
            tokens = torch.zeros(3, T, dtype=torch.long)
            mask = torch.zeros(3, T, dtype=torch.bool)
            for b, s in enumerate(seqs):
                sl = slice(T - len(s), T) if side == "left" else slice(0, len(s))
                tokens[b, sl], mask[b, sl] = s, True
            with torch.no_grad():
                got = rm(tokens, mask=mask)
            assert torch.isfinite(got).all()
            assert (got - alone).abs().max() <= 1e-5, (side, T)


def test_combination_rule_on_hand_made_cases():
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    helpful = torch.tensor([1.0, 2.0, -0.5, 0.7])
    safety = torch.tensor([logit(0.9), logit(0.10), logit(0.5), logit(0.9)])
    is_safety = torch.tensor([False, False, False, True])
    got = combined_reward(helpful, safety, is_safety)
    # 1: safe enough, not a safety prompt -> helpful; 2: safety prob 0.10 < 0.15 -> safety;
    # 3: prob 0.5 -> helpful; 4: a safety prompt -> safety, however helpful
    assert got.tolist() == pytest.approx([1.0, logit(0.10), -0.5, logit(0.9)])
    w = whiten(got)
    assert w.mean().abs() < 1e-6 and w.std(unbiased=False) == pytest.approx(1.0, abs=1e-4)


def test_accuracy_by_rating_table():
    from camelid.data.preferences import PreferencePair

    pairs = [PreferencePair([], "a", "b", r) for r in
             ["significantly_better", "significantly_better", "better", "slightly_better"]]
    acc = accuracy_by_rating(torch.tensor([1.0, -1.0, 2.0, 0.0]), torch.tensor([0.0, 0.0, 1.0, 1.0]), pairs)
    assert acc == {"significantly_better": 0.5, "better": 1.0, "slightly_better": 0.0, "negligibly_better": None,
                   "average": 0.5}


def test_calibration_recovers_a_known_scale():
    torch.manual_seed(0)
    s = torch.randn(4000) * 2
    labels = torch.rand(4000) < torch.sigmoid(1.5 * s - 0.5)
    cal = fit_calibration(s, labels)
    assert cal["scale"] == pytest.approx(1.5, abs=0.2) and cal["bias"] == pytest.approx(-0.5, abs=0.2)


def test_rating_for_gap():
    assert [rating_for_gap(g) for g in (1.0, 0.6, 0.3, 0.1, 0.0)] == \
        ["significantly_better", "better", "slightly_better", "negligibly_better", None]


@pytest.mark.parametrize("fmt", ["camelid", "hf"])
def test_reward_model_checkpoints(tmp_path, fmt):
    torch.manual_seed(0)
    lm = Transformer(ARGS)
    rm = RewardModel.from_lm(lm).eval()
    assert torch.equal(rm.layers[0].attention.wq.weight, lm.layers[0].attention.wq.weight)
    rm.calibration = {"scale": 2.0, "bias": -0.25}
    save_model(rm, tmp_path / fmt, format=fmt)
    back = load_model(tmp_path / fmt)
    assert isinstance(back, RewardModel) and back.calibration["scale"] == 2.0
    x = torch.randint(3, 96, (2, 11))
    with torch.no_grad():
        assert (back(x) - rm(x)).abs().max() <= 1e-5
    if fmt == "hf":
        import transformers
        hf = transformers.LlamaForSequenceClassification.from_pretrained(tmp_path / fmt).eval()
        with torch.no_grad():
            assert (hf(input_ids=x).logits.squeeze(-1) - rm(x)).abs().max() <= 1e-4
    with pytest.raises(CamelidError, match="no reward models"):
        save_model(rm, tmp_path / "meta", format="meta")


def test_saved_pairs_load_back(tmp_path):
    from camelid.data.preferences import PreferencePair, save_pairs

    pairs = [PreferencePair([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], "4",
                            "5", "better", False, {"chosen": 1.0, "rejected": 0.2}, "add")]
    save_pairs(pairs, tmp_path / "p.jsonl")
    assert load_pairs(tmp_path / "p.jsonl") == pairs


def test_preference_jsonl_layouts_and_errors(tmp_path):
    f = tmp_path / "p.jsonl"
    rows = [
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No.", "rating": "better"},
        {"messages": [{"role": "user", "content": "2+2?"}], "chosen": "4", "rejected": "5", "rating": "unsure",
         "is_safety": True},
        {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
         "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}]},
        {"chosen": "\n\nHuman: hello\n\nAssistant: hi there", "rejected": "\n\nHuman: hello\n\nAssistant: go away"},
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_pairs(f)
    assert [p.rating for p in pairs] == ["better", "negligibly_better", "negligibly_better", "negligibly_better"]
    assert pairs[1].is_safety and pairs[3].prompt == [{"role": "user", "content": "hello"}]
    assert pairs[3].chosen == "hi there" and pairs[2].rejected == "bad"
    f.write_text(json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(CamelidError, match=r"p.jsonl:2: invalid JSON"):
        load_pairs(f)
    assert len(load_pairs(f, skip_bad=True)) == 1
    f.write_text(json.dumps({"prompt": "x", "chosen": "a"}) + "\n")
    with pytest.raises(CamelidError, match=r"p.jsonl:1: missing key 'rejected'"):
        load_pairs(f)
    f.write_text(json.dumps({"prompt": "x", "chosen": "a", "rejected": "b", "rating": "awesome"}) + "\n")
    with pytest.raises(CamelidError, match=r"p.jsonl:1: unknown rating 'awesome'"):
        load_pairs(f)


def test_rm_stage_end_to_end(smoke_run, tmp_path):
    """`camelid rm` on the proving ground: pairs generated and rated, the loop trains, the report and model land."""
    from tests.conftest import camelid

    model = smoke_run[0] / "pretrain" / "model"
    r = camelid("rm", "--model", model, "--data", "proving-ground", "--kind", "helpful", "--margin", "large",
                "--out", tmp_path / "rm", "--set", "rm.prompts=40", "--set", "rm.val_prompts=24",
                "--set", "rm.batch_pairs=16", "--set", "log.progress=false", "--set", "rm.samples=1",
                "--set", "rm.lm_weight=0.5")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Significantly Better" in r.stdout
    report = json.loads((tmp_path / "rm" / "rm_report.json").read_text())
    assert set(report["accuracy"]) == {"significantly_better", "better", "slightly_better", "negligibly_better",
                                       "average"}
    assert (tmp_path / "rm" / "scores.png").stat().st_size > 5000
    rm = load_model(tmp_path / "rm" / "model")
    assert isinstance(rm, RewardModel) and "scale" in rm.calibration
    rows = [json.loads(x) for x in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert any("accuracy" in x for x in rows if "split" not in x)
    assert all(x["lm_loss"] > 0 for x in rows if "split" not in x)  # rm.lm_weight: the head trained, then dropped
    # warmup: 3% of the steps, at least 5
    cfg = (tmp_path / "rm" / "config.toml").read_text()
    assert "warmup_steps = 5" in cfg


@pytest.mark.parametrize("argv", [["generate", "--prompt", "Hi"], ["sft", "--data", "proving-ground", "--out", "{tmp}/sft"],
                                  ["ppo", "--reward-helpful", "{rm}", "--out", "{tmp}/ppo"]])
def test_reward_model_where_a_language_model_belongs_is_one_line(smoke_run, tmp_path, argv):
    rm = smoke_run[0] / "rm-helpful" / "model"
    flag = "--policy" if argv[0] == "ppo" else "--model"
    r = camelid(argv[0], flag, rm, *[a.format(tmp=tmp_path, rm=rm) for a in argv[1:]])
    assert r.returncode == 2, r.stderr[-2000:]
    assert "reward model" in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_scorer_reads_pairs_by_length_and_returns_them_in_order(smoke_run):
    """RewardScorer.score reads the pairs shortest first, batch_size at a time, each batch padded to its own
    longest; every score is the one the pair gets alone, in the caller's order; score_shares (one process here,
    whole batches per rank under torchrun) gives the same tensors."""
    from camelid.checkpoint import load_checkpoint
    from camelid.rlhf.rewards import Prompt
    from camelid.rlhf.rollout import score_shares
    from camelid.rlhf.rs import load_scorer

    run = smoke_run[0]
    scorer = load_scorer(str(run / "rm-helpful" / "model"), str(run / "rm-safety" / "model"),
                         load_checkpoint(run / "sft" / "model").tokenizer(), "cpu")
    scorer.batch_size = 3
    prompts = [Prompt([{"role": "user", "content": f"Is {n} odd or even? " * (n % 4 + 1)}], is_safety=n % 3 == 0)
               for n in (7, 12, 3, 99, 40, 5, 18)]
    answers = ["odd", "even, because twelve is two times six", "", "odd", "even even even", "odd", "even"]
    got = scorer.score(prompts, answers)
    seqs = scorer.encode(prompts, answers)
    lengths = [len(s) for s in seqs]
    batches = scorer.batches(seqs)
    read = [i for b in batches for i in b]
    assert sorted(read) == list(range(7)) and [lengths[i] for i in read] == sorted(lengths)
    assert [len(b) for b in batches] == [3, 3, 1] and len(set(lengths)) > 3  # mixed lengths, a short last batch
    for i, (p, a) in enumerate(zip(prompts, answers)):
        alone = scorer.score([p], [a])
        for key in ("helpful", "safety", "combined"):
            assert abs(alone[key][0] - got[key][i]) <= 1e-4, (i, key)  # fp32 rounding of padded reads: ~1e-5
    shares = score_shares(scorer, prompts, answers)
    assert all(torch.equal(shares[key], got[key]) for key in got)


def test_pair_batches_run_each_answer_once_and_keep_a_prompts_pairs_together(smoke_run):
    """PairData: every epoch is a permutation of the pairs with each prompt's pairs next to each other; a batch
    holds each distinct (prompt, answer) once, every pair points at its own two answers, and the ranking loss on
    the shared rows equals the sum over pairs scored one by one; score_pairs gives each pair its answers' own scores."""
    from camelid.chat_format import encode_reply
    from camelid.checkpoint import load_checkpoint
    from camelid.data.preferences import PreferencePair
    from camelid.train.reward import PairData, RankingObjective, score_pairs

    run = smoke_run[0]
    rm = load_model(run / "rm-helpful" / "model").eval()
    tok = load_checkpoint(run / "sft" / "model").tokenizer()
    a = [{"role": "user", "content": "Is 7 odd or even?"}]
    b = [{"role": "user", "content": "Count the letters in end."}]
    c = [{"role": "user", "content": "Add 3 and 4."}]
    pairs = [PreferencePair(a, "odd", "even", "significantly_better", False),
             PreferencePair(b, "3", "4", "significantly_better", False),
             PreferencePair(a, "odd", "odd, I think", "slightly_better", False),
             PreferencePair(c, "7", "34", "better", False),
             PreferencePair(a, "odd, I think", "even", "better", False),
             PreferencePair(b, "3", "three letters", "negligibly_better", False)]
    data = PairData(pairs, tok, 64, "small", seed=3)
    assert len(data.sequences) == 8  # a and b 3 answers each, c 2: a pair's answer seen before is not run again
    for epoch in range(3):
        order = data.order(epoch).tolist()
        assert sorted(order) == list(range(6))
        prompts = [json.dumps(pairs[i].prompt) for i in order]
        runs = [p for k, p in enumerate(prompts) if k == 0 or p != prompts[k - 1]]
        assert len(runs) == 3  # each prompt's pairs in one run
    assert sorted(data.fetch(range(6, 12))["margin"].tolist()) == sorted(data.margins.tolist())

    batch = data.batch(list(range(6)))
    assert batch["tokens"].shape[0] == 8
    for k, p in enumerate(pairs):
        for side, answer in (("chosen", p.chosen), ("rejected", p.rejected)):
            row = int(batch[side][k])
            assert batch["tokens"][row][batch["mask"][row]].tolist() == encode_reply(tok, p.prompt, answer, 64)
    with torch.no_grad():
        loss, _ = RankingObjective()(rm, batch)
        alone = sum(ranking_loss(rm(torch.tensor([encode_reply(tok, p.prompt, p.chosen, 64)])),
                                 rm(torch.tensor([encode_reply(tok, p.prompt, p.rejected, 64)])),
                                 torch.tensor([MARGINS["small"][p.rating]])) for p in pairs)
    assert loss.item() == pytest.approx(alone.item(), abs=1e-4)
    chosen, rejected = score_pairs(rm, data, 3)  # held-out scoring: each answer once, shortest first, 3 at a time
    for k, p in enumerate(pairs):
        with torch.no_grad():
            assert chosen[k].item() == pytest.approx(rm(torch.tensor([encode_reply(tok, p.prompt, p.chosen, 64)])).item(),
                                                     abs=1e-4)
            assert rejected[k].item() == pytest.approx(
                rm(torch.tensor([encode_reply(tok, p.prompt, p.rejected, 64)])).item(), abs=1e-4)



def test_lm_regularizer_adds_the_chosen_answers_next_token_loss(smoke_run, tmp_path):
    """rm.lm_weight (GRM): the batch marks each pair's chosen answer once (`lm_rows`) with its answer tokens
    (`lm_mask`, the SFT loss mask); the objective is the ranking loss plus weight x pairs x the mean next-token loss
    on those tokens, computed here from the SFT model's own logits on each chosen answer alone; the saved reward
    model drops the head and scores as before."""
    from camelid.chat_format import encode_dialog_with_mask
    from camelid.checkpoint import load_checkpoint
    from camelid.data.preferences import PreferencePair
    from camelid.train.reward import PairData, RankingObjective

    run = smoke_run[0]
    ckpt = load_checkpoint(run / "sft" / "model")
    lm, tok = ckpt.model.float().eval(), ckpt.tokenizer()
    rm = RewardModel.from_lm(lm, keep_lm_head=True).eval()
    a = [{"role": "user", "content": "Is 7 odd or even?"}]
    b = [{"role": "user", "content": "Count the letters in end."}]
    pairs = [PreferencePair(a, "odd", "even", "significantly_better", False),
             PreferencePair(a, "odd", "odd, I think", "slightly_better", False),
             PreferencePair(b, "3", "four", "better", False),
             PreferencePair(a, "odd, I think", "even", "better", False)]
    data = PairData(pairs, tok, 64, "small", lm_targets=True)
    batch = data.batch([0, 1, 2, 3])
    chosen_rows = sorted({int(r) for r in batch["chosen"]})
    assert batch["lm_rows"].tolist() == chosen_rows and len(chosen_rows) == 3  # "odd" chosen twice, kept once
    expected_nll = []
    for r, row in enumerate(chosen_rows):
        real = batch["tokens"][row][batch["mask"][row]]
        pair = next(p for k, p in enumerate(pairs) if int(batch["chosen"][k]) == row)
        ids, answer_mask = encode_dialog_with_mask(tok, pair.prompt + [{"role": "assistant", "content": pair.chosen}])
        assert real.tolist() == ids
        assert batch["lm_mask"][r][:len(ids)].tolist() == [bool(x) for x in answer_mask]
        assert not batch["lm_mask"][r][len(ids):].any()
        with torch.no_grad():
            logp = torch.log_softmax(lm(real[None]).float()[0], -1)
        expected_nll += [-logp[t - 1, ids[t]].item() for t in range(1, len(ids)) if answer_mask[t]]
    expected_lm = sum(expected_nll) / len(expected_nll)
    with torch.no_grad():
        plain_loss, _ = RankingObjective()(rm, batch)
        loss, metrics = RankingObjective(lm_weight=0.5)(rm, batch)
    assert abs(metrics["lm_loss"] - expected_lm) < 1e-4
    assert abs(loss.item() - (plain_loss.item() + 0.5 * 4 * expected_lm)) < 1e-3
    scores = rm(batch["tokens"], mask=batch["mask"])
    rm.drop_lm_head()
    assert not any(k.startswith("output.") for k in rm.state_dict())
    save_model(rm, tmp_path / "rm")
    back = load_model(tmp_path / "rm").eval()
    assert torch.allclose(back(batch["tokens"], mask=batch["mask"]), scores, atol=1e-5)
    with pytest.raises(ValueError, match="no language-model head"):
        back(batch["tokens"], mask=batch["mask"], lm_rows=batch["lm_rows"])
