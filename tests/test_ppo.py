"""PPO and its arithmetic: GAE and losses against hand-computed values, KL, and a run on a known reward."""

import json

import pytest
import torch

from camelid.rlhf.ppo_math import gae, kl_per_token, masked_whiten, penalized_rewards, policy_loss, token_logprobs, \
    value_loss


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.95)
    assert adv.tolist()[0] == pytest.approx([0.46575, 0.385, 0.3])
    assert ret.tolist()[0] == pytest.approx([0.96575, 0.985, 1.0])


def test_gae_with_discount_and_padding():
    # a response in the middle of the row (prompt before it, padding after): only its tokens count
    rewards = torch.tensor([[9.0, 0.0, 1.0, 5.0]])
    values = torch.tensor([[9.0, 0.5, 0.6, 9.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    d1 = 1.0 - 0.6  # last token: no value after it
    d0 = 0.0 + 0.9 * 0.6 - 0.5
    assert adv.tolist()[0] == pytest.approx([0.0, d0 + 0.9 * 0.5 * d1, d1, 0.0])
    assert ret.tolist()[0] == pytest.approx([0.0, d0 + 0.45 * d1 + 0.5, d1 + 0.6, 0.0])


def test_policy_loss_by_hand():
    logp, old = torch.log(torch.tensor([[0.5, 0.5, 0.1]])), torch.log(torch.tensor([[0.25, 0.25, 0.1]]))
    adv = torch.tensor([[1.0, -1.0, 3.0]])
    loss, stats = policy_loss(logp, old, adv, torch.ones(1, 3), clip=0.2)
    # ratio 2, 2, 1: A=1 -> max(-2, -1.2) = -1.2; A=-1 -> max(2, 1.2) = 2; ratio 1 -> -3
    assert loss.item() == pytest.approx(-1.2 + 2.0 - 3.0)
    assert stats["clip_fraction"] == pytest.approx(2 / 3) and stats["ratio"] == pytest.approx(5 / 3)
    masked, _ = policy_loss(logp, old, adv, torch.tensor([[1.0, 0.0, 0.0]]))
    assert masked.item() == pytest.approx(-1.2)


def test_value_loss_by_hand():
    v, old, ret = torch.tensor([[1.0, 0.55]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[0.0, 1.0]])
    # token 1: max((1-0)^2, (0.7-0)^2)/2 = 0.5; token 2: unclipped (0.55-1)^2/2, clipped same (within 0.2)
    assert value_loss(v, old, ret, torch.ones(1, 2), clip=0.2).item() == pytest.approx(0.5 + 0.5 * 0.45 ** 2)


def test_penalized_rewards_and_whitening():
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    r = penalized_rewards(torch.tensor([2.0]), logp, ref, mask, beta=0.1)
    assert r.tolist()[0] == pytest.approx([0.0, 0.0, 2.0 + 0.1])
    w = masked_whiten(torch.tensor([[5.0, 1.0, 3.0]]), mask)
    assert w.tolist()[0] == pytest.approx([0.0, -1.0, 1.0], abs=1e-4)


def test_group_whiten_credits_the_answer_not_the_prompt():
    from camelid.rlhf.ppo_math import group_whiten

    # two prompts, two rollouts each: a safety prompt far above a helpful one, a better answer in each
    score = torch.tensor([5.0, 7.0, -1.0, 0.0])
    # centred in its group: [-1, 1, -0.5, 0.5]; mean square (1 + 1 + 0.25 + 0.25) / 4 = 0.625
    want = torch.tensor([-1.0, 1.0, -0.5, 0.5]) / 0.625 ** 0.5
    assert torch.allclose(group_whiten(score, 2), want, atol=1e-6)
    # batch whitening ranks the worse safety answer (5) far above the better helpful one (0); the groups do not
    from camelid.reward_model import whiten
    assert whiten(score)[0] > whiten(score)[3] and group_whiten(score, 2)[0] < group_whiten(score, 2)[3]
    assert torch.equal(group_whiten(torch.full((4,), 3.0), 2), torch.zeros(4))  # all alike: no credit


def test_kl_is_zero_for_identical_policies():
    from camelid.model import ModelArgs, Transformer
    from camelid.rlhf.rollout import sequence_kl

    torch.manual_seed(0)
    policy = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=50, ffn_hidden_dim=64))
    x = torch.randint(3, 50, (4, 9))
    lp = token_logprobs(policy(x[:, :-1]), x[:, 1:])
    assert torch.equal(kl_per_token(lp, lp), torch.zeros_like(lp))
    twin = Transformer(policy.args)
    twin.load_state_dict(policy.state_dict())
    assert sequence_kl(policy, twin, [[1, 5, 6], [1, 7]], [[8, 9], [10, 11, 12]], 2, "cpu").tolist() == [0.0, 0.0]


def test_answer_logprobs_sum_the_answer_tokens_only():
    """log pi(answer | prompt) by hand: log-softmax of one forward, the answer's tokens picked out, prompt and
    padding left out, whatever the chunks the rows are sorted into."""
    from camelid.model import ModelArgs, Transformer
    from camelid.rlhf.rollout import answer_logprobs

    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=50, ffn_hidden_dim=64)).eval()
    prompts, answers = [[1, 5, 6], [1, 7], [1, 5, 6, 7, 8, 9, 3]], [[8, 9, 2], [10, 2], [4, 4, 2]]
    got = answer_logprobs(model, prompts, answers, "cpu")
    assert torch.allclose(answer_logprobs(model, prompts, answers, "cpu", chunk=2), got, atol=1e-5)  # rows in place
    for i, (p, a) in enumerate(zip(prompts, answers)):
        seq = torch.tensor([p + a])
        lp = torch.log_softmax(model(seq).float(), -1)[0]
        want = sum(lp[len(p) - 1 + t, tok] for t, tok in enumerate(a))
        assert torch.allclose(got[i], want, atol=1e-5), (i, got[i], want)


