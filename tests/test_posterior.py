"""Posteriors users define in YAML or Python: each term against a direct computation, a YAML posterior trained to
its exact target, bad input caught with one line, tasks added by entry point, and the examples end to end."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

from gfnlm.cli import main
from gfnlm.core.trajectories import Trajectories
from gfnlm.infra.errors import GfnlmError
from gfnlm.model.loading import load_base_model
from gfnlm.model.policy import LoraSettings, Policy
from gfnlm.posterior import PosteriorConfig, PosteriorTask
from gfnlm.runs import resolve

ROOT = Path(__file__).resolve().parent.parent


def make_task(tmp_path, reward, rows=({"X": "ab", "Y": "ba"}, {"X": "ba", "Y": "ab"}), **options):
    data = tmp_path / "inputs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = PosteriorConfig(data=str(data), reward=list(reward), prompt=options.pop("prompt", "{X}:"), **options)
    config.validate()
    return PosteriorTask(config)


@pytest.fixture(scope="module")
def tiny_policy(tiny_model_dir):
    model, tokenizer = load_base_model(str(tiny_model_dir))
    return Policy(model, tokenizer, LoraSettings(4, 8), seed=0)


def set_up(task, policy):
    task.check_inputs()
    task.setup(policy.tokenizer, policy.vocab_size)
    return task


def rows_of(task, texts):
    """Trajectories of ``texts`` (Z) after the first input's prompt."""
    tok = task.tokenizer
    rows = [tok.encode(t, add_special_tokens=False) for t in texts]
    prompt = task.train_set[0]
    return Trajectories.from_rows([prompt.ids], [prompt.key], [0] * len(rows), rows), rows


def direct_log_prob(policy, context: list[int], scored: list[int], bias=None, biased: int = 0) -> float:
    """log p(scored | context) from one plain forward pass; the first ``biased`` scored tokens are renormalized
    by ``bias``."""
    with policy.base() as model, torch.no_grad():
        logits = model(input_ids=torch.tensor([context + scored])).logits[0].float()
    total = 0.0
    for j, token in enumerate(scored):
        row = logits[len(context) + j - 1]
        if bias is not None and j < biased:
            row = row + bias
        total += float(torch.log_softmax(row, -1)[token])
    return total


@pytest.mark.parametrize("shape", ["z_in_text", "z_in_context", "whole_sequence"])
def test_lm_terms_match_a_direct_forward_pass(tmp_path, tiny_policy, shape):
    lm = {"z_in_text": {"context": "{X}:", "text": "{Z}.{Y}"}, "z_in_context": {"context": "{X}:{Z}.", "text": "{Y}"},
          "whole_sequence": {"text": "{X}:{Z}.{Y}"}}[shape]
    task = set_up(make_task(tmp_path, [{"lm": lm, "renormalize": shape == "z_in_text"}], allowed_chars="abc "),
                  tiny_policy)
    target = task.target(tiny_policy)
    traj, rows = rows_of(task, ["a b", "cab"])
    got = target.log_rewards(traj)
    enc = lambda s: task.tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    bias = task.action_space().vocab_bias
    for b, row in enumerate(rows):
        for i in range(len(row) + 1):
            z = row[:i]
            if shape == "z_in_text":  # log p(Z . Y | X:), renormalized where the policy writes (Z and the ".")
                want = direct_log_prob(tiny_policy, enc("ab:"), z + enc(".ba"), bias, biased=len(z) + 1)
            elif shape == "z_in_context":  # log p(Y | X: Z .)
                want = direct_log_prob(tiny_policy, enc("ab:") + z + enc("."), enc("ba"))
            else:  # log p(X : Z . Y) read after the beginning-of-text token when there is one
                start = [task.tokenizer.bos_token_id] if task.tokenizer.bos_token_id is not None else enc("a")
                scored = (enc("ab:") if task.tokenizer.bos_token_id is not None else enc("b:")) + z + enc(".ba")
                want = direct_log_prob(tiny_policy, start, scored)
            assert got[b, i].item() == pytest.approx(want, abs=1e-4)
    whole = got[torch.arange(len(rows)), traj.lengths]  # the evaluation's terminal-only pass gives the same
    assert torch.allclose(target.terminal_log_rewards(traj), whole, atol=1e-4)


