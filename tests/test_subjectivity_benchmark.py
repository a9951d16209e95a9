"""benchmarks/subjectivity.py's table of the M-step's keep checks."""

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "subjectivity.py"
spec = importlib.util.spec_from_file_location("subjectivity_benchmark", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench
spec.loader.exec_module(bench)


def seed_result(e_step, em_accuracy, em_rounds):
    return {"accuracy": {"gfn_e_step": e_step, "gfn_em": em_accuracy}, "em": em_rounds}


def test_the_keep_check_of_each_seed_beside_its_test_accuracy():
    check = {"held_out_prediction": {"old": {"log_prob": -0.614, "accuracy": 0.7},
                                     "fitted": {"log_prob": -0.912, "accuracy": 0.65}}, "kept": "base model"}
    results = {"20": {"seeds": {"0": seed_result(0.81, 0.81, [{"held_out_prediction": None}, check]),
                                "1": seed_result(0.55, 0.55, [])}}}  # seed 1: no M-step record, no row
    lines = bench.m_step_checks(results)
    # the last round's check only
    assert lines[-1] == "| 20 | 0 | -0.614 / 0.70 -> -0.912 / 0.65 | base model | 0.810 / 0.810 |"
    assert len(lines) == 4
    assert bench.m_step_checks({"10": {"seeds": {"0": seed_result(0.5, 0.5, [{"held_out_prediction": None}])}}}) == []
    unchecked = {"held_out_prediction": {"old": {"log_prob": None, "accuracy": None},  # task.m_validation 0
                                         "fitted": {"log_prob": None, "accuracy": None}}, "kept": "fitted"}
    assert bench.m_step_checks({"10": {"seeds": {"0": seed_result(0.5, 0.5, [unchecked])}}}) == []


def test_the_accuracy_plot_shows_each_methods_seed_mean_and_range(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = []
    real = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, yerr=None, **kwargs):
        drawn.append((kwargs["label"], list(y), [list(e) for e in yerr]))
        return real(self, x, y, yerr=yerr, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    seeds = {"0": {"accuracy": {m: 0.6 for m in bench.METHODS}},
             "1": {"accuracy": {**{m: 0.6 for m in bench.METHODS}, "gfn_em": 0.8}}}
    path = bench.plot({"10": {"seeds": seeds}}, tmp_path / "accuracy.png", 500)
    assert path.stat().st_size > 0
    em = next(d for d in drawn if d[0] == bench.NAMES["gfn_em"])
    assert em[1] == [0.7] and em[2] == [[0.7 - 0.6], [0.8 - 0.7]]  # mean, then down to the lowest, up to the highest
    assert len(drawn) == len(bench.METHODS)
