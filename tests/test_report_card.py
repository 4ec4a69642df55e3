"""The report card's paired columns, from hand-made per-prompt results (no model: the writer is pure)."""

import json
import math

import pytest

from camelid.report_card import load_per_prompt, load_report_card, render, write_report_card


def stage(name, correct, score, **kw):
    return {"name": name, "accuracy": sum(correct) / len(correct), "score": sum(score) / len(score),
            "refusal_rate": 1.0, "reward": 0.25, "kl": 0.5, "gatt_adherence": 0.5, "seconds": 10.0,
            "per_prompt": {"task": ["add", "parity", "safety", "add"], "correct": correct, "score": score}, **kw}


def test_stages_after_sft_get_paired_differences_with_intervals(tmp_path):
    stages = [stage("base", [0, 0, 0, 0], [0.0, 0.1, 0.0, 0.0]),
              stage("sft", [0, 1, 0, 0], [0.5, 1.0, 0.0, 0.5]),
              {"name": "rm", "seconds": 5.0, "rm_accuracy": {"helpful": 0.75, "safety": 0.875}},
              stage("rs", [1, 1, 0, 1], [1.0, 1.0, 0.0, 1.0])]
    md = write_report_card(stages, tmp_path, {"smoke": True, "n": 4})
    card = load_report_card(tmp_path)
    by = {s["name"]: s for s in card["stages"]}
    assert card["n"] == 4 and [s["name"] for s in card["stages"]] == ["base", "sft", "rm", "rs"]
    for name in ("base", "sft", "rm"):
        assert by[name]["accuracy_vs_sft"] is None and by[name]["score_vs_sft"] is None
    assert by["rm"]["accuracy"] is None and by["rm"]["score"] is None
    assert "per_prompt" not in by["rs"]  # the vectors live in the sidecar
    # accuracy: d = [1, 0, 0, 1], mean 0.5, sd sqrt(1/3): 0.5 ± 0.98/sqrt(3)
    acc = by["rs"]["accuracy_vs_sft"]
    half = 0.98 / math.sqrt(3)
    assert acc["n"] == 4 and acc["diff"] == 0.5
    assert (acc["low"], acc["high"]) == (pytest.approx(0.5 - half, abs=1e-12), pytest.approx(0.5 + half, abs=1e-12))
    # score: d = [0.5, 0, 0, 0.5] -> half of the above
    sc = by["rs"]["score_vs_sft"]
    assert sc["diff"] == 0.25 and sc["high"] == pytest.approx(0.25 + half / 2, abs=1e-12)
    assert by["rs"]["score"] == 0.75

    lines = md.splitlines()
    assert lines[0] == ("| stage | accuracy | Δ accuracy vs SFT [95% CI] | score | Δ score vs SFT [95% CI] | "
                        "refusals (harmful) | reward | KL to SFT | GAtt turn 3+ | time |")
    assert lines[2] == "| base | 0.0% | – | 0.025 | – | 100.0% | +0.250 | 0.500 | 50.0% | 10s |"
    assert lines[4] == "| rm | – | – | – | – | – | – | – | – | 5s |"
    assert lines[5] == ("| rs | 75.0% | +50.0 [-6.6, +106.6] | 0.750 | +0.250 [-0.033, +0.533] | 100.0% | +0.250 "
                        "| 0.500 | 50.0% | 10s |")
    assert "same 4 held-out prompts" in md and "reward models (rm), held-out pair accuracy: helpful 75.0%" in md
    assert render(card["stages"]) == md == (tmp_path / "report_card.md").read_text()

    prompts = load_per_prompt(tmp_path)
    assert prompts["task"] == ["add", "parity", "safety", "add"]
    assert list(prompts["stages"]) == ["base", "sft", "rs"]
    assert prompts["stages"]["rs"] == {"correct": [1, 1, 0, 1], "score": [1.0, 1.0, 0.0, 1.0]}
    assert json.loads((tmp_path / "report_card_prompts.json").read_text()) == prompts


def test_a_card_without_per_prompt_results_still_renders(tmp_path):
    """Cards written before the paired columns (no score, no comparisons) render with dashes."""
    old = [{"name": "sft", "accuracy": 0.25, "refusal_rate": 1.0, "reward": 0.352, "kl": 0.0,
            "gatt_adherence": 0.194, "seconds": 71.0}]
    md = render(old)
    assert md.splitlines()[2] == "| sft | 25.0% | – | – | – | 100.0% | +0.352 | 0.000 | 19.4% | 71s |"
    assert "Δ vs SFT:" not in md
    write_report_card([{k: v for k, v in old[0].items()}], tmp_path)
    assert not (tmp_path / "report_card_prompts.json").exists()
