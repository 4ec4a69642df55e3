"""The main job's whole chain at toy size: every stage ran and the report card has its layout."""

import json


def test_report_card_covers_every_stage(smoke_run):
    out, stdout = smoke_run
    card = json.loads((out / "report_card.json").read_text())
    names = [s["name"] for s in card["stages"]]
    assert names == ["base", "sft", "rm", "rs", "ppo", "gatt"]
    for stage in card["stages"]:
        assert {"name", "accuracy", "refusal_rate", "reward", "kl", "gatt_adherence", "seconds"} <= set(stage)
    by = {s["name"]: s for s in card["stages"]}
    assert by["rm"]["accuracy"] is None and set(by["rm"]["rm_accuracy"]) == {"helpful", "safety"}
    assert by["sft"]["kl"] == 0.0  # the SFT model against itself
    assert all(by[n]["reward"] is not None for n in ("base", "sft", "rs", "ppo", "gatt"))
    md = (out / "report_card.md").read_text()
    assert "| stage | accuracy |" in md and "| gatt |" in md
    assert "report card" in stdout
    for d in ("rm-helpful", "rm-safety", "rs", "ppo", "gatt"):
        assert (out / d / "model" / "config.json").exists(), d
    assert (out / "rm-helpful" / "rm_report.json").exists() and (out / "rm-helpful" / "scores.png").exists()
