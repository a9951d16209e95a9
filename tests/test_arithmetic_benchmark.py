"""benchmarks/arithmetic.py's schedule: each learner x reward's setting is chosen on validation scores alone
(GRPO's other temperatures only after its learning rates), and the test units start only from what is saved."""

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "arithmetic.py"
sys.path.insert(0, str(SCRIPT.parent))
spec = importlib.util.spec_from_file_location("arithmetic_benchmark", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench
spec.loader.exec_module(bench)


def save(name, pass_at):
    """A saved tuning unit whose validation pass@k is ``pass_at`` for every k."""
    metrics = {"validation": {f"pass@{k}": pass_at for k in bench.KS}}
    bench.unit_path(name).write_text(json.dumps({"metrics": metrics}))


def test_the_setting_is_chosen_on_validation_and_grpo_tunes_its_temperature_last(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "OUT", tmp_path)
    names = [u["name"] for u in bench.tuning_units("grpo", "verifier", 50)]
    assert len(names) == len(bench.LR_GRID) and bench.chosen_setting("grpo", "verifier", 50) is None
    for name, score in zip(names, [0.2, 0.6, 0.4]):
        save(name, score)
    units = bench.tuning_units("grpo", "verifier", 50)
    extra = units[len(bench.LR_GRID):]  # the other temperatures, at the best learning rate
    assert [(u["lr"], u["temperature"]) for u in extra] == [(bench.LR_GRID[1], t) for t in bench.GRPO_TEMPERATURES[1:]]
    assert bench.chosen_setting("grpo", "verifier", 50) is None  # not before every setting is scored
    save(extra[0]["name"], 0.7)
    assert bench.chosen_setting("grpo", "verifier", 50)["name"] == extra[0]["name"]
    for name, score in zip([u["name"] for u in bench.tuning_units("gfn", "joint", 50)], [0.5, 0.3, 0.1]):
        save(name, score)
    assert bench.chosen_setting("gfn", "joint", 50)["lr"] == bench.LR_GRID[0]


def test_test_units_wait_for_their_adapters(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "OUT", tmp_path)
    assert [u["name"] for u in bench.final_units(2, 100, 50)] == ["test-cot-s0", "test-cot-s1"]
    bench.unit_path("sft-s0").write_text("{}")
    for name, score in zip([u["name"] for u in bench.tuning_units("gfn", "verifier", 50)], [0.1, 0.9, 0.5]):
        save(name, score)
    units = {u["name"]: u for u in bench.final_units(2, 100, 50)}
    assert set(units) == {"test-cot-s0", "test-cot-s1", "test-sft-s0", "test-gfn-verifier-s0"}
    chosen = units["test-gfn-verifier-s0"]  # seed 0 evaluates the tuning run's adapter; seed 1 waits for sft-s1
    assert chosen["kind"] == "eval" and chosen["adapter"] == bench.setting_name("gfn", "verifier", bench.LR_GRID[1], None)
    bench.unit_path("sft-s1").write_text("{}")
    trained = {u["name"]: u for u in bench.final_units(2, 100, 50)}["test-gfn-verifier-s1"]
    assert trained["kind"] == "gfn" and trained["lr"] == bench.LR_GRID[1] and trained["splits"] == list(bench.TEST_SPLITS)
