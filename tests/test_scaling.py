"""Scaling laws: Chinchilla's Table 3, the parametric laws, the approach-3 fit, inference-aware sizing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from camelid.errors import CamelidError
from camelid.scaling import fit
from camelid.scaling.inference import breakeven_served, inference_optimal, inference_table, total_flops
from camelid.scaling.laws import (APPROACH_1, APPROACH_2, BESIROGLU, CHINCHILLA, CHINCHILLA_TABLE3,
                                  ParametricLaw, compute_optimal, fmt_count, parse_count, training_flops)


def _rel(a, b):
    return abs(a / b - 1)


# ----------------------------------------------------------------------------------------- published laws


@pytest.mark.parametrize("n, c, d", CHINCHILLA_TABLE3)
def test_approach1_reproduces_table3_within_10_percent(n, c, d):
    got_n, got_d = APPROACH_1.optimal_for_flops(c)
    assert _rel(got_n, n) < 0.10 and _rel(got_d, d) < 0.10
    # and in the other direction: the budget whose optimum is the table's model
    assert _rel(APPROACH_1.flops_for_params(n), c) < 0.10


@pytest.mark.parametrize("n, c, d", CHINCHILLA_TABLE3)
def test_approach2_close_to_table3(n, c, d):
    # Table 3 is approach 1's; approach 2's exponent 0.49 drifts to 11% at the table's ends
    got_n, got_d = APPROACH_2.optimal_for_flops(c)
    assert _rel(got_n, n) < 0.12 and _rel(got_d, d) < 0.12


def test_anchor_is_chinchilla_and_about_20_tokens_per_param():
    for m in (APPROACH_1, APPROACH_2):
        n, d = m.optimal_for_flops(training_flops(70e9, 1.4e12))
        assert n == pytest.approx(70e9) and d == pytest.approx(1.4e12)
    n, d = APPROACH_1.optimal_for_flops(1.21e20)
    assert 19 < d / n < 21


def test_published_and_refit_constants():
    assert CHINCHILLA.params() == {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    assert BESIROGLU.params() == {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}
    assert CHINCHILLA.a == pytest.approx(0.28 / 0.62)  # ~0.45 (paper Table 2: 0.46)
    assert BESIROGLU.a == pytest.approx(0.5126, abs=1e-3)  # equal scaling, as approaches 1-2


def test_published_fit_disagrees_refit_agrees():
    """DESIGN §1: the published fit implies 35-110 tokens per parameter at Table 3's budgets (1B-175B)."""
    for n, c, d in CHINCHILLA_TABLE3[1:5]:
        pn, pd = CHINCHILLA.optimal_for_flops(c)
        rn, rd = BESIROGLU.optimal_for_flops(c)
        assert 35 < pd / pn < 115
        assert 12 < rd / rn < 30


@pytest.mark.parametrize("law", [CHINCHILLA, BESIROGLU])
@pytest.mark.parametrize("c", [1e19, 5.88e23, 1e26])
def test_parametric_optimum_is_the_constrained_minimum(law, c):
    n, d = law.optimal_for_flops(c)
    assert training_flops(n, d) == pytest.approx(c)
    best = law.loss(n, d)
    for f in (0.9, 0.97, 1.03, 1.1):
        assert law.loss(n * f, c / (6 * n * f)) > best
    # inverses
    assert law.flops_for_params(n) == pytest.approx(c)
    assert law.flops_for_tokens(d) == pytest.approx(c)
    # the cheapest (N, D) for that loss is the same point
    n2, d2 = law.optimal_for_loss(best)
    assert n2 == pytest.approx(n, rel=1e-6) and d2 == pytest.approx(d, rel=1e-6)
    assert law.tokens_for_loss(n, best) == pytest.approx(d, rel=1e-9)


def test_compute_optimal_rows_and_errors():
    res = compute_optimal(params=7e9)
    assert [r["method"] for r in res["rows"]] == ["approach1", "approach2", "chinchilla", "besiroglu"]
    for r in res["rows"]:
        assert r["params"] == pytest.approx(7e9)
        assert r["loss_besiroglu"] == pytest.approx(BESIROGLU.loss(r["params"], r["tokens"]))
    res = compute_optimal(tokens=1.4e12)
    assert res["rows"][0]["params"] == pytest.approx(70e9)
    with pytest.raises(CamelidError):
        compute_optimal(flops=1e20, params=1e9)
    with pytest.raises(CamelidError):
        compute_optimal()


