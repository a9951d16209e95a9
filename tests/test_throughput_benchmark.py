"""benchmarks/throughput.py without a model: the reference kit's result line, saved results reused or measured
again, the stored reference figure chosen by the CPU's flags, and a failed configuration beside finished ones."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # as when run as a script: it imports its throughput_* siblings
spec = importlib.util.spec_from_file_location("throughput_benchmark", BENCHMARKS / "throughput.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
import throughput_reference as reference  # noqa: E402
import throughput_saved as saved  # noqa: E402

CPUINFO = """processor\t: 0
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx2 {extra}
processor\t: 1
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx2 {extra}
"""


def test_the_kits_last_line_is_parsed_with_its_threads():
    lines = ["step  39:   12.10 s  loss 435.00", "details: torch threads 2; timed steps 37: mean 13.50 s",
             "reference n=8 median_s_per_step=13.45 steps=3-39 peak_rss_gib=7.00", ""]
    assert reference.parse_kit_output(lines) == {"n": 8, "median_s_per_step": 13.45, "steps": (3, 39),
                                                 "peak_rss_gib": 7.0, "torch_threads": 2}


def test_a_kit_output_without_its_result_line_is_a_clear_error():
    lines = ["reference run: n=8 steps=6", "run.sh: only 2 of 6 steps finished; see /tmp/gfn-ref-run.log"]
    with pytest.raises(reference.KitError, match="does not end with its result line.*only 2 of 6 steps"):
        reference.parse_kit_output(lines)
    with pytest.raises(reference.KitError):  # the line must be last: a later line means the run went on
        reference.parse_kit_output(["reference n=8 median_s_per_step=13.45 steps=3-39 peak_rss_gib=7.00", "Error"])


def test_the_stored_reference_matches_the_cpus_avx512_bf16_flag():
    with_bf16 = saved.cpu_info(CPUINFO.format(extra="avx512f avx512_bf16"))
    avx2 = saved.cpu_info(CPUINFO.format(extra=""))
    assert with_bf16 == {"model": "AMD EPYC 9R14 96-Core Processor", "avx512f": True, "avx512_bf16": True}
    assert avx2["avx512f"] is False and avx2["avx512_bf16"] is False
    assert reference.stored_reference(8, with_bf16["avx512_bf16"])["median_s_per_step"] == 13.45
    assert reference.stored_reference(16, with_bf16["avx512_bf16"])["peak_rss_gib"] == 11.89
    stored = reference.stored_reference(8, avx2["avx512_bf16"])
    assert (stored["median_s_per_step"], stored["peak_rss_gib"]) == (20.74, 7.11)
    assert "AVX2" in stored["cpu"]
    assert reference.stored_reference(16, avx2["avx512_bf16"]) is None  # never measured on such a CPU


class Counting:
    def __init__(self, value):
        self.calls, self.value = 0, value

    def __call__(self):
        self.calls += 1
        return self.value


def test_a_saved_result_is_reused_only_when_settings_and_a_clean_commit_match(tmp_path):
    path = tmp_path / "documented.json"
    settings = {"config": {"n": 8}, "steps": 12, "prompts": "p.txt", "git_commit": "abc"}
    first = Counting({"median_s_per_step": 1.0})
    assert saved.saved_or_measured(path, settings, first) == ({"median_s_per_step": 1.0}, "measured")
    assert json.loads(path.read_text())["settings"] == settings  # written as it finished
    again = Counting({"median_s_per_step": 2.0})
    assert saved.saved_or_measured(path, dict(settings), again) == ({"median_s_per_step": 1.0}, "saved")
    assert again.calls == 0
    assert saved.saved_or_measured(path, settings, again, fresh=True)[1] == "measured"
    for changed in ({"steps": 6}, {"config": {"n": 16}}, {"prompts": "q.txt"}, {"git_commit": "def"}):
        other = Counting({"median_s_per_step": 3.0})
        assert saved.saved_or_measured(path, {**settings, **changed}, other)[1] == "measured"
        assert other.calls == 1
        saved.saved_or_measured(path, settings, Counting({"median_s_per_step": 1.0}))  # back to the first settings
    dirty = {**settings, "git_commit": "abc-dirty"}
    saved.saved_or_measured(path, dirty, Counting({"median_s_per_step": 4.0}))
    code_changed = Counting({"median_s_per_step": 5.0})
    assert saved.saved_or_measured(path, dirty, code_changed)[1] == "measured"  # uncommitted code: never reused
    assert code_changed.calls == 1


def test_a_saved_kit_result_is_reused_whatever_our_commit(tmp_path):
    """The reference kit's figure depends on the kit, n, steps, threads and machine, not on our code."""
    path = tmp_path / "reference-kit-n8.json"
    settings = {"n": 8, "steps": 16, "threads": 2, "kit_scripts_sha256": "k", "cpu": "AMD EPYC"}
    saved.saved_or_measured(path, settings, Counting({"median_s_per_step": 19.8}))
    again = Counting({"median_s_per_step": 1.0})
    assert saved.saved_or_measured(path, dict(settings), again) == ({"median_s_per_step": 19.8}, "saved")
    assert again.calls == 0
    assert saved.saved_or_measured(path, {**settings, "threads": 1}, again)[1] == "measured"


