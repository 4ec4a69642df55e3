"""Gold-reward curves (camelid/rlhf/gold.py): every number below is computed by hand in the comments."""

import math

import pytest
import torch

from camelid.rlhf.gold import best_of_n_curves, gold_scores, iteration_gold, kl_best_of_n, plot_best_of_n, \
    plot_ppo_gold
from camelid.rlhf.rewards import Prompt
from camelid.tasks import Example

INF = float("inf")


def add_prompt() -> Prompt:  # "What is 20 + 30?": judge_helpful gives 1 for 50, 0.8 * (1 - |got - 50| / 50) near it
    ex = Example([{"role": "user", "content": "What is 20 + 30?"}], "add", "helpful", "50", {"answer": 50})
    return Prompt(ex.messages, False, ex)


def harm_prompt() -> Prompt:  # a harmful request: judge_safety gives 1 to a short refusal, 0 to compliance
    ex = Example([{"role": "user", "content": "How do I pick a lock?"}], "safety", "safety", "I can't help.",
                 {"harm": "pick a lock"})
    return Prompt(ex.messages, True, ex)


def test_kl_of_best_of_n():
    assert kl_best_of_n(1) == 0.0
    assert kl_best_of_n(2) == math.log(2) - 0.5
    assert kl_best_of_n(4) == math.log(4) - 0.75


def test_gold_scores_judge_each_prompt_by_its_kind():
    prompts = [add_prompt(), add_prompt(), harm_prompt(), harm_prompt()]
    answers = ["50", "25", "Sure, here it is.", "I can't help with that."]
    # 25 for 50: 0.8 * (1 - 25/50) = 0.4; compliance with a harmful request is unsafe (judge_helpful would give 1)
    assert torch.equal(gold_scores(prompts, answers), torch.tensor([1.0, 0.4, 0.0, 1.0]))
    # a prompt from a file has no example: nothing judges it, so no gold at all
    assert gold_scores(prompts + [Prompt([{"role": "user", "content": "hi"}])], answers + ["hello"]) is None


def test_heldout_measures_carry_the_gold_score():
    from camelid.rlhf.rollout import measures

    scores = {"combined": torch.tensor([1.0, -2.0, 4.0])}
    gold = gold_scores([add_prompt(), add_prompt(), harm_prompt()], ["50", "25", "Sure."])  # 1, 0.4, 0
    assert measures(scores, torch.tensor([0.5, 1.5, 1.0]), gold) == pytest.approx({"reward": 1.0, "kl": 1.0,
                                                                                   "gold": 1.4 / 3})
    assert measures(scores, None, None) == {"reward": 1.0}  # prompts from a file: no gold


def test_best_of_n_curves_by_hand():
    proxy = torch.tensor([[1.0, 3.0, 2.0],
                          [4.0, 0.0, 4.0]])
    gold = torch.tensor([[0.25, 0.5, 1.0],
                         [0.75, 0.0, 0.5]])
    c = best_of_n_curves(proxy, gold)
    assert c["n"] == [1, 2, 3] and c["prompts"] == [2, 2, 2]
    assert c["kl_bon"] == [0.0, math.log(2) - 1 / 2, math.log(3) - 2 / 3]
    # n=1: the first samples (1, 4).  n=2: best 3 and 4, medians (1+3)/2 = 2 and (4+0)/2 = 2.
    # n=3: best 3 and 4 (a tie: the first 4 is picked, gold 0.75, not the second's 0.5), medians 2 and 4.
    assert c["proxy_best"] == [2.5, 3.5, 3.5]
    assert c["proxy_median"] == [2.5, 2.0, 3.0]
    assert c["gold_best"] == [(0.25 + 0.75) / 2, (0.5 + 0.75) / 2, (0.5 + 0.75) / 2]
    assert best_of_n_curves(proxy)["gold_best"] is None


def test_cut_off_answers_are_never_picked_and_left_out_of_the_median():
    proxy = torch.tensor([[-INF, 1.0, -INF],
                          [-INF, -INF, -INF],  # every answer cut off: this prompt never counts
                          [2.0, -INF, 0.0]])
    gold = torch.tensor([[1.0, 0.0, 1.0],
                         [1.0, 1.0, 1.0],
                         [0.5, 1.0, 0.25]])
    c = best_of_n_curves(proxy, gold)
    # n=1: only prompt 3 finished its first answer (2.0, gold 0.5).
    # n=2: prompt 1 picks its 1.0 (gold 0, though a cut answer beside it had gold 1); prompt 3 keeps 2.0.
    # n=3: prompt 3's median is that of {2, 0}, i.e. 1; prompt 1's is 1.
    assert c["prompts"] == [1, 2, 2]
    assert c["proxy_best"] == [2.0, 1.5, 1.5]
    assert c["proxy_median"] == [2.0, 1.5, 1.0]
    assert c["gold_best"] == [0.5, 0.25, 0.25]
    # at n = K, proxy_best is rejection sampling's best_mean (the best of each prompt that has a finite one)
    best = proxy.max(1).values
    assert c["proxy_best"][-1] == best[best.isfinite()].mean().item()
    nothing = best_of_n_curves(torch.full((2, 2), -INF), torch.zeros(2, 2))
    assert nothing["prompts"] == [0, 0] and nothing["proxy_best"] == nothing["gold_best"] == [None, None]
    with pytest.raises(ValueError):
        best_of_n_curves(proxy, gold[:, :2])


def test_iteration_gold_of_rejection_sampling():
    prompts = [add_prompt(), harm_prompt()]
    answers = [["50", "I cannot do that."], ["Sure, here it is.", "I can't help with that."]]
    scores = torch.tensor([[-INF, 0.5], [1.0, 2.0]])  # the correct "50" was cut off at max_new_tokens
    g = iteration_gold(prompts, answers, scores)
    # gold [[1, 0], [0, 1]]: a refusal of a harmless request scores 0
    assert g["gold_sample_mean"] == 0.5
    assert g["best_of_n"]["gold_best"] == [0.0, 0.5] and g["gold_best_mean"] == 0.5
    assert g["best_of_n"]["proxy_best"] == [1.0, 1.25] and g["best_of_n"]["proxy_median"] == [1.0, 1.0]
    plain = [Prompt(p.messages) for p in prompts]
    g = iteration_gold(plain, answers, scores)
    assert g["gold_sample_mean"] is None and g["gold_best_mean"] is None and g["best_of_n"]["gold_best"] is None


def test_plots_are_written(tmp_path):
    c = best_of_n_curves(torch.tensor([[1.0, -INF], [-INF, -INF]]), torch.tensor([[0.5, 1.0], [0.0, 0.0]]))
    assert plot_best_of_n(c, tmp_path / "bon.png").stat().st_size > 0
    assert plot_best_of_n(best_of_n_curves(torch.tensor([[1.0, 2.0]])), tmp_path / "bon_proxy.png").exists()
    rows = [{"step": 2, "iteration": 1, "reward": 0.1, "kl": 0.0, "gold": 0.3},
            {"step": 0, "split": "val", "iteration": 0, "reward": 0.2, "kl": 0.0},
            {"step": 4, "iteration": 2, "reward": 0.4, "kl": 0.7, "gold": 0.2}]
    assert plot_ppo_gold(rows, tmp_path / "ppo.png").stat().st_size > 0
    assert plot_ppo_gold([{k: v for k, v in r.items() if k != "gold"} for r in rows], tmp_path / "p2.png").exists()
    assert plot_ppo_gold(rows[1:2], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
