"""The main job's whole chain at toy size: every stage ran and the report card has its layout."""

import json


def test_report_card_covers_every_stage(smoke_run):
    out, stdout = smoke_run
    card = json.loads((out / "report_card.json").read_text())
    names = [s["name"] for s in card["stages"]]
    assert names == ["base", "sft", "rm", "rs", "rm-2", "rs-2", "ppo", "gatt", "sft best-of-4"]  # two RLHF rounds
    for stage in card["stages"]:
        assert {"name", "accuracy", "refusal_rate", "reward", "kl", "gatt_adherence", "seconds"} <= set(stage)
    by = {s["name"]: s for s in card["stages"]}
    assert by["rm"]["accuracy"] is None and set(by["rm"]["rm_accuracy"]) == {"helpful", "safety"}
    assert set(by["rm-2"]["rm_accuracy"]) == {"helpful"}  # round 2 retrains the helpfulness reward model only
    report = json.loads((out / "rm-helpful-2" / "rm_report.json").read_text())
    assert {"accuracy_on_policy", "shortcuts"} <= set(report)
    for stage in ("rs", "rs-2", "ppo", "gatt", "sft best-of-4"):  # paired with SFT on the same prompts
        assert by[stage]["accuracy_vs_sft"]["n"] == card["n"]
    assert by["sft"]["kl"] == 0.0  # the SFT model against itself
    assert all(by[n]["reward"] is not None for n in ("base", "sft", "rs", "rs-2", "ppo", "gatt"))
    md = (out / "report_card.md").read_text()
    assert "| stage | accuracy |" in md and "| gatt |" in md
    assert "report card" in stdout
    for d in ("rm-helpful", "rm-safety", "rs", "rm-helpful-2", "rs-2", "ppo", "gatt"):
        assert (out / d / "model" / "config.json").exists(), d
    assert (out / "rm-helpful" / "rm_report.json").exists() and (out / "rm-helpful" / "scores.png").exists()


def test_print_commands_reproduce_each_stage_config(tmp_path, capsys):
    """Each printed command's recipe and --set list builds the config the quickstart itself runs."""
    import shlex

    from camelid.config import load_config
    from camelid.quickstart import PIPELINE, print_commands, route_overrides, stage_classes, step_config

    sets = ["rm.train.lr=1e-3", "sft.sft.dialogs=99", "ppo.ppo.beta=0.2"]
    print_commands(tmp_path, smoke=True, overrides=sets)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("camelid ")]
    assert len(lines) == len(PIPELINE)
    routed = route_overrides(sets)
    for step, line in zip(PIPELINE, lines):
        if not step.stage:
            continue
        argv = shlex.split(line)
        assert argv[1] == step.stage and argv[argv.index("--out") + 1] == str(tmp_path / step.name)
        recipe = argv[argv.index("--config") + 1]
        over = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
        from_cli = load_config(recipe, over, cls=stage_classes()[step.stage])
        assert from_cli.to_toml() == step_config(step, tmp_path, True, routed).to_toml(), step.name


def test_set_reaches_every_stage_by_name_or_group(tmp_path):
    import pytest

    from camelid.config import ConfigError
    from camelid.quickstart import PIPELINE, route_overrides, step_config

    routed = route_overrides(["rm.train.lr=0.125", "rm-safety.rm.margin=large", "sft.train.lr=0.5",
                              "pretrain.train.max_steps=7", "gatt.sft.gatt=3"])
    cfg = {st.name: step_config(st, tmp_path, False, routed) for st in PIPELINE if st.stage}
    assert cfg["rm-helpful"].train.lr == cfg["rm-safety"].train.lr == 0.125
    assert (cfg["rm-helpful"].rm.margin, cfg["rm-safety"].rm.margin) == ("small", "large")
    assert (cfg["rm-helpful"].rm.kind, cfg["rm-safety"].rm.kind) == ("helpful", "safety")
    assert cfg["sft"].train.lr == 0.5 and cfg["gatt"].train.lr == 5e-4  # sft's setting stays in sft
    assert cfg["gatt"].sft.gatt == 3 and cfg["pretrain"].train.max_steps == 7
    assert cfg["ppo"].model.init_from == str(tmp_path / "rs-2" / "model")  # round 2's policy
    assert (cfg["rm-helpful-2"].rm.policy, cfg["rm-helpful-2"].rm.previous) == (
        str(tmp_path / "rs" / "model"), str(tmp_path / "rm-helpful" / "pairs_train.jsonl"))
    with pytest.raises(ConfigError, match="name the stage first"):
        route_overrides(["train.lr=1"])
    with pytest.raises(ConfigError, match="sft.train.lrr: unknown key; did you mean sft.train.lr"):
        step_config(PIPELINE[3], tmp_path, False, route_overrides(["sft.train.lrr=1"]))
