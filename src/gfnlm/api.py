"""Python API: a posterior of your own in a few lines.

    import gfnlm

    def five_words(texts, inputs):          # one log-reward per text; inputs: each text's input row
        return [0.0 if len(t.split()) == 5 else -20.0 for t in texts]

    run = gfnlm.train(["The old lighthouse", "On the first day of spring"],
                      reward=[gfnlm.lm(context="{X}", text="{Z}."), gfnlm.function(five_words)],
                      output_dir="runs/five-words", steps=100, max_len=16)
    print(run.sample(n=4))                  # texts for the first input
    run.evaluate()                          # the harness: baselines, IS/SMC, diversity, constraint rates

The reward terms are the YAML ones (docs/posteriors.md); ``train`` takes every trainer option
(``gfnlm train posterior --help``) and task option as keyword arguments, and writes an ordinary run folder.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from gfnlm.infra.errors import GfnlmError
from gfnlm.posterior import PosteriorConfig
from gfnlm.runs import RunSpec, load_run, load_trained_policy, resolve
from gfnlm.runs import train as train_run

POSTERIOR = "posterior"
INPUTS_FILE = "inputs.jsonl"  # the inputs given from Python, written into the run folder
TEST_INPUTS_FILE = "test_inputs.jsonl"


def lm(text: str, context: str = "", weight: float = 1.0, model: str = "base", renormalize: bool = False) -> dict:
    """log p_LM(text | context), Z in one of them: lm("{Z}.", context="{X}") is log p(Z . | X)."""
    return {"lm": {"context": context, "text": text}, "weight": weight, "model": model, "renormalize": renormalize}


def function(fn: Callable[[list[str], list[dict]], Sequence[float]], weight: float = 1.0) -> dict:
    """A Python function of the batch: fn(texts, inputs) -> one log-reward per text (-inf: reward 0)."""
    return {"function": fn, "weight": weight}


def contains(text: str, hard: bool = True, weight: float = 1.0, case_sensitive: bool = True) -> dict:
    return {"contains": text, "hard": hard, "weight": weight, "case_sensitive": case_sensitive}


def not_contains(text: str, hard: bool = True, weight: float = 1.0, case_sensitive: bool = True) -> dict:
    return {"not_contains": text, "hard": hard, "weight": weight, "case_sensitive": case_sensitive}


def regex(pattern: str, hard: bool = True, weight: float = 1.0) -> dict:
    return {"regex": pattern, "hard": hard, "weight": weight}


def function_name(fn: Callable) -> str:
    """module:function when a later process can import it again, else the function's own name."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if module and module != "__main__" and "<" not in qualname:
        return f"{module}:{qualname}"
    return getattr(fn, "__name__", "function")


class Run:
    """A trained posterior's run folder, with its policy loaded on first use."""

    def __init__(self, spec: RunSpec, functions: dict | None = None):
        self.spec = spec
        self.dir = Path(spec.config.output_dir)
        self.functions = functions or {}
        self._policy = None

    @property
    def policy(self):
        if self._policy is None:
            self._policy = load_trained_policy(self.spec, self.dir)
        return self._policy

    def sample(self, n: int = 8, input: str | dict | None = None, base: bool = False, seed: int = 0) -> list[str]:
        """``n`` texts from the policy (or the base model) for an input (default: the first training input)."""
        import contextlib

        from gfnlm.inference.sampling import sample_completions
        from gfnlm.infra.seeding import torch_generator

        policy, task = self.policy, self.spec.task
        if input is None:
            prompt = task.train_prompts()[0].ids
        else:
            row = {"X": input} if isinstance(input, str) else dict(input)
            prompt = tuple(policy.tokenizer.encode(task.config.prompt.format_map(row), add_special_tokens=False))
        space = task.action_space().to(policy.device)
        with policy.base() if base else contextlib.nullcontext(policy.model) as model:
            rows = sample_completions(model, space, prompt, n, generator=torch_generator(policy.device, seed),
                                      progress=False)
        return [policy.tokenizer.decode(r) for r in rows]

    def evaluate(self, **task_options):
        """The task's evaluation (eval_* options may be changed), written to the run folder; returns its
        metrics by method."""
        policy = self.policy
        if task_options:
            self.spec.task.config = dataclasses.replace(self.spec.task.config, **task_options)
            self.spec.task.config.validate()
        return self.spec.task.evaluate(policy, self.dir, self.spec.config).metrics


def train(inputs: Sequence[str | dict], reward: Sequence[dict], test_inputs: Sequence[str | dict] = (),
          config: str | None = None, **options) -> Run:
    """Train a policy for the posterior R(Z | X) = exp(sum of the reward terms) over ``inputs`` (strings are
    the column X; dicts name their columns). ``config``: an optional YAML preset; ``options``: trainer and
    task options (``steps=100``, ``max_len=16``, ``prompt="{X}"``, ``output_dir=...``)."""
    task_keys = {f.name for f in dataclasses.fields(PosteriorConfig)}
    task = {k: v for k, v in options.items() if k in task_keys}
    trainer = {k: v for k, v in options.items() if k not in task_keys}
    if "data" in task or "test_data" in task:
        raise GfnlmError("gfnlm.train takes the inputs as its first argument, not data= / test_data=.")
    functions, terms = {}, []
    for term in reward:
        term = dict(term)
        if callable(term.get("function")):
            name = function_name(term["function"])
            functions[name] = term["function"]
            term["function"] = name
        terms.append(term)
    run_dir = Path(trainer.get("output_dir", "runs/posterior"))
    run_dir.mkdir(parents=True, exist_ok=True)
    task["data"] = str(_write_inputs(run_dir / INPUTS_FILE, inputs).resolve())
    if test_inputs:
        task["test_data"] = str(_write_inputs(run_dir / TEST_INPUTS_FILE, test_inputs).resolve())
    spec = resolve(POSTERIOR, config, {**trainer, "output_dir": str(run_dir), "task": {**task, "reward": terms}},
                   functions)
    train_run(spec)
    return Run(spec, functions)


def load(run_dir: str | Path, functions: dict[str, Callable] | None = None) -> Run:
    """A trained run folder; reward functions given from Python (not importable by module:function) are passed
    again by name."""
    return Run(load_run(run_dir, functions=functions), functions)


def _write_inputs(path: Path, inputs: Sequence[str | dict]) -> Path:
    if isinstance(inputs, str) or not inputs:
        raise GfnlmError("inputs must be a non-empty list of strings (column X) or of dicts of columns.")
    rows = [{"X": x} if isinstance(x, str) else x for x in inputs]
    if not all(isinstance(r, dict) for r in rows):
        raise GfnlmError("inputs must be strings (column X) or dicts of columns.")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