def test_regularized_best_of_k_weighs_the_policys_belief():
    """selection_scores: reward + w * log pi, cut-off answers never chosen."""
    from camelid.rlhf.rs import best_of_k, selection_scores

    reward = torch.tensor([[1.0, 0.5], [0.2, 0.1]])
    logp = torch.tensor([[-4.0, -1.0], [-0.5, -3.0]])
    cut = torch.tensor([[False, False], [False, False]])
    assert best_of_k(selection_scores(reward, cut)).tolist() == [0, 0]  # the reward alone
    mixed = selection_scores(reward, cut, logp, 0.5)  # [[1 - 2, 0.5 - 0.5], [0.2 - 0.25, 0.1 - 1.5]]
    assert torch.allclose(mixed, torch.tensor([[-1.0, 0.0], [-0.05, -1.4]])) and best_of_k(mixed).tolist() == [1, 0]
    cut = torch.tensor([[False, True], [False, False]])
    assert selection_scores(reward, cut, logp, 0.5)[0].tolist() == [-1.0, float("-inf")]
    # a floor applies to the reward itself, log pi aside: 0.2 passes 0.15 though 0.2 - 0.25 < 0.15
    floored = selection_scores(reward, torch.zeros_like(cut), logp, 0.5, min_reward=0.15)
    assert torch.allclose(floored[1], torch.tensor([-0.05, float("-inf")]))


class ShortAnswers:
    """A known reward: shorter answers score higher (the policy must learn to emit EOS early)."""

    def score(self, prompts, answers):
        r = torch.tensor([-len(a) / 40.0 for a in answers])
        return {"combined": r, "helpful": r, "safety": None}


def test_ppo_raises_a_known_reward_with_bounded_kl(smoke_run, tmp_path):
    from camelid.rlhf.ppo import load_ppo_config, ppo

    cfg = load_ppo_config(None, [
        f"model.init_from={smoke_run[0] / 'pretrain' / 'model'}", "ppo.iterations=12", "ppo.rollout_batch=32",
        "ppo.minibatch=16", "ppo.max_new_tokens=24", "ppo.eval_every=0", "ppo.eval_n=8", "ppo.beta=0.05",
        "ppo.value_lr=1e-3",
        "train.lr=3e-3", "train.micro_batch=8", "log.progress=false"])
    summary = ppo(cfg, tmp_path / "ppo", scorer=ShortAnswers())
    rows = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "split" not in r]
    assert len(train) == 12
    first, last = sum(r["reward"] for r in train[:3]) / 3, sum(r["reward"] for r in train[-3:]) / 3
    assert last > first + 0.1, (first, last)
    assert all(abs(r["kl"]) < 20 for r in train)  # the KL penalty keeps the policy near the reference
    for key in ("clip_fraction", "ratio", "entropy", "response_length", "value_loss", "policy_loss", "gold"):
        assert key in train[-1]
    assert all(0 <= r["gold"] <= 1 for r in train) and (tmp_path / "ppo" / "gold_vs_kl.png").exists()
    assert summary["iterations"] == 12 and (tmp_path / "ppo" / "model" / "tokenizer.model").exists()
    assert summary["heldout_kl"] > 0  # without held-out evaluations the result is the last policy, not the first


