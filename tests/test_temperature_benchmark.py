"""benchmarks/temperature.py's seed statistics and its reading of saved evaluations."""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "temperature.py"
sys.path.insert(0, str(SCRIPT.parent))  # as when run as a script: it imports job_pool from beside it
spec = importlib.util.spec_from_file_location("temperature_benchmark", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # its dataclass looks its module up
spec.loader.exec_module(bench)


def test_welch_t_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    a, b = [-20.1, -24.4, -22.0, -19.5], [-19.8, -20.2, -31.0]
    assert bench.welch_t(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).statistic, rel=1e-12)
    assert bench.welch_t([1.0], b) != bench.welch_t([1.0], b)  # nan with one value on a side


def result(t, kind, seed, loglik, diversity, length=7.0):
    return {"T": t, "kind": kind, "seed": seed, "mean_loglik": loglik, "diversity": diversity, "mean_length": length}


def test_seed_means_checks_the_conditional_mean_against_the_single_spread():
    results = [result(0.8, "single", 0, -20.0, 0.78), result(0.8, "single", 1, -24.0, 0.79),
               result(0.8, "conditional", 0, -19.0, 0.70), result(0.8, "conditional", 1, -23.0, 0.74),
               result(0.95, "single", 0, -30.0, 0.80), result(0.95, "single", 1, -40.0, 0.82),
               result(0.95, "conditional", 0, -29.0, 0.81)]
    rows, claims = bench.seed_means(results, [0.8, 0.95])
    # conditional mean -21.0 lies in -24..-20, its diversity mean 0.72 below 0.78..0.79; T = 0.95 has one
    # conditional seed only, so it has no row.
    assert claims == {"T = 0.8: the conditional seeds' mean mean_loglik within the single-T seeds' spread": True,
                      "T = 0.8: the conditional seeds' mean diversity within the single-T seeds' spread": False}
    assert [(r["T"], r["axis"]) for r in rows] == [(0.8, "mean_loglik"), (0.8, "diversity"), (0.8, "mean_length")]
    assert rows[0]["welch_t"] == pytest.approx(bench.welch_t([-19.0, -23.0], [-20.0, -24.0]))
    # with p_T's estimated mean log-likelihood on every run, it gets a row of its own (no claim)
    with_target = [{**r, "target_loglik_est": r["mean_loglik"] - 1} for r in results]
    rows, claims_too = bench.seed_means(with_target, [0.8, 0.95])
    assert [r["axis"] for r in rows] == ["mean_loglik", "diversity", "mean_length", "target_loglik_est"]
    with_both = [{**r, "target_diversity_est": r["diversity"] - 0.01} for r in with_target]
    rows, _ = bench.seed_means(with_both, [0.8, 0.95])
    assert [r["axis"] for r in rows][-2:] == ["target_loglik_est", "target_diversity_est"]
    assert claims_too == claims


def test_saved_evaluation_is_read_only_when_it_matches_the_run(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"steps": 200, "task": {"eval_samples": 16}}))
    older = {"method": "gfn", "mean_loglik": -20.0, "diversity": 0.8}
    (tmp_path / "eval_T0.8.json").write_text(json.dumps({"methods": [older], "n": 16, "temperature": 0.8,
                                                          "prompts": 20}))
    # written before the harness estimated p_T's mean log-likelihood and diversity: evaluated again, unless
    # saved-only
    assert bench.saved_evaluation(tmp_path, 0.8) is None
    assert bench.saved_evaluation(tmp_path, 0.8, every_metric=False) == {**older, "steps": 200, "prompts": 20,
                                                                         "samples": 16}
    (tmp_path / "eval_T0.8.json").write_text(json.dumps({"methods": [{**older, "target_loglik_est": -18.0}],
                                                          "n": 16, "temperature": 0.8, "prompts": 20}))
    assert bench.saved_evaluation(tmp_path, 0.8) is None  # without the newer diversity estimate
    row = {**older, "target_loglik_est": -18.0, "target_diversity_est": 0.78}
    (tmp_path / "eval_T0.8.json").write_text(json.dumps({"methods": [row], "n": 16, "temperature": 0.8,
                                                          "prompts": 20}))
    assert bench.saved_evaluation(tmp_path, 0.8) == {**row, "steps": 200, "prompts": 20, "samples": 16}
    assert bench.saved_evaluation(tmp_path, 0.95) is None  # not evaluated at that T
    (tmp_path / "eval_T0.8.json").write_text(json.dumps({"methods": [row], "n": 8, "temperature": 0.8,
                                                          "prompts": 20}))
    assert bench.saved_evaluation(tmp_path, 0.8) is None  # evaluated with other settings than the run's


def test_an_evaluation_with_more_samples_sits_beside_the_runs_own(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"steps": 200, "task": {"eval_samples": 16}}))
    row = {"method": "gfn", "mean_loglik": -20.0, "diversity": 0.8, "target_loglik_est": -18.0,
           "target_diversity_est": 0.78}
    (tmp_path / "eval_T0.95.json").write_text(json.dumps({"methods": [row], "n": 16, "temperature": 0.95,
                                                           "prompts": 20}))
    assert bench.evaluation_stem({"task": {"eval_samples": 16}}, 0.95, 64) == "eval_T0.95-n64"
    assert bench.evaluation_stem({"task": {"eval_samples": 16}}, 0.95, 16) == "eval_T0.95"
    assert bench.saved_evaluation(tmp_path, 0.95, samples=64) is None  # the run's own 16 do not stand in
    assert bench.saved_evaluation(tmp_path, 0.95, samples=16)["samples"] == 16
    more = {**row, "target_diversity_est": 0.81}
    (tmp_path / "eval_T0.95-n64.json").write_text(json.dumps({"methods": [more], "n": 64, "temperature": 0.95,
                                                               "prompts": 20}))
    assert bench.saved_evaluation(tmp_path, 0.95, samples=64) == {**more, "steps": 200, "prompts": 20,
                                                                  "samples": 64}
    assert bench.saved_evaluation(tmp_path, 0.95)["target_diversity_est"] == 0.78  # the run's own unchanged