def test_function_and_constraint_terms_are_the_rules_on_every_prefix(tmp_path, tiny_policy, monkeypatch):
    module = tmp_path / "my_rules.py"
    module.write_text("def length(texts, inputs):\n    return [float(len(t)) + len(r['Y']) for t, r in zip(texts, inputs)]\n")
    reward = [{"function": "my_rules:length", "weight": 0.5}, {"contains": "{Y}", "hard": False, "weight": 2.0},
              {"regex": "^a"}, {"not_contains": "C", "case_sensitive": False}]
    task = make_task(tmp_path, reward, base_dir=str(tmp_path))
    set_up(task, tiny_policy)
    traj, rows = rows_of(task, ["aba", "cba"])
    got = task.target(tiny_policy).log_rewards(traj)
    for b, row in enumerate(rows):
        for i in range(len(row) + 1):
            text = task.tokenizer.decode(row[:i])
            want = 0.5 * (len(text) + 2) - (0.0 if "ba" in text else 2.0)
            if not text.startswith("a") or "c" in text.lower():
                want = -math.inf
            assert got[b, i].item() == pytest.approx(want)
    trained = task.training_target(tiny_policy).log_rewards(traj)  # hard violations cost hard_penalty nats
    assert trained[1, 3].item() == pytest.approx(0.5 * 5 - 0.0 - 2 * task.config.hard_penalty)
    ends = torch.arange(2), traj.lengths
    target = task.target(tiny_policy)
    assert torch.equal(target.terminal_log_rewards(traj), got[ends])
    assert torch.equal(target.terminal_log_rewards(traj, twist=True), trained[ends])


def test_a_yaml_posterior_learns_its_exact_target(tmp_path, tiny_model_dir):
    """An enumerable posterior written in YAML: strings of a/b up to 4 letters, a fixed random table as a Python
    function, and a soft constraint; the trained policy's exact distribution is compared with the target's."""
    from gfnlm.inference.exact import normalize, policy_distribution, total_variation
    from gfnlm.runs import load_run, load_trained_policy, train

    (tmp_path / "table.py").write_text(
        "import random\n\ndef score(texts, inputs):\n"
        "    return [random.Random('t' + t).uniform(-2, 2) for t in texts]\n")
    (tmp_path / "inputs.txt").write_text("ab\n")
    config = {"model": str(tiny_model_dir), "steps": 300, "trajectories_per_prompt": 32, "lr": 1e-2,
              "warmup_steps": 0, "lr_schedule": "cosine", "epsilon": 0.05, "buffer_capacity": 64,
              "buffer_tolerance": 0.0, "max_grad_norm": 0.0, "checkpoint_every": 10_000, "progress": False,
              "evaluate": False, "output_dir": str(tmp_path / "run"),
              "task": {"data": "inputs.txt", "prompt": "{X}:", "allowed_chars": "ab", "max_len": 4,
                       "reward": [{"function": "table:score"}, {"not_contains": "bb", "hard": False, "weight": 1.5}]}}
    (tmp_path / "posterior.yaml").write_text(yaml.safe_dump(config))
    run = train(resolve("posterior", str(tmp_path / "posterior.yaml"), {}))
    spec = load_run(run)
    policy = load_trained_policy(spec, run)
    space = spec.task.action_space()
    learned = normalize(policy_distribution(policy.model, space, spec.task.train_prompts()[0].ids))
    import random

    decode = policy.tokenizer.decode
    exact = normalize({z: random.Random("t" + decode(list(z))).uniform(-2, 2) - 1.5 * ("bb" in decode(list(z)))
                       for z in learned})
    assert len(exact) == 2 + 4 + 8 + 16  # every string of 1 to 4 letters
    assert total_variation(learned, exact) < 0.05