def test_rejection_sampling_keeps_the_best_of_k():
    from camelid.rlhf.rewards import Prompt
    from camelid.rlhf.rs import best_of_k, selection_scores, update_pool

    scores = torch.tensor([[0.1, 0.9, 0.5], [-1.0, -2.0, -0.5]])
    assert best_of_k(scores).tolist() == [1, 2]
    prompts = [Prompt([{"role": "user", "content": "a"}]), Prompt([{"role": "user", "content": "b"}])]
    pool = {}
    assert update_pool(pool, prompts, [["x", "y", "z"], ["p", "q", "r"]], scores, 1) == 2
    assert [v["answer"] for v in pool.values()] == ["y", "r"]
    # a later iteration replaces a prompt's answer only with a better one: the pool keeps the best of all
    assert update_pool(pool, prompts, [["u", "v", "w"], ["s", "t", "o"]], torch.tensor([[0.2, 0.3, 0.1],
                                                                                          [0.0, -3.0, -3.0]]), 2) == 1
    assert [(v["answer"], v["iteration"]) for v in pool.values()] == [("y", 1), ("s", 2)]
    # with a floor, the best of a prompt's answers enters only if it reaches it
    floor = {}
    floored = selection_scores(scores, torch.zeros_like(scores, dtype=torch.bool), min_reward=0.0)
    assert update_pool(floor, prompts, [["x", "y", "z"], ["p", "q", "r"]], floored, 1) == 1
    assert [v["answer"] for v in floor.values()] == ["y"]
    # with a gain over the prompt's mean: [0.1, 0.9, 0.5] has mean 0.5, best 0.9 (+0.4); [-1, -2, -0.5]: -1.167
    # mean, best -0.5 (+0.667); a prompt whose answers all scored alike never enters
    gain = {}
    assert update_pool(gain, prompts, [["x", "y", "z"], ["p", "q", "r"]], scores, 1, min_gain=0.5) == 1
    assert [v["answer"] for v in gain.values()] == ["r"]
    assert update_pool({}, prompts[:1], [["x", "x", "x"]], torch.tensor([[0.3, 0.3, 0.3]]), 1, min_gain=0.0) == 0


def test_rs_stage_raises_the_reward(smoke_run, tmp_path):
    from camelid.rlhf.rs import load_rs_config, rejection_sampling

    cfg = load_rs_config(None, [f"model.init_from={smoke_run[0] / 'pretrain' / 'model'}", "rs.iterations=2",
                                "rs.prompts_per_iteration=24", "rs.k=4", "rs.max_new_tokens=16", "rs.eval_n=8",
                                "rs.batch_size=8", "rs.epochs=2", "train.lr=3e-3", "log.progress=false"])
    summary = rejection_sampling(cfg, tmp_path / "rs", scorer=ShortAnswers())
    h = summary["history"]
    assert len(h) == 2 and all(r["best_mean"] >= r["sample_mean"] for r in h)
    assert h[1]["pool_mean"] >= h[0]["pool_mean"] - 1e-6 or h[1]["pool_size"] > h[0]["pool_size"]
    assert (tmp_path / "rs" / "model" / "config.json").exists()
    for r in h:  # the judges scored the same samples; curves for n = 1..K (tests/test_gold.py has them by hand)
        assert r["best_of_n"]["n"] == [1, 2, 3, 4] and 0 <= r["gold_sample_mean"] <= 1
        assert r["best_of_n"]["proxy_best"][-1] == pytest.approx(r["best_mean"], rel=1e-6)  # float64 vs float32 mean
        assert r["gold_best_mean"] == r["best_of_n"]["gold_best"][-1]
    assert (tmp_path / "rs" / "iter_2" / "best_of_n.png").exists()
    again = rejection_sampling(cfg, tmp_path / "rs", scorer=ShortAnswers())  # finished iterations are skipped
    assert again["history"] == h


def test_rs_stage_with_logprob_weight_says_why_its_pool_is_empty(smoke_run, tmp_path, capsys):
    """The regularized pick runs through the stage; a floor no answer reaches leaves the policy as it was and
    says which setting emptied the pool (not that the answers were cut off)."""
    from camelid.rlhf.rs import load_rs_config, rejection_sampling

    cfg = load_rs_config(None, [f"model.init_from={smoke_run[0] / 'pretrain' / 'model'}", "rs.iterations=1",
                                "rs.prompts_per_iteration=8", "rs.k=2", "rs.max_new_tokens=16", "rs.eval_n=4",
                                "rs.batch_size=8", "rs.logprob_weight=0.5", "rs.min_reward=1.0", "log.progress=false"])
    summary = rejection_sampling(cfg, tmp_path / "rs", scorer=ShortAnswers())  # rewards <= 0: none reaches 1.0
    assert summary["history"][0]["pool_size"] == 0
    assert "no prompt's best answer passed rs.min_reward / rs.min_gain" in capsys.readouterr().out


