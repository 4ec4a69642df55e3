"""The report card's paired comparison (camelid.tasks.stats) on hand-computed numbers."""

import math

import pytest

from camelid.tasks.stats import (PairedDiff, format_diff, interval, paired_diff, paired_diff_by_prompt,
                                 pooled_paired_diff)


def close(got: PairedDiff, diff: float, half: float, n: int) -> None:
    assert got.n == n
    assert got.diff == pytest.approx(diff, abs=1e-12)
    assert got.low == pytest.approx(diff - half, abs=1e-12) and got.high == pytest.approx(diff + half, abs=1e-12)


def test_paired_interval_by_hand():
    # d = [1, 0, 0, 1]: mean 1/2; squared deviations 4 x 1/4 = 1, sd = sqrt(1 / 3) (n - 1 = 3);
    # half-width 1.96 * sqrt(1/3) / sqrt(4) = 0.98 / sqrt(3) = 0.565803...
    got = paired_diff([1, 1, 0, 1], [0, 1, 0, 0])
    close(got, 0.5, 0.98 / math.sqrt(3), 4)
    assert got.low == pytest.approx(-0.0658032638, abs=1e-9) and got.high == pytest.approx(1.0658032638, abs=1e-9)
    assert got.to_dict() == {"diff": got.diff, "low": got.low, "high": got.high, "n": 4}
    # the order is a - b: swapping the models mirrors the interval
    close(paired_diff([0, 1, 0, 0], [1, 1, 0, 1]), -0.5, 0.98 / math.sqrt(3), 4)
    # graded scores: d = [0.5, 0.25, -0.25, 0.5], mean 1/4; deviations 1/4, 0, -1/2, 1/4 -> 3/8, sd sqrt(1/8)
    close(paired_diff([1.0, 0.5, 0.25, 1.0], [0.5, 0.25, 0.5, 0.5]), 0.25, 1.96 * math.sqrt(1 / 8) / 2, 4)


def test_pooled_seeds_concatenate_the_pairs():
    # d = [1, 0, 0, 1] + [0, -1]: mean 1/6; squared deviations (25+1+1+25+1+49)/36 = 17/6, sd^2 = 17/30;
    # half-width 1.96 * sqrt(17/30) / sqrt(6) = 1.96 * sqrt(17/180)
    got = pooled_paired_diff([([1, 1, 0, 1], [0, 1, 0, 0]), ([1, 0], [1, 1])])
    close(got, 1 / 6, 1.96 * math.sqrt(17 / 180), 6)
    assert pooled_paired_diff([([1, 1, 0, 1], [0, 1, 0, 0])]) == paired_diff([1, 1, 0, 1], [0, 1, 0, 0])


def test_by_prompt_pooling_averages_each_prompt_over_the_seeds():
    # seeds' d = [1, 0, 0] and [1, 1, 0] -> per prompt [1, 1/2, 0]: mean 1/2, sd 1/2, n = 3 prompts
    b = [0, 0, 1]
    got = paired_diff_by_prompt([([1, 0, 1], b), ([1, 1, 1], b)])
    close(got, 0.5, 1.96 * 0.5 / math.sqrt(3), 3)
    with pytest.raises(ValueError, match="same prompts"):
        paired_diff_by_prompt([([1, 0, 1], b), ([1, 0], [0, 0])])


def test_no_difference_is_a_zero_interval_and_too_few_pairs_fail():
    assert paired_diff([1, 0, 0.5], [1, 0, 0.5]) == PairedDiff(0.0, 0.0, 0.0, 3)
    assert paired_diff([1, 1, 1], [0, 0, 0]) == PairedDiff(1.0, 1.0, 1.0, 3)  # constant d: no spread either
    for a, b in (([1], [0]), ([], [])):
        with pytest.raises(ValueError, match="at least 2 pairs"):
            paired_diff(a, b)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        interval([0.5])
    with pytest.raises(ValueError, match="one b per a: got 3 and 2"):
        paired_diff([1, 0, 1], [1, 0])


def test_format_in_percentage_points():
    assert format_diff(PairedDiff(0.022, 0.004, 0.04, 540)) == "+2.2 [+0.4, +4.0]"
    assert format_diff({"diff": -0.05, "low": -0.081, "high": -0.019, "n": 540}) == "-5.0 [-8.1, -1.9]"
    assert format_diff(PairedDiff(0.0123, -0.0012, 0.0258, 540), scale=1, digits=3) == "+0.012 [-0.001, +0.026]"
    assert format_diff(None) == "–"
