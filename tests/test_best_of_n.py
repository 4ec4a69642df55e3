"""Best of n on exact tensors: the pick weighs log pi in the reward model's preference units, as RS does."""

import torch

from camelid.rlhf.best_of_n import Candidates, pick
from camelid.rlhf.rewards import Prompt, RewardScorer, preference_scale


class FixedReward:
    """Calibrated rewards given in advance, and the calibration's scale (a known reward has none: 1)."""

    def __init__(self, reward: list[float], scale: float | None = None):
        self.reward = torch.tensor(reward)
        if scale is not None:
            self.preference_scale = scale

    def score(self, prompts, answers):
        return {"combined": self.reward, "helpful": self.reward, "safety": None}


def candidates(logp: list[list[float]], gold: list[list[float]]) -> Candidates:
    prompts = [Prompt([{"role": "user", "content": f"q{i}"}]) for i in range(len(logp))]
    return Candidates(prompts, [f"a{i}" for i in range(len(logp) * len(logp[0]))], torch.tensor(logp),
                      torch.tensor(gold))


def test_pick_weighs_log_pi_in_preference_units():
    # prompt 0: answer 1 has the higher reward by 0.1 calibrated = 1 preference logit at scale 0.1, and is less
    # likely by 2 nats; prompt 1: reward higher by 0.05 (0.5 logits), less likely by 0.2 nats
    cands = candidates([[-1.0, -3.0], [-1.0, -1.2]], [[1.0, 0.0], [0.0, 1.0]])
    reward = [0.0, 0.1, 0.0, 0.05]
    # reward + 1 * 0.1 * log pi: [-0.1, -0.2] -> 0; [-0.1, -0.07] -> 1
    assert pick(cands, FixedReward(reward, scale=0.1), 1.0).tolist() == [0, 1]
    # the same weight against the calibrated logits themselves (scale 1): log pi decides both
    assert pick(cands, FixedReward(reward), 1.0).tolist() == [0, 0]
    # no weight: the reward alone
    assert pick(cands, FixedReward(reward, scale=0.1), 0.0).tolist() == [1, 1]
    assert cands.correct().tolist() == [[1, 0], [0, 1]]


def test_preference_scale_is_the_helpfulness_calibration():
    from camelid.model import ModelArgs
    from camelid.reward_model import RewardModel

    rm = RewardModel(ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=32, max_seq_len=16))
    rm.calibration = {"scale": 0.049, "bias": -0.4}
    assert preference_scale(RewardScorer(rm, None, tokenizer=None)) == 0.049
    rm.calibration = {"scale": -0.2, "bias": 0.0}  # an RM whose scores run against the judges: still a weight
    assert preference_scale(RewardScorer(rm, None, tokenizer=None)) == 0.2
    assert preference_scale(FixedReward([0.0])) == 1.0