def write_config(tmp_path, task: dict, name="p.yaml") -> str:
    (tmp_path / "in.csv").write_text("X,Y\nab,ba\n")
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"task": {"data": "in.csv", **task}}))
    return str(path)


@pytest.mark.parametrize("task, message", [
    ({"reward": [{"lm": {"context": "{X}", "text": "{Z} {W}"}}]}, "reads the column {W}"),
    ({"prompt": "{Q}", "reward": [{"contains": "a"}]}, "task.prompt reads the column {Q}"),
    ({"reward": [{"function": "no_such_module:f"}]}, "cannot import 'no_such_module'"),
    ({"reward": [{"function": "no_colon"}]}, "must be written module:function"),
    ({"reward": [{"contains": "a", "weight": "heavy"}]}, "weight must be a finite number"),
    ({"reward": [{"contains": "a", "regex": "b"}]}, "needs exactly one of"),
    ({"reward": [{"lm": {"context": "{X}", "text": "{Y}"}}]}, "must appear exactly once"),
    ({"reward": [{"regex": "("}]}, "is not a regular expression"),
    ({"reward": []}, "must be a list of reward terms"),
])
def test_bad_input_is_one_line_naming_the_file_and_the_term_before_the_model_loads(tmp_path, task, message,
                                                                                   monkeypatch):
    import gfnlm.model.loading as loading

    monkeypatch.setattr(loading, "load_base_model", lambda *a, **k: pytest.fail("the model must not load"))
    path = write_config(tmp_path, task)
    with pytest.raises(GfnlmError) as info:
        resolve("posterior", path, {})
    assert message in str(info.value) and str(info.value).startswith(path) and "\n" not in str(info.value)


@pytest.mark.parametrize("body, message", [
    ("return [0.0]", "returned 1 values for"),
    ("return [float('nan')] * len(texts)", "returned nan"),
    ("return [float('-inf')] * len(texts)", "minus infinity for every output of the first batch"),
    ("raise ValueError('boom')", "raised ValueError: boom"),
])
def test_a_bad_reward_function_stops_the_first_batch_with_one_line(tmp_path, tiny_model_dir, body, message):
    module = f"bad_{abs(hash(body))}"  # one module per case: an imported module stays in sys.modules
    (tmp_path / f"{module}.py").write_text(f"def f(texts, inputs):\n    {body}\n")
    path = write_config(tmp_path, {"reward": [{"function": f"{module}:f"}], "max_len": 3})
    run = tmp_path / "run"
    spec = resolve("posterior", path, {"model": str(tiny_model_dir), "steps": "2", "trajectories_per_prompt": "4",
                                       "output_dir": str(run), "progress": "false"})
    from gfnlm.runs import train

    with pytest.raises(GfnlmError) as info:
        train(spec)
    assert message in str(info.value) and path in str(info.value) and f"term 1 (function {module}:f)" in str(info.value)
    assert (run / "config.yaml").is_file()  # what was written stays


def test_a_task_from_an_installed_package_is_found_by_its_entry_point(tmp_path, monkeypatch):
    from gfnlm.tasks import task_class, task_names

    (tmp_path / "thirdparty_tasks.py").write_text(
        "from gfnlm.tasks.rng.task import RngTask\n\nclass Dice(RngTask):\n    name = 'dice'\n")
    info = tmp_path / "thirdparty_tasks-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-tasks\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[gfnlm.tasks]\ndice = thirdparty_tasks:Dice\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "dice" in task_names()
    assert task_class("dice").__name__ == "Dice"
    with pytest.raises(GfnlmError, match="Unknown task 'dize'.*Did you mean 'dice'"):
        task_class("dize")


EXAMPLE_FAST = ["--steps", "2", "--trajectories_per_prompt", "2", "--progress", "false", "--task.eval_samples", "2",
                "--task.eval_prompts", "1", "--task.eval_particles", "2"]