def test_parse_and_format_counts():
    assert parse_count("1.4T") == 1.4e12
    assert parse_count("70B") == 70e9
    assert parse_count("4M") == 4e6
    assert parse_count("5.88e23") == 5.88e23
    assert parse_count("1,000") == 1000
    for bad in ("", "seven", "-1", "1.4X"):
        with pytest.raises(CamelidError):
            parse_count(bad)
    assert fmt_count(1.4e12) == "1.4T" and fmt_count(6.738e9) == "6.74B"


# ----------------------------------------------------------------------------------------- the fit

TRUE = ParametricLaw("true", E=2.1, A=95.0, B=380.0, alpha=0.31, beta=0.29)


def _grid_points(law, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    ns = np.logspace(5.5, 8, 5)
    ds = np.logspace(7, 9.5, 5)
    n, d = (a.ravel() for a in np.meshgrid(ns, ds))
    loss = law.loss(n, d) * np.exp(noise * rng.standard_normal(n.size))
    return n, d, loss


def test_fit_recovers_known_parameters_exactly_without_noise():
    n, d, loss = _grid_points(TRUE)
    r = fit.fit_law(n, d, loss)
    for k, v in TRUE.params().items():
        assert getattr(r.law, k) == pytest.approx(v, rel=1e-3), k
    assert r.objective < 1e-10


def test_fit_recovers_parameters_from_noisy_losses():
    n, d, loss = _grid_points(TRUE, noise=0.003, seed=1)
    r = fit.fit_law(n, d, loss)
    assert r.law.alpha == pytest.approx(TRUE.alpha, abs=0.03)
    assert r.law.beta == pytest.approx(TRUE.beta, abs=0.03)
    assert r.law.E == pytest.approx(TRUE.E, abs=0.05)
    assert r.law.a == pytest.approx(TRUE.a, abs=0.03)
    assert r.rmse_log < 0.006


def test_fit_refuses_too_few_or_degenerate_points():
    with pytest.raises(CamelidError, match="at least 5"):
        fit.fit_law([1e6] * 4, [1e8, 2e8, 3e8, 4e8], [3, 3, 3, 3])
    with pytest.raises(CamelidError, match="two model sizes"):
        fit.fit_law([1e6] * 6, np.logspace(7, 9, 6), [3.0] * 6)


def _write_run(path, n_params, tokens, law, n_val=4, partial_tail=False, noise=0.0, rng=None):
    path.mkdir(parents=True)
    rows = []
    for i in range(1, n_val + 1):
        t = int(tokens * i / n_val)
        rows.append({"step": i * 10, "loss": 9.0, "lr": 3e-4, "grad_norm": 1.0, "tokens": t,
                     "tokens_per_s": 1000.0, "mfu": 0.1})
        # intermediate losses a little above the law (a cosine run is not finished), the final one on it
        val = float(law.loss(n_params, t)) * (1 + 0.02 * (n_val - i))
        if noise and rng is not None:
            val *= math.exp(noise * rng.standard_normal())
        rows.append({"step": i * 10, "split": "val", "loss": val, "tokens": t})
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    if partial_tail:
        text += '{"step": 99, "loss": 1.'
    (path / "metrics.jsonl").write_text(text)
    (path / "summary.json").write_text(json.dumps({"n_params": n_params, "n_params_non_embedding": n_params // 2}))


@pytest.fixture
def synthetic_runs(tmp_path):
    root = tmp_path / "sweep"
    for n in (3e5, 1e6, 3e6, 1e7, 3e7):
        for d in (2e7, 6e7, 2e8, 6e8):
            _write_run(root / f"n{int(n)}-d{int(d)}", int(n), int(d), TRUE, partial_tail=(n == 1e6))
    return root


def test_read_run_points(synthetic_runs):
    run = synthetic_runs / "n1000000-d20000000"
    final = fit.read_run(run)
    assert len(final) == 1 and final[0].tokens == 2e7 and final[0].params == 1e6
    assert final[0].loss == pytest.approx(TRUE.loss(1e6, 2e7))
    assert len(fit.read_run(run, point="all")) == 4
    assert fit.read_run(run, point="best")[0].loss == final[0].loss
    assert fit.read_run(run, params="non-embedding")[0].params == 5e5
    assert len(fit.find_runs([synthetic_runs])) == 20


def test_read_run_errors(tmp_path):
    with pytest.raises(CamelidError):
        fit.find_runs([tmp_path / "missing"])
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0, "tokens": 10}\n')
    with pytest.raises(CamelidError, match="validation"):
        (run / "summary.json").write_text('{"n_params": 10}')
        fit.read_run(run)
    (run / "metrics.jsonl").write_text('{"step": 1, "split": "val", "loss": 3.0, "tokens": 10}\n')
    (run / "summary.json").write_text("{}")
    with pytest.raises(CamelidError, match="n_params"):
        fit.read_run(run)
    (run / "metrics.jsonl").write_text('not json\n{"step": 1, "split": "val", "loss": 3.0, "tokens": 10}\n')
    with pytest.raises(CamelidError, match="not a JSON"):
        fit.read_run(run)


def test_cli_fit_recovers_law_from_run_dirs(synthetic_runs, tmp_path, capsys):
    from camelid.cli import main

    plot, saved = tmp_path / "iso.png", tmp_path / "law.json"
    with pytest.raises(SystemExit) as e:
        main(["scaling", "fit", str(synthetic_runs), "--json", "--plot", str(plot), "--save", str(saved)])
    assert e.value.code == 0
    out = json.loads(capsys.readouterr().out)
    law = out["fit"]["law"]
    for k, v in TRUE.params().items():
        assert law[k] == pytest.approx(v, rel=1e-3), k
    assert len(out["points"]) == 20 and out["frontier"]
    assert plot.stat().st_size > 10_000
    assert json.loads(saved.read_text())["law"]["alpha"] == pytest.approx(TRUE.alpha, rel=1e-3)
    # the saved law feeds serve-aware
    with pytest.raises(SystemExit) as e:
        main(["scaling", "serve-aware", "--law", str(saved), "--params", "3M", "--tokens", "1B", "--json"])
    assert e.value.code == 0
    t = json.loads(capsys.readouterr().out)
    assert t["law_params"]["beta"] == pytest.approx(TRUE.beta, rel=1e-3)


def test_cli_fit_text_and_errors(synthetic_runs, tmp_path, capsys):
    from camelid.cli import main

    with pytest.raises(SystemExit) as e:
        main(["scaling", "fit", str(synthetic_runs), "--no-plot", "--point", "all"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "80 points from 20 runs" in text and "alpha" in text
    with pytest.raises(SystemExit) as e:
        main(["scaling", "fit", str(tmp_path / "nothing")])
    assert e.value.code == 2
    assert "no such run directory" in capsys.readouterr().err


def test_fit_from_csv(tmp_path):
    n, d, loss = _grid_points(TRUE)
    path = tmp_path / "points.csv"
    path.write_text("params,tokens,loss\n" + "".join(f"{a},{b},{c}\n" for a, b, c in zip(n, d, loss)))
    pts = fit.read_points_file(path)
    assert fit.fit_points(pts).law.alpha == pytest.approx(TRUE.alpha, rel=1e-3)


# ----------------------------------------------------------------------------------------- serve-aware


@pytest.mark.parametrize("law", [CHINCHILLA, BESIROGLU])
def test_inference_optimal_without_serving_is_compute_optimal(law):
    target = law.loss(*law.optimal_for_flops(1e23))
    r = inference_optimal(law, target, 0.0)
    n, d = law.optimal_for_loss(target)
    assert r["params"] == pytest.approx(n, rel=1e-6) and r["tokens"] == pytest.approx(d, rel=1e-6)


def test_more_serving_means_smaller_models_on_more_tokens():
    target = BESIROGLU.loss(6.738e9, 2e12)
    rows = [inference_optimal(BESIROGLU, target, s) for s in (0, 1e11, 1e12, 1e13, 1e14)]
    ns = [r["params"] for r in rows]
    ds = [r["tokens"] for r in rows]
    assert ns == sorted(ns, reverse=True) and ds == sorted(ds)
    for r in rows:  # a true minimum of training + inference compute
        for f in (0.95, 1.05):
            assert total_flops(BESIROGLU, r["params"] * f, target, r["served"]) > r["total_flops"]


def test_llama_7b_on_2t_tokens_pays_off_with_serving():
    """LLaMA's point: Llama-2-7B on 2T tokens is far past compute-optimal, yet the cheapest model for
    its loss once it serves ~10T tokens; without serving, the compute-optimal model is ~3x larger."""
    n, d = 6_738_415_616, 2e12
    s = breakeven_served(BESIROGLU, n, d)
    assert 3e12 < s < 3e13
    target = BESIROGLU.loss(n, d)
    r = inference_optimal(BESIROGLU, target, s)
    assert r["params"] == pytest.approx(n, rel=1e-4) and r["tokens"] == pytest.approx(d, rel=1e-4)
    t = inference_table(BESIROGLU, target, [0, 1e13], (n, d))
    assert t["compute_optimal"]["params"] > 2 * n
    assert t["rows"][1]["saving_vs_compute_optimal"] > 0.3
    # a model bigger than compute-optimal is never justified by serving
    assert breakeven_served(BESIROGLU, 70e9, 100e9) < 0


def test_inference_errors():
    with pytest.raises(CamelidError):
        inference_optimal(BESIROGLU, 1.5, 0)  # below E
    with pytest.raises(CamelidError):
        inference_optimal(BESIROGLU, 2.1, -1)


# ----------------------------------------------------------------------------------------- CLI


def _cli_json(capsys, argv):
    from camelid.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_cli_optimal_json(capsys):
    out = _cli_json(capsys, ["scaling", "optimal", "--flops", "5.88e23", "--json"])
    rows = {r["method"]: r for r in out["rows"]}
    assert rows["approach1"]["params"] == pytest.approx(70e9)
    assert rows["besiroglu"]["tokens_per_param"] == pytest.approx(18.4, abs=0.5)
    out = _cli_json(capsys, ["scaling", "optimal", "--table3", "--json"])
    assert len(out["table3"]) == 9


def test_cli_optimal_text_and_plot(capsys, tmp_path):
    from camelid.cli import main

    with pytest.raises(SystemExit):
        main(["scaling", "optimal", "--params", "7B", "--plot", str(tmp_path / "opt.png")])
    text = capsys.readouterr().out
    assert "approach 1" in text and "refit (Besiroglu et al. 2024)" in text and "as published" in text
    assert (tmp_path / "opt.png").stat().st_size > 10_000
    with pytest.raises(SystemExit) as e:
        main(["scaling", "optimal"])
    assert e.value.code == 2


def test_cli_serve_aware(capsys, tmp_path):
    out = _cli_json(capsys, ["scaling", "serve-aware", "--model", "llama2-7b", "--tokens", "2T",
                             "--served", "0,1T,10T", "--json", "--plot", str(tmp_path / "s.png")])
    assert out["reference"]["params"] == 6_738_415_616
    assert len(out["rows"]) == 3 and out["rows"][0]["served"] == 0
    assert (tmp_path / "s.png").stat().st_size > 10_000
    out = _cli_json(capsys, ["scaling", "serve-aware", "--loss", "2.1", "--law", "chinchilla", "--json"])
    assert out["law"] == "chinchilla" and "reference" not in out


def test_sweep_dry_run(capsys, tmp_path):
    out = _cli_json(capsys, ["scaling", "sweep", "--out", str(tmp_path / "sw"), "--dry-run", "--json",
                             "--budgets", "1e13,1e14"])
    assert out
    for item in out:
        cmd = item["command"]
        assert cmd[1:4] == ["-m", "camelid", "pretrain"] and "--out" in cmd
        assert any(c.startswith("train.max_tokens=") for c in cmd)
        r = item["run"]
        assert 6 * r["params_estimate"] * r["tokens"] == pytest.approx(r["budget"], rel=1e-3)


def test_bootstrap_intervals_cover_the_truth():
    n, d, loss = _grid_points(TRUE, noise=0.003, seed=2)
    r = fit.fit_law(n, d, loss, bootstrap=4, seed=0)
    bs = r.bootstrap
    assert bs["samples"] == 4
    for k in ("E", "alpha", "beta", "a"):
        assert bs[k]["p5"] <= bs[k]["p95"] and bs[k]["std"] >= 0
    assert bs["alpha"]["p5"] - 0.03 <= TRUE.alpha <= bs["alpha"]["p95"] + 0.03
    assert "bootstrap" in fit.describe_fit(r)


def test_isoflop_minima_recover_the_optimum():
    """Approach 2 on IsoFLOP runs drawn from a known law finds its compute-optimal N for each budget."""
    pts = []
    for c in (1e15, 1e16, 1e17):
        n_opt, _ = TRUE.optimal_for_flops(c)
        for f in np.logspace(-0.6, 0.6, 7):
            n = n_opt * f
            pts.append(fit.Point(n, c / (6 * n), float(TRUE.loss(n, c / (6 * n)))))
    res = fit.isoflop_minima(pts)
    assert len(res["minima"]) == 3
    for m in res["minima"]:
        assert m["params"] == pytest.approx(TRUE.optimal_for_flops(m["flops"])[0], rel=0.1)
        assert m["inside"]
    assert res["a"] == pytest.approx(TRUE.a, abs=0.03)
    assert fit.isoflop_minima(pts[:2]) is None