def test_reward_model_from_lm_owns_its_weights():
    from camelid.model import ModelArgs, Transformer
    from camelid.reward_model import RewardModel
    from camelid.rlhf.ppo import ValueModel

    lm = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=50, ffn_hidden_dim=64))
    rm = RewardModel.from_lm(lm)
    vm = ValueModel.from_reward_model(rm)
    for name, p in lm.named_parameters():
        if not name.startswith("output"):
            assert p.data_ptr() != dict(rm.named_parameters())[name].data_ptr() != dict(vm.named_parameters())[name].data_ptr()
    x = torch.randint(3, 50, (3, 7))
    vm.rescale(vm.token_scores(x).flatten())
    v = vm.token_scores(x).flatten()
    assert abs(v.mean().item()) < 1e-4 and abs(v.std().item() - 1) < 1e-3


def test_ppo_resumes_from_its_last_iteration(smoke_run, tmp_path):
    from camelid.rlhf.ppo import load_ppo_config, ppo

    sets = [f"model.init_from={smoke_run[0] / 'pretrain' / 'model'}", "ppo.rollout_batch=8", "ppo.minibatch=8",
            "ppo.max_new_tokens=8", "ppo.eval_every=0", "ppo.eval_n=4", "train.lr=1e-3", "log.progress=false"]
    ppo(load_ppo_config(None, sets + ["ppo.iterations=2"]), tmp_path / "a", scorer=ShortAnswers())
    ppo(load_ppo_config(None, sets + ["ppo.iterations=3"]), tmp_path / "a", resume=True, scorer=ShortAnswers())
    ppo(load_ppo_config(None, sets + ["ppo.iterations=3"]), tmp_path / "b", scorer=ShortAnswers())
    rows = lambda d: [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["iteration"] for r in rows("a")] == [1, 2, 3]
    assert [r["reward"] for r in rows("a")] == [r["reward"] for r in rows("b")]  # the resumed run is the same run


def test_gold_selection_prompts_are_validation_dialogs_not_rollouts_or_test():
    from camelid.rlhf.ppo import PPOSection, heldout_prompts
    from camelid.rlhf.rewards import load_prompts
    from camelid.tasks import make_dialogs

    train = load_prompts("proving-ground", "train", n=600, seed=17)
    gold = heldout_prompts(PPOSection(select="gold", eval_n=150), train)
    assert len(gold) == 150 and all(p.example is not None for p in gold)
    assert not {repr(p.messages) for p in gold} & {repr(p.messages) for p in train}  # no rollout prompt
    # every validation question is one of the train split's (its items), none of the test split's
    train_q = {ex.messages[-1]["content"] for ex in make_dialogs("train", 6000, seed=1)}
    test_q = {ex.messages[-1]["content"] for ex in make_dialogs("test", 6000, seed=1)}
    assert all(p.messages[-1]["content"] not in test_q for p in gold)
    assert sum(p.messages[-1]["content"] in train_q for p in gold) > 100
    by_reward = heldout_prompts(PPOSection(select="reward", eval_n=40), train)
    assert [p.messages for p in by_reward] == [p.messages for p in load_prompts("proving-ground", "test", 40, 1)]


def test_ppo_keeps_the_policy_the_judges_score_best(smoke_run, tmp_path):
    from camelid.rlhf.ppo import load_ppo_config, ppo

    cfg = load_ppo_config(None, [
        f"model.init_from={smoke_run[0] / 'sft' / 'model'}", "ppo.iterations=4", "ppo.rollout_batch=16",
        "ppo.minibatch=8", "ppo.group_size=4", "ppo.max_new_tokens=12", "ppo.eval_every=1", "ppo.eval_n=24",
        "ppo.patience=0", "ppo.select=gold", "train.lr=3e-3", "train.micro_batch=8", "log.progress=false"])
    summary = ppo(cfg, tmp_path / "ppo", scorer=ShortAnswers())
    val = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in val if r.get("split") == "val"]
    assert [r["iteration"] for r in val] == [0, 1, 2, 3, 4]
    golds = [r["gold"] for r in val]
    best = golds.index(max(golds))  # the first of equals: a later policy must do better to be kept
    assert summary["selected_by"] == "gold" and summary["best_iteration"] == best
    assert summary["heldout_gold"] == golds[best]  # the kept policy answers as it did when it was chosen


def test_gold_selection_needs_the_proving_ground(tmp_path):
    from camelid.config import ConfigError
    from camelid.rlhf.ppo import load_ppo_config

    with pytest.raises(ConfigError, match="ppo.select"):
        load_ppo_config(None, ["ppo.select=judges"])
    with pytest.raises(ConfigError, match="proving-ground"):
        load_ppo_config(None, ["ppo.select=gold", f"ppo.prompts={tmp_path / 'p.jsonl'}"])