def test_seed_means_plot_is_written(tmp_path):
    results = [result(t, kind, seed, -20.0 - seed - t, 0.78 + 0.01 * seed) for t in (0.8, 0.95)
               for kind in ("single", "conditional") for seed in range(3)]
    path = bench.plot_seed_means(tmp_path / "means.png", results, [0.8, 0.95], "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("single_steps, anneal_steps, log_z, expected", [
    (None, None, "batch", (200, 100, "-batchlogz")),  # the preset's runs keep the folders they were saved in
    (None, None, "learned", (200, 100, "")),
    (400, None, "batch", (400, 100, "-batchlogz-400steps")),
    (None, 0, "batch", (200, 0, "-batchlogz-anneal0")),
    (200, 100, "batch", (200, 100, "-batchlogz")),  # the preset's values named explicitly: the same runs
])
def test_single_run_settings_name_only_what_differs_from_the_preset(single_steps, anneal_steps, log_z, expected):
    preset = yaml.safe_load((SCRIPT.parent.parent / "configs" / "continuation-cpu.yaml").read_text())
    assert (preset["steps"], preset["reward_temp_horizon"]) == (200, 100)
    args = argparse.Namespace(single_steps=single_steps, single_anneal_steps=anneal_steps, single_log_z=log_z)
    assert bench.single_settings(args, preset) == expected


def test_conditional_runs_alone_are_tabulated_without_checks(tmp_path, monkeypatch, capsys):
    """--single-seeds '' --saved-only: the saved conditional run (its folder named by its steps) is
    tabulated at every T, and nothing is written as a comparison."""
    run = tmp_path / "temperature" / "conditional-400steps-seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"steps": 400, "task": {"eval_samples": 16}}))
    for t, loglik in ((0.8, -19.5), (0.95, -31.25)):
        row = {"method": "gfn", "mean_loglik": loglik, "diversity": 0.8, "mean_length": 9.0, "kl_q_p": 0.5,
               "ess_fraction": 0.4, "target_loglik_est": loglik + 2, "seconds": 60.0}
        (run / f"eval_T{t:g}.json").write_text(json.dumps({"methods": [row], "n": 16, "temperature": t,
                                                          "prompts": 20}))
    monkeypatch.setattr(bench, "OUT", tmp_path)
    monkeypatch.setattr(sys, "argv", ["temperature.py", "--single-seeds", "", "--saved-only"])
    assert bench.main() == 0
    out = capsys.readouterr().out
    assert "-19.5" in out and "-31.25" in out and "conditional (0.8:1.0, 400 steps), seed 0" in out
    assert not (tmp_path / "temperature.json").exists()
    monkeypatch.setattr(sys, "argv", ["temperature.py", "--single-seeds", "", "--saved-only",
                                      "--conditional-steps", "300"])
    with pytest.raises(SystemExit, match="no conditional seed"):  # the 300-step run was never trained
        bench.main()
    monkeypatch.setattr(sys, "argv", ["temperature.py", "--single-seeds", "0,1", "--saved-only"])
    with pytest.raises(SystemExit, match="fewer than two single-T seeds"):  # asked for, never trained
        bench.main()
    monkeypatch.setattr(sys, "argv", ["temperature.py", "--single-seeds", "", "--eval-samples", "1"])
    with pytest.raises(SystemExit):
        bench.main()
    assert "at least 2" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["temperature.py", "--single-seeds", "0"])
    with pytest.raises(SystemExit):
        bench.main()
    assert "or none" in capsys.readouterr().err


def test_the_base_model_reference_is_read_back_when_saved(tmp_path, monkeypatch, capsys):
    """--base-samples: a saved base-model evaluation is reused (no model loaded); --saved-only reports one that
    is missing instead of sampling."""
    assert bench.base_reference(tmp_path, 0.95, 128, saved_only=True) is None
    row = {"method": "sampling", "mean_loglik": -55.0, "diversity": 0.83, "ess_fraction": 0.2,
           "target_loglik_est": -29.0, "target_diversity_est": 0.815}
    (tmp_path / "base_T0.95-n128.json").write_text(json.dumps({"methods": [row], "n": 128, "temperature": 0.95,
                                                                "prompts": 20}))
    got = bench.base_reference(tmp_path, 0.95, 128)
    assert got == {**row, "samples": 128, "prompts": 20}
    assert "p_T's embedding diversity (IS) 0.815" in bench.base_reference_line(0.95, got)
    assert bench.base_reference(tmp_path, 0.95, 64, saved_only=True) is None  # another N is another file
    (tmp_path / "temperature").mkdir()
    (tmp_path / "temperature" / "base_T0.95-n128.json").write_text((tmp_path / "base_T0.95-n128.json").read_text())
    monkeypatch.setattr(bench, "OUT", tmp_path)
    monkeypatch.setattr(sys, "argv", ["temperature.py", "--single-seeds", "", "--conditional-seeds", "",
                                      "--temperatures", "0.95", "--base-samples", "128"])
    assert bench.main() == 0
    assert "base model at T = 0.95 (128 samples x 20 prompts)" in capsys.readouterr().out