def test_a_failed_measurement_leaves_the_saved_result_alone(tmp_path):
    path = tmp_path / "documented.json"
    settings = {"steps": 12, "git_commit": "abc"}
    saved.saved_or_measured(path, settings, Counting({"median_s_per_step": 1.0}))
    assert saved.saved_or_measured(path, settings, Counting(None), fresh=True) == (None, "failed")
    assert json.loads(path.read_text())["result"] == {"median_s_per_step": 1.0}


def fake_result(name, spec, steps, processes=1):
    walls = [30.0, 20.0] + [10.0] * (steps - 2)
    return {"config": name, **spec, "processes": processes, "steps_timed": steps - 2, "median_s_per_step": 10.0,
            "steps_per_s": 0.1, "sequences_per_s": spec["n"] / 10.0, "sampled_tokens_per_s": 20.0,
            "peak_rss_gib": 2.0, "training_peak_rss_gib": 1.5, "torch_threads": 2, "step_walls": walls}


def test_one_failed_configuration_keeps_the_others_and_fails_the_exit_code(tmp_path, monkeypatch, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a prompt\n")
    measured = []

    def measure(name, spec, steps, prompts_file, processes=1):
        measured.append(name)
        return None if name == "documented" else fake_result(name, spec, steps, processes)

    monkeypatch.setattr(bench, "train_in_fresh_process", measure)
    monkeypatch.setattr(bench, "SAVED", tmp_path / "saved")
    monkeypatch.setattr(bench, "code_commit", lambda: "abc")
    monkeypatch.setattr(bench, "cpu_info", lambda: {"model": "AMD EPYC", "avx512f": False, "avx512_bf16": False})
    argv = ["throughput.py", "--configs", "documented,reference-n8,reference-n16", "--prompts", str(prompts)]
    monkeypatch.setattr(sys, "argv", argv)
    assert bench.main() == 1
    out, err = capsys.readouterr()
    assert "FAILED" in err and "documented" in err and "reference-n8" not in err
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["reference-n16.json", "reference-n8.json"]
    assert "| reference-n8 | float32 | 2 | 8 | 10.00 |" in out and "| documented |" not in out
    # Stored AVX2 figure for n = 8 (20.74 s, 7.11 GiB) over our steps 3-11: 2.07x faster, 0.28 of the memory.
    assert "| reference-n8 | 10.00 (3-11) | 20.74 (3-39, stored) | 2 | 0.48 | 2.07x | 2.00 / 7.11 | 0.28 |" in out
    assert "STORED" in out and "AVX2" in out
    assert "No stored reference figure for n = 16" in out
    # A second invocation measures only the failed configuration again.
    measured.clear()
    assert bench.main() == 1
    assert measured == ["documented"]


def fake_kit(folder: Path, last_line: str) -> Path:
    """A stand-in for ../shared/reference-kit: setup.sh leaves its state file, run.sh prints a result line."""
    folder.mkdir()
    (folder / "setup.sh").write_text('echo "venv=/v" > "$GFN_REF_STATE"\n')
    (folder / "run.sh").write_text(f'echo "step 3: 20.00 s"\necho "details: torch threads $OMP_NUM_THREADS; x"\n'
                                   f'echo "reference n=$1 {last_line}"\n')
    return folder


def test_the_kit_runs_beside_ours_and_its_result_is_saved(tmp_path, monkeypatch, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a prompt\n")
    state = tmp_path / "kit.env"
    monkeypatch.setenv("GFN_REF_STATE", str(state))
    monkeypatch.setattr(reference, "KIT_STATE", state)
    kit = fake_kit(tmp_path / "kit", "median_s_per_step=25.00 steps=3-11 peak_rss_gib=8.00")
    monkeypatch.setattr(bench, "train_in_fresh_process", lambda name, spec, steps, p, processes=1:
                        fake_result(name, spec, steps, processes))
    monkeypatch.setattr(bench, "SAVED", tmp_path / "saved")
    monkeypatch.setattr(bench, "code_commit", lambda: "abc")
    monkeypatch.setattr(sys, "argv", ["throughput.py", "--configs", "reference-n8", "--prompts", str(prompts),
                                      "--reference-kit", str(kit)])
    assert bench.main() == 0
    out = capsys.readouterr().out
    assert state.is_file()  # setup.sh ran, as its state file was missing
    kit_result = json.loads((tmp_path / "saved" / "reference-kit-n8.json").read_text())["result"]
    assert kit_result["median_s_per_step"] == 25.0 and kit_result["torch_threads"] == 2  # our run's threads
    assert "| reference-n8 | 10.00 (3-11) | 25.00 (3-11, measured) | 2 | 0.40 | 2.50x | 2.00 / 8.00 | 0.25 |" in out
    assert "STORED" not in out

    broken = fake_kit(tmp_path / "broken-kit", "median_s_per_step=oops")
    monkeypatch.setattr(sys, "argv", ["throughput.py", "--configs", "reference-n8", "--prompts", str(prompts),
                                      "--reference-kit", str(broken)])
    assert bench.main() == 1  # our own result is reused; the kit's line is missing
    out, err = capsys.readouterr()
    assert "does not end with its result line" in err and "reference-kit-n8" in err
    assert "| reference-n8 | 10.00 | - |" in out


def test_the_scaling_sweep_saves_each_point_and_draws_what_finished(tmp_path, monkeypatch):
    import throughput_scaling as scaling

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a prompt\n")

    def train(name, spec, steps, p):
        return None if name == "n64-len30" else fake_result(name, spec, steps)

    def reward(k, spec, p, repeats):
        return {"answer_tokens": k, "one_token_s": 0.2, "answer_s": 0.2 + 0.01 * k,
                "answer_over_one_token": 1 + 0.05 * k, "torch_threads": 2}

    monkeypatch.setattr(scaling, "train_in_fresh_process", train)
    monkeypatch.setattr(scaling, "reward_in_fresh_process", reward)
    monkeypatch.setattr(scaling, "SAVED", tmp_path / "saved")
    monkeypatch.setattr(scaling, "code_commit", lambda: "abc")
    training, rewards, failed = scaling.sweep(bench.CONFIGS["reference-n8"], 6, prompts, fresh=False)
    assert failed == ["n64-len30"]
    assert sorted((r["n"], r["max_len"]) for r in training.values()) == [
        (8, 20), (8, 30), (8, 40), (8, 80), (16, 30), (32, 30)]
    assert sorted(rewards) == [1, 4, 16, 64]
    assert len(list((tmp_path / "saved" / "scaling").iterdir())) == 6 + 4
    figure = scaling.plot(training, rewards, "test", tmp_path / "scaling.png")
    assert figure.read_bytes()[:4] == b"\x89PNG"
