"""The random-number task: make the LM write an integer uniformly at random from [low, high].

Target: uniform over the integers, each written in its canonical spelling (" 42" after the prompt's
comma) and canonical tokenization (SmolLM2 writes one token per digit, so numbers span up to four
tokens; with a tokenizer that can spell " 42" several ways only one of them is rewarded, so each
number gets exactly one unit of mass); every other completion gets ``invalid_log_reward``. Every prefix is scored, so " 4" is
itself a valid terminal number while " 4" -> " 42" continues. The prompt is a list so that the base
model already writes numbers most of the time (with a chat-style question it almost never does).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gfnlm.core.action_space import ActionSpace
from gfnlm.core.config import check_range
from gfnlm.core.policy_scores import score_policy
from gfnlm.core.task import EvalResult, Task, TaskPrompt
from gfnlm.core.trajectories import Trajectories
from gfnlm.evaluation.distribution import empirical_metrics, uniform_noise_floor
from gfnlm.evaluation.plots import plot_histograms
from gfnlm.inference.sampling import sample_completions
from gfnlm.infra.distributed import current, gather_flat, process_generator, share
from gfnlm.infra.errors import GfnlmError
from gfnlm.infra.text_files import read_prompt_file
from gfnlm.model.policy import Policy
from gfnlm.targets import RuleTarget, Target


@dataclass
class RngConfig:
    prompt: str = field(default="Random integers drawn uniformly between 0 and 100: 42, 7, 93, 15,", metadata={
        "help": "the text the LM continues with a number"})
    prompt_file: str = field(default="", metadata={
        "help": "one prompt per line; replaces prompt (evaluation uses the first line)"})
    low: int = field(default=0, metadata={"help": "smallest number of the uniform target"})
    high: int = field(default=100, metadata={"help": "largest number of the uniform target"})
    terminator: str = field(default=",", metadata={"help": "the text that ends a number (the policy's stop)"})
    leading_space: bool = field(default=True, metadata={
        "help": "numbers are spelled with a leading space (\" 42\"), as after the prompt's comma"})
    min_len: int = field(default=0, metadata={
        "help": "fewest tokens before the policy may stop (0: the token length of the shortest valid number; "
                "shorter completions, such as the lone leading space, can never be valid)"})
    max_len: int = field(default=0, metadata={
        "help": "most tokens of a completion (0: the token length of the longest valid number)"})
    invalid_log_reward: float = field(default=-60.0, metadata={
        "help": "log-reward of every invalid completion; far below -(max_len x log vocabulary), so invalid "
                "strings hold almost no mass"})
    restrict_vocab: bool = field(default=False, metadata={
        "help": "only the tokens of valid numbers and the terminator may be written"})
    eval_samples: int = field(default=1000, metadata={"help": "samples per model (base and policy) in the evaluation"})
    eval_batch_size: int = field(default=250, metadata={"help": "samples drawn together in the evaluation"})

    def validate(self) -> None:
        if not self.prompt_file and not self.prompt.strip():
            raise GfnlmError("task.prompt is empty; give the text the LM continues with a number.")
        if not self.terminator:
            raise GfnlmError("task.terminator is empty; give the text that ends a number (e.g. ',').")
        check_range("task.low", self.low, low=0)
        if self.high < self.low:
            raise GfnlmError(f"task.high ({self.high}) must be at least task.low ({self.low}).")
        check_range("task.min_len", self.min_len, low=0)
        check_range("task.max_len", self.max_len, low=0)
        check_range("task.eval_samples", self.eval_samples, low=1)
        check_range("task.eval_batch_size", self.eval_batch_size, low=1)
        if self.invalid_log_reward >= 0:
            raise GfnlmError("task.invalid_log_reward must be negative (valid numbers have log-reward 0).")


class RngTask(Task):
    name = "rng"
    Config = RngConfig
    training_metric_names = ("valid_fraction",)
    evaluates_on_every_process = True

    def check_inputs(self) -> None:
        self.prompt_texts = read_prompt_file(self.config.prompt_file) if self.config.prompt_file else [self.config.prompt]

    def setup(self, tokenizer, vocab_size: int) -> None:
        c = self.config
        self.check_inputs()
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.prompts = []
        for i, text in enumerate(self.prompt_texts):
            ids = tuple(tokenizer.encode(text, add_special_tokens=False))
            if not ids:
                raise GfnlmError(f"Prompt {text!r} tokenizes to nothing; give a non-empty prompt.")
            self.prompts.append(TaskPrompt(text, ids, f"rng-{i}"))
        self.prompt_ids = self.prompts[0].ids
        self.terminator_ids = tokenizer.encode(c.terminator, add_special_tokens=False)
        self.pattern = re.compile(r"^ (0|[1-9][0-9]*)$" if c.leading_space else r"^(0|[1-9][0-9]*)$")
        self.spellings = {n: self.spell(n) for n in range(c.low, c.high + 1)}
        self.canonical = {n: tuple(tokenizer.encode(s, add_special_tokens=False)) for n, s in self.spellings.items()}
        self.number_of = {ids: n for n, ids in self.canonical.items()}
        longest = max(len(ids) for ids in self.canonical.values())
        self.max_len = c.max_len or longest
        self.min_len = c.min_len or min(len(ids) for ids in self.canonical.values())
        if self.max_len < longest:
            raise GfnlmError(f"task.max_len {c.max_len} is shorter than the longest number ({longest} tokens).")

    def spell(self, n: int) -> str:
        return (" " if self.config.leading_space else "") + str(n)

    def parse(self, text: str) -> int | None:
        match = self.pattern.match(text)
        if not match:
            return None
        n = int(match.group(1))
        return n if self.config.low <= n <= self.config.high else None

    def train_prompts(self) -> list[TaskPrompt]:
        return list(self.prompts)

    def action_space(self) -> ActionSpace:
        allowed = None
        if self.config.restrict_vocab:
            allowed = {t for ids in self.canonical.values() for t in ids}
        return ActionSpace(self.vocab_size, self.terminator_ids, min_len=self.min_len, max_len=self.max_len,
                           allowed_tokens=allowed)

    def seed_trajectories(self):
        """Every number's canonical spelling, for every prompt: the support is known, and on-policy sampling
        alone almost never explores a branch the base model gives one token in tens of thousands (" 10" ->
        "0" of " 100"), so the policy would learn to stop there and leave that number no mass."""
        return [(tp.key, ids, (True,) * len(ids)) for tp in self.prompts for ids in self.canonical.values()]

    def log_reward(self, prompt: tuple[int, ...], completion: tuple[int, ...]) -> float:
        return 0.0 if tuple(completion) in self.number_of else self.config.invalid_log_reward

    def target(self, policy: Policy) -> Target:
        return RuleTarget(self.log_reward, on="tokens")

    @torch.no_grad()
    def exact_number_probabilities(self, model, space: ActionSpace) -> dict[int, float]:
        """q(n) of every number's canonical token sequence, computed exactly (no sampling noise)."""
        numbers = sorted(self.canonical)
        traj = Trajectories.from_rows([self.prompt_ids], ["eval"], [0] * len(numbers),
                                      [self.canonical[n] for n in numbers], device=space.vocab_bias.device)
        scores = score_policy(model, space, traj)
        rows = torch.arange(traj.batch_size, device=traj.lengths.device)
        log_q = scores.log_pf.sum(-1) + scores.log_stop[rows, traj.lengths]
        log_q = torch.where(scores.terminable[rows, traj.lengths], log_q, torch.full_like(log_q, -math.inf))
        return {n: math.exp(float(v)) for n, v in zip(numbers, log_q)}

    def training_metrics(self, traj: Trajectories, texts: list[str]) -> dict:
        valid = sum(tuple(traj.row(b)) in self.number_of for b in range(traj.batch_size))
        return {"valid_fraction": valid / max(traj.batch_size, 1)}

    def evaluate(self, policy: Policy, run_dir: Path, config) -> EvalResult:
        """Sample the base model and the policy, compare both with the uniform target, plot histograms.
        Under several processes each draws its share of the samples from its own seed (rank 0 from the
        run's seed, as a single process does) and every process gets all of them."""
        c, seed, progress = self.config, config.seed, config.progress and current().is_main
        space = self.action_space().to(policy.device)
        support = list(range(c.low, c.high + 1))
        results, series = {}, {}
        for name in ("base", "policy"):
            generator = process_generator(seed, policy.device)
            n = share(c.eval_samples)
            if name == "base":
                with policy.base() as model:
                    rows = sample_completions(model, space, self.prompt_ids, n, c.eval_batch_size,
                                              generator=generator, desc="sample base", progress=progress)
            else:
                rows = sample_completions(policy.model, space, self.prompt_ids, n, c.eval_batch_size,
                                          generator=generator, desc="sample policy", progress=progress)
            rows = gather_flat(rows)
            texts = [self.tokenizer.decode(r) for r in rows]
            values = [self.number_of.get(tuple(r)) for r in rows]
            metrics = empirical_metrics(values, support)
            if name == "base":
                with policy.base() as model:
                    exact = self.exact_number_probabilities(model, space)
            else:
                exact = self.exact_number_probabilities(policy.model, space)
            mass = sum(exact.values())
            metrics["exact_valid_mass"] = mass
            metrics["exact_tv"] = 0.5 * sum(abs(q - 1 / len(support)) for q in exact.values()) + 0.5 * (1 - mass)
            metrics["exact_min_max_ratio"] = min(exact.values()) / max(exact.values())
            metrics["lenient_valid_fraction"] = sum(self.parse(t) is not None for t in texts) / len(texts)
            metrics["top_invalid"] = Counter(t for t, v in zip(texts, values) if v is None).most_common(5)
            results[name] = metrics
            series[name] = {
                "counts": Counter(v for v in values if v is not None), "n": len(values),
                "label": f"TV {metrics['tv']:.3f}, valid {metrics['valid_fraction']:.1%}, "
                         f"{metrics['distinct']} distinct values",
            }
        floor = uniform_noise_floor(len(support), c.eval_samples, seed=seed)
        results["perfect_sampler_floor"] = floor
        results["tv_ratio"] = results["policy"]["tv"] / results["base"]["tv"] if results["base"]["tv"] else None
        plot = plot_histograms(Path(run_dir) / "rng_histogram.png", support, series,
                               f"Samples of integers {c.low}..{c.high} ({c.eval_samples} each, temperature 1)")
        (Path(run_dir) / "eval_rng.json").write_text(json.dumps(results, indent=1))
        lines = [
            f"Prompt: `{self.prompts[0].text}` -- {c.eval_samples} samples per model at temperature 1.",
            "",
            "Sampled columns come from the samples; exact columns from q(n) of every number computed by scoring",
            "its token sequence (exact TV counts the mass outside the 0..100 numbers as error).",
            "",
            "| model | valid (sampled) | distinct | TV to uniform (sampled) | KL(valid samples ‖ uniform) | valid mass (exact) "
            "| TV to uniform (exact) | min q(n) / max q(n) (exact) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name in ("base", "policy"):
            r = results[name]
            lines.append(f"| {name} | {r['valid_fraction']:.3f} | {r['distinct']} | {r['tv']:.3f} | {r['kl_valid']:.3f} "
                         f"| {r['exact_valid_mass']:.3f} | {r['exact_tv']:.3f} | {r['exact_min_max_ratio']:.3g} |")
        lines.append(f"| perfect sampler, same N (expected) | 1.000 | - | {floor['tv']:.3f} | {floor['kl_valid']:.3f} "
                     "| 1.000 | 0.000 | 1 |")
        lines.append("")
        lines.append(f"TV ratio policy / base: {results['tv_ratio']:.3f}" if results["tv_ratio"] is not None else "")
        return EvalResult(results, [plot], "\n".join(lines))