@pytest.mark.parametrize("example", ["keyword/keyword.yaml", "infilling/infilling.yaml"])
def test_the_yaml_examples_run_end_to_end_on_a_tiny_model(tmp_path, tiny_model_dir, example, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", "posterior", "--config", str(ROOT / "examples" / example), "--model", str(tiny_model_dir),
                 "--dtype", "float32", "--output_dir", str(run), *EXAMPLE_FAST]) == 0
    assert (run / "eval_posterior.md").is_file() and (run / "eval_posterior_frontier.png").is_file()
    assert main(["sample", "--run", str(run), "--n", "2", "--correct", "smc", "--particles", "2"]) == 0
    assert main(["eval", "posterior", "--run", str(run), "--task.eval_methods", "gfn,base_rejection",
                 "--task.eval_samples", "2", "--progress", "false"]) == 0
    assert "base_rejection" in (run / "eval_posterior.md").read_text()


def test_the_python_example_runs_end_to_end_on_a_tiny_model(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "word_count"))
    import word_count

    run = word_count.main(["--model", str(tiny_model_dir), "--steps", "2", "--output_dir", str(tmp_path / "run"),
                           "--eval_samples", "2"])
    assert (run.dir / "eval_posterior.md").is_file()
    assert len(run.sample(n=2, input={"X": "ab", "words": "2"})) == 2
    reloaded = __import__("gfnlm").load(run.dir)  # the function is importable: module:function was saved
    assert reloaded.spec.task.term_functions


def test_the_api_says_which_function_a_run_needs_again(tmp_path, tiny_model_dir):
    import gfnlm

    def local_rule(texts, inputs):
        return [0.0] * len(texts)

    run = gfnlm.train(["ab"], reward=[gfnlm.function(local_rule)], model=str(tiny_model_dir), steps=1,
                      trajectories_per_prompt=2, max_len=2, output_dir=str(tmp_path / "run"), progress=False,
                      evaluate=False)
    with pytest.raises(GfnlmError, match="passed again by name"):
        gfnlm.load(run.dir)
    assert len(gfnlm.load(run.dir, functions={"local_rule": local_rule}).sample(n=2)) == 2
    assert sys.modules.get("gfnlm.api") is not None


def test_smc_under_a_hard_constraint_estimates_the_exact_normalizer(tmp_path, tiny_policy):
    """SMC's intermediate targets use the smoothed constraint (a prefix without "b" may still get one), its final
    weights the exact one: the estimate of Z matches the enumerated sum and every output satisfies it."""
    from gfnlm.inference.correction import smc
    from gfnlm.inference.exact import policy_distribution
    from gfnlm.infra.seeding import torch_generator

    task = set_up(make_task(tmp_path, [{"lm": {"context": "{X}:", "text": "{Z}."}}, {"contains": "b"}],
                            allowed_chars="ab", max_len=3), tiny_policy)
    space, prompt, target = task.action_space(), task.train_set[0], task.target(tiny_policy)
    with tiny_policy.base() as model:
        support = [list(z) for z in policy_distribution(model, space, prompt.ids)]
        traj = Trajectories.from_rows([prompt.ids], [prompt.key], [0] * len(support), support)
        exact = torch.logsumexp(target.log_rewards(traj)[torch.arange(len(support)), traj.lengths], 0).item()
        out = smc(model, space, target, prompt.ids, groups=256, particles=16,
                  generator=torch_generator("cpu", 0, "smc test"))
    estimate = (torch.logsumexp(out.log_z, 0) - math.log(256)).item()
    assert math.isfinite(estimate) and abs(estimate - exact) < 0.1
    assert all("b" in task.tokenizer.decode(row) for row in out.completions)


def test_the_default_evaluation_runs_the_baselines_that_apply(tmp_path):
    soft = make_task(tmp_path, [{"lm": {"context": "{X}", "text": "{Z}."}}]).config
    hard = make_task(tmp_path, [{"lm": {"context": "{X}", "text": "{Z}."}}, {"regex": "a"}]).config
    assert soft.evaluation_methods(1) == ["gfn", "sampling", "tempered", "gfn_is", "base_is", "gfn_smc", "base_smc"]
    assert hard.evaluation_methods(2) == ["gfn", "sampling", "tempered", "gfn_is", "base_is", "base_rejection"]
