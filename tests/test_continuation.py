"""The continuation task end to end on a tiny model: train, evaluate every method, compare runs."""

import json

from gfnlm.cli import main
from gfnlm.evaluation.methods import DEFAULT_METHODS
from gfnlm.evaluation.tables import read_table
from gfnlm.infra.text_files import read_prompt_file
from gfnlm.tasks.continuation.task import builtin_prompt_file


def test_builtin_prompt_split_is_fixed_and_disjoint():
    train, test = (read_prompt_file(builtin_prompt_file(split)) for split in ("train", "test"))
    assert len(train) == 80 and len(test) == 20
    assert not set(train) & set(test)
    assert all(p.endswith(".") for p in train + test)


def test_train_eval_and_compare_on_a_tiny_model(capsys, tmp_path, tiny_model_dir):
    train_file, test_file = tmp_path / "train.txt", tmp_path / "test.txt"
    train_file.write_text("the cat sat on a mat.\nrain fell all day.\n")
    test_file.write_text("a dog ran.\nwe ate soup.\n")
    runs = []
    for temperature in ("0.8", "0.9"):
        run = tmp_path / f"run-{temperature}"
        args = ["train", "continuation", "--model", str(tiny_model_dir), "--output_dir", str(run), "--steps", "3",
                "--trajectories_per_prompt", "4", "--progress", "false", "--lora_r", "4",
                "--reward_temp_end", temperature, "--reward_temp_horizon", "2",
                "--task.prompt_file", str(train_file), "--task.test_prompt_file", str(test_file),
                "--task.max_len", "6", "--task.eval_samples", "4"]
        assert main(args) == 0
        runs.append(run)
        rows = read_table(run / "eval_continuation.csv")
        assert [r["method"] for r in rows] == list(DEFAULT_METHODS)
        by = {r["method"]: r for r in rows}
        assert by["greedy"]["unique"] == 0.25 and by["greedy"]["diversity"] < 1e-5  # 4 copies of one sentence
        for method in ("gfn", "sampling"):
            assert by[method]["kl_q_p"] is not None and 0 < by[method]["ess_fraction"] <= 1 + 1e-9
        assert by["beam"]["kl_q_p"] is None  # q unknown for beam search
        for r in rows:
            assert r["max_loglik"] >= r["mean_loglik"]
        assert (run / "eval_continuation_frontier.png").is_file()
        samples = [json.loads(line) for line in (run / "eval_continuation_samples.jsonl").read_text().splitlines()]
        assert len(samples) == 2 * len(DEFAULT_METHODS) and all(len(s["completions"]) == 4 for s in samples)
    capsys.readouterr()
    for method in ("is", "smc"):
        assert main(["sample", "--run", str(runs[0]), "--n", "3", "--correct", method, "--particles", "4",
                     "--prompt", "a dog ran."]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 4 and lines[-1].startswith(f"# {method} with 4 particles") and "log Z(X) estimate" in lines[-1]
    out = tmp_path / "compare"
    assert main(["compare", str(runs[0]), str(runs[1]), "--out", str(out)]) == 0
    methods = [r["method"] for r in read_table(out / "compare.csv")]
    assert sum(m.startswith("gfn T=") for m in methods) == 2 and methods.count("beam") == 1
    assert (out / "compare_frontier.png").is_file()


def test_bad_continuation_options_stop_before_loading(capsys, tmp_path):
    assert main(["train", "continuation", "--task.eval_methods", "gfn,topk"]) == 2
    assert "eval_methods" in capsys.readouterr().err
    assert main(["train", "continuation", "--task.min_len", "9", "--task.max_len", "3"]) == 2
    assert "min_len" in capsys.readouterr().err


def test_conditional_run_is_evaluated_at_each_temperature_with_corrected_methods(capsys, tmp_path, tiny_model_dir):
    """A temperature-conditional run gets one harness table per end of its range; the corrected methods
    (IS / SMC with the policy or the base model as proposal) report their own estimates."""
    train_file, test_file = tmp_path / "train.txt", tmp_path / "test.txt"
    train_file.write_text("the cat sat on a mat.\nrain fell all day.\n")
    test_file.write_text("a dog ran.\n")
    run = tmp_path / "run"
    methods = "gfn,sampling,gfn_is,gfn_smc,base_is,base_smc"
    assert main(["train", "continuation", "--model", str(tiny_model_dir), "--output_dir", str(run), "--steps", "2",
                 "--trajectories_per_prompt", "4", "--progress", "false", "--lora_r", "4",
                 "--conditional_temperatures", "0.8:0.9", "--log_z", "batch",
                 "--task.prompt_file", str(train_file), "--task.test_prompt_file", str(test_file),
                 "--task.max_len", "5", "--task.eval_samples", "3", "--task.eval_methods", methods,
                 "--task.eval_particles", "4"]) == 0
    assert "### T = 0.9" in (run / "report.md").read_text()
    for temperature in ("0.8", "0.9"):
        by = {r["method"]: r for r in read_table(run / f"eval_continuation_T{temperature}.csv")}
        assert list(by) == methods.split(",")
        for method in ("gfn_is", "gfn_smc", "base_is", "base_smc"):
            assert 0 < by[method]["ess_fraction"] <= 1 + 1e-9 and by[method]["log_z_est"] is not None
            assert by[method]["tokens_per_output"] >= by[method]["particles"] >= 1
        assert by["gfn_is"]["particles"] == 4 and by["gfn_smc"]["kl_q_p"] is None and by["base_is"]["kl_q_p"] >= -1e-6
        assert by["gfn"]["tokens_per_output"] == by["gfn"]["mean_length"] + 1
        # p_T's mean log-likelihood, estimated from the samples of each sampler whose q is exact
        for method in ("gfn", "sampling"):
            assert by[method]["target_loglik_est"] <= by[method]["max_loglik"] + 1e-6
        assert by["gfn_is"]["target_loglik_est"] is None
    out = tmp_path / "compare"
    assert main(["compare", str(run), "--out", str(out)]) == 0
    labels = [r["method"] for r in read_table(out / "compare.csv")]
    assert "gfn T=0.8 (run)" in labels and "gfn T=0.9 (run)" in labels and labels.count("gfn_is") == 1


def test_the_continuation_reward_is_the_renormalized_lm_likelihood(tiny_model_dir):
    """Continuation is a posterior with one LM term; its reward equals p_LM(Z . | X) renormalized over the
    allowed tokens, computed directly by LMLikelihood, for every prefix."""
    import torch

    from gfnlm.core.trajectories import Trajectories
    from gfnlm.model.loading import load_base_model
    from gfnlm.model.policy import LoraSettings, Policy
    from gfnlm.targets import LMLikelihood
    from gfnlm.tasks.continuation.task import ContinuationConfig, ContinuationTask

    model, tokenizer = load_base_model(str(tiny_model_dir))
    policy = Policy(model, tokenizer, LoraSettings(4, 8), seed=0)
    task = ContinuationTask(ContinuationConfig())
    task.setup(tokenizer, policy.vocab_size)
    prompt = task.train_prompts()[0]
    rows = [tokenizer.encode(t, add_special_tokens=False) for t in (" a cat", " rain fell", " ")]
    traj = Trajectories.from_rows([prompt.ids], [prompt.key], [0] * 3, rows)
    space = task.action_space()
    direct = LMLikelihood(policy, space.terminator, renormalize_over=space.vocab_bias).log_rewards(traj)
    visited = traj.state_mask()  # past a row's end a reward means nothing
    assert torch.allclose(task.target(policy).log_rewards(traj)[visited], direct[visited], atol=1e-5)

