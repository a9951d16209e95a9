"""Sentence continuation: sample the next sentence Z after a prompt X in proportion to p_LM(Z | X)^(1/T).

Z ends with "." (the terminator). Newlines, tabs, special tokens and every other token that contains
the terminator's text are banned, in the sampler and in the reward alike: the reward is the base LM
renormalized over the allowed tokens, so the target is a distribution over exactly the sentences the
policy can write. T is the run's final reward temperature (``reward_temp_end``); the schedule
``reward_temp_start -> reward_temp_end`` anneals towards it during training, as in the paper.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from gfnlm.core.config import EvaluationMethods, check_range
from gfnlm.core.task import EvalResult
from gfnlm.evaluation.methods import ALL_METHODS, DEFAULT_METHODS
from gfnlm.evaluation.tables import evaluation_stem
from gfnlm.infra.errors import GfnlmError
from gfnlm.model.policy import Policy
from gfnlm.model.temperature import TemperatureConditioning
from gfnlm.posterior import PosteriorConfig, PosteriorTask


def builtin_prompt_file(split: str) -> str:
    """The built-in prompts of a split (80 train, 20 test), one per line, as a file path."""
    return str(resources.files("gfnlm.data").joinpath(f"continuation_{split}.txt"))


@dataclass
class ContinuationConfig(EvaluationMethods):
    METHODS = ALL_METHODS
    prompt_file: str = field(default="", metadata={
        "help": "training prompts, one per line (\"\": the built-in set's 80 training prompts)"})
    test_prompt_file: str = field(default="", metadata={
        "help": "held-out prompts, one per line (\"\": the built-in set's 20 test prompts)"})
    terminator: str = field(default=".", metadata={"help": "the text that ends a sentence (the policy's stop)"})
    min_len: int = field(default=1, metadata={"help": "fewest tokens before the policy may stop"})
    max_len: int = field(default=20, metadata={"help": "most tokens of a sentence"})
    eval_samples: int = field(default=16, metadata={"help": "N samples per prompt and method"})
    eval_prompts: int = field(default=0, metadata={"help": "evaluate on the first this-many test prompts (0: all)"})
    eval_methods: str = field(default=",".join(DEFAULT_METHODS), metadata={
        "help": f"comma-separated evaluation methods, of {', '.join(ALL_METHODS)}"})
    eval_top_p: float = field(default=0.95, metadata={"help": "p of the nucleus-sampling method"})
    eval_particles: int = field(default=8, metadata={
        "help": "corrected methods: policy particles per output (the base model gets as many tokens)"})

    def validate(self) -> None:
        if not self.terminator:
            raise GfnlmError("task.terminator is empty; give the text that ends a sentence (e.g. '.').")
        check_range("task.min_len", self.min_len, low=0)
        check_range("task.max_len", self.max_len, low=1)
        if self.min_len > self.max_len:
            raise GfnlmError(f"task.min_len ({self.min_len}) exceeds task.max_len ({self.max_len}).")
        check_range("task.eval_samples", self.eval_samples, low=2)
        check_range("task.eval_prompts", self.eval_prompts, low=0)
        check_range("task.eval_particles", self.eval_particles, low=1)
        if not 0 < self.eval_top_p <= 1:
            raise GfnlmError(f"task.eval_top_p must be in (0, 1], got {self.eval_top_p}.")
        self.methods()  # an empty list or an unknown method is an error


def as_posterior(c: ContinuationConfig) -> PosteriorConfig:
    """The continuation options as a posterior: one LM term log p(Z terminator | X), renormalized."""
    train = c.prompt_file or builtin_prompt_file("train")
    test = c.test_prompt_file or ("" if c.prompt_file else builtin_prompt_file("test"))
    return PosteriorConfig(
        data=train, test_data=test, prompt="{X}", terminator=c.terminator, min_len=c.min_len, max_len=c.max_len,
        reward=[{"lm": {"context": "{X}", "text": "{Z}" + c.terminator.replace("{", "{{").replace("}", "}}")},
                 "renormalize": True}],
        eval_samples=c.eval_samples, eval_prompts=c.eval_prompts, eval_methods=c.eval_methods,
        eval_top_p=c.eval_top_p, eval_particles=c.eval_particles)


class ContinuationTask(PosteriorTask):
    """The posterior p_LM(Z terminator | X)^(1/T), renormalized over the allowed tokens: one LM term of the
    posterior mechanism, with the built-in prompts and an evaluation at each temperature of a conditional run."""

    name = "continuation"
    Config = ContinuationConfig
    evaluates_conditional_runs = True

    def __init__(self, config: ContinuationConfig):
        super().__init__(as_posterior(config))

    def evaluate(self, policy: Policy, run_dir: Path, config) -> EvalResult:
        """The harness at the run's temperature; a temperature-conditional run is evaluated at each end of
        its range (or each of its values), one table per T (``eval_continuation_T0.8``...)."""
        if not config.conditional_temperatures:
            return self.evaluate_at(policy, run_dir, config, config.reward_temp_end)
        temperatures = TemperatureConditioning(config.conditional_temperatures).values
        results = [self.evaluate_at(policy, run_dir, config, t) for t in temperatures]
        text = "\n\n".join(f"### T = {t:g}\n\n{r.markdown}" for t, r in zip(temperatures, results))
        return EvalResult({f"T={t:g}": r.metrics for t, r in zip(temperatures, results)},
                          [p for r in results for p in r.plots], text)

    def evaluate_at(self, policy: Policy, run_dir: Path, config, temperature: float,
                    methods: list[str] | None = None, stem: str | None = None) -> EvalResult:
        """The harness at one temperature, for ``methods`` (default: the task's); a temperature-conditional
        policy reads T (within its trained range)."""
        from gfnlm.evaluation.harness import evaluate_methods  # transformers + sentence-transformers: heavy

        c = self.config
        conditional = bool(config.conditional_temperatures)
        reading = (TemperatureConditioning(config.conditional_temperatures).at(policy, temperature) if conditional
                   else contextlib.nullcontext())
        stem = stem or evaluation_stem(self.name, temperature if conditional else None)
        prompts = self.test_set or self.train_set
        split = "test" if self.test_set else "train (no test prompts given)"
        if c.eval_prompts:
            prompts = prompts[: c.eval_prompts]
        with reading:
            rows, markdown, plot = evaluate_methods(
                policy, self.action_space(), self.target(policy), prompts, methods or c.methods(), c.eval_samples,
                temperature, config.seed, Path(run_dir), stem,
                f"next sentence, T = {temperature:g}: {len(prompts)} {split.split()[0]} prompts x {c.eval_samples} "
                "samples", top_p=c.eval_top_p, progress=config.progress, particles=c.eval_particles)
        text = "\n".join([
            f"{len(prompts)} {split} prompts, N = {c.eval_samples} samples per prompt and method, target "
            f"p_LM(Z | X)^(1/T) with T = {temperature:g}. Likelihoods are log p_LM(Z . | X) under the base model "
            "(renormalized over the allowed tokens); diversity is over each prompt's N samples, averaged over "
            "prompts. Importance estimates use q's own samples; 'sampling' is the policy before training "
            "(the base model under the same action space). Corrected methods (gfn_/base_ is/smc) draw each "
            f"output from {c.eval_particles} policy samples' worth of generated tokens.",
            "", markdown])
        by_method = {r["method"]: r for r in rows}
        if "gfn" in by_method and "sampling" in by_method:
            text += (f"\n\nKL(q ‖ p_T), importance-sampling estimate: before training (base) "
                     f"{by_method['sampling']['kl_q_p']:.3f} -> after training {by_method['gfn']['kl_q_p']:.3f}.")
        (Path(run_dir) / f"{stem}_summary.json").write_text(json.dumps(by_method, indent=1))
        return EvalResult(by_method, [plot], text)
