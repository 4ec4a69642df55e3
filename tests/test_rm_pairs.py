"""Reward-model pairs and checks on exact values: the judges' pairs of a prompt's answers, task-balanced
collection, Spearman's rank correlation with ties, and the per-task shortcut check."""

import pytest

from camelid.tasks import make_dialogs
from camelid.train.rm_checks import ranks, shortcut_check, spearman
from camelid.train.rm_pairs import balanced_pairs, rated_pairs


def test_rated_pairs_are_every_two_answers_the_judge_tells_apart():
    ex = make_dialogs("test", 1, seed=0, tasks=["parity"])[0]
    right, wrong = ex.reference, ("even" if ex.reference == "odd" else "odd")
    pairs = rated_pairs([ex], [[right, wrong, right, f"it is {right}"]], "helpful")
    # distinct answers: right (1.0), wrong (0.1), "it is right" (0.8): three pairs, each by its gap
    got = sorted((p.chosen, p.rejected, p.rating) for p in pairs)
    assert got == sorted([(right, wrong, "significantly_better"), (right, f"it is {right}", "negligibly_better"),
                          (f"it is {right}", wrong, "better")])
    assert all(p.task == "parity" and p.scores["chosen"] > p.scores["rejected"] for p in pairs)
    assert rated_pairs([ex], [[right, right]], "helpful") == []  # a tie is no preference


class Echo:
    """A stand-in policy for `generate`: see the monkeypatch below."""


def test_balanced_pairs_give_each_task_its_share(monkeypatch):
    # A policy that answers parity right or wrong at random but every other task with the same wrong answer:
    # only parity prompts yield pairs, so the collection keeps drawing parity prompts and no others.
    import random

    import camelid.train.rm_pairs as rp

    def fake_candidates(models, tokenizer, examples, samples, temperatures, seed, max_new_tokens=48, reference=False):
        rng = random.Random(seed)
        return [[rng.choice(["odd", "even"]) if ex.task == "parity" else "no" for _ in range(samples)]
                for ex in examples]

    monkeypatch.setattr(rp, "candidate_answers", fake_candidates)
    pairs = balanced_pairs([Echo()], None, "helpful", "train", per_task=20, max_prompts=200, seed=0, samples=2)
    assert len(pairs) == 20 and {p.task for p in pairs} == {"parity"}
    assert all(p.rating == "significantly_better" for p in pairs)


def test_ranks_and_spearman_with_ties():
    assert ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ranks x: [1, 2, 3], y: [1.5, 1.5, 3] -> centred [-1, 0, 1] and [-0.5, -0.5, 1]: 1.5 / sqrt(2 * 1.5)
    assert spearman([1, 2, 3], [0, 0, 1]) == pytest.approx(1.5 / (2 * 1.5) ** 0.5)
    assert spearman([1, 2, 3], [5, 5, 5]) is None  # the judge cannot tell the answers apart


def test_shortcut_check_averages_within_prompt_correlations_per_task():
    got = shortcut_check(["parity", "parity", "count", "count"],
                         [[0.1, 0.9], [0.5, 0.2], [1.0, 2.0, 3.0], [1.0]],
                         [[0.0, 1.0], [0.0, 1.0], [1.0, 1.0, 1.0], [1.0]])
    # parity: one prompt ordered as the judge (+1), one reversed (-1); count: no prompt the judge tells apart
    assert got == {"parity": {"spearman": 0.0, "prompts": 2}}
