"""Arithmetic with a calculator tool: the latent Z is a chain of calculator calls.

X = "Question: 3 + 5 - 6 = ? Answer:", Z = " 3 + 5 = 8 , 8 - 6 = 2" where every result after "="
is written by the calculator (non-policy tokens), and the target is p_LM(X Z Y) with
Y = "\\nThe answer is 2." for the correct answer: the policy stops by writing Y's first token
("\\n"), and the reward of every prefix appends all of Y. The policy may only write digits, spaces,
" +", " -", " =", " ," and the stop. The gold rationales of the first training problems seed the
replay buffer (with their calculator outputs marked as non-policy, so replays reproduce them).

Evaluation: K chains per test question (with the calculator); the answer is chosen by majority of
the chains' final results and by the highest total p_LM(Y | X, Z) over the chains.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from gfnlm.action_space import ActionSpace
from gfnlm.arithmetic_data import Problem, generate
from gfnlm.config import check_range
from gfnlm.errors import GfnlmError
from gfnlm.lm_forward import continuation_log_probs
from gfnlm.policy import Policy
from gfnlm.targets import PromptAnswerLikelihood, Target
from gfnlm.tasks.base import EvalResult, Task, TaskPrompt
from gfnlm.tools import Calculator, ToolHook
from gfnlm.trajectories import Trajectories

POLICY_PIECES = [" ", *"0123456789", " +", " -", " =", " ,"]
NUMBER = re.compile(r"-?\d+")


@dataclass
class ArithmeticConfig:
    seed: int = 0
    train_size: int = 50
    gold_size: int = 10
    test_size: int = 200
    train_operands: str = "3,4"
    ood_operands: int = 5
    max_operand: int = 9
    answer_template: str = "\nThe answer is {answer}."
    min_len: int = 5  # as the reference: with 0 the policy learns to answer directly (empty chains)
    max_len: int = 40  # tokens of Z, calculator outputs included
    eval_questions: int = 50  # per test split
    eval_chains: int = 10  # K chains per question
    eval_temperature: float = 0.5
    eval_batch_questions: int = 16
    eval_methods: str = "gfn,cot_prompting"
    eval_vote_candidates: int = 4  # answers compared by total p(Y | X, Z): the chains' most frequent ones
    cot_shots: int = 3  # worked examples (gold rationales) before each question for cot_prompting

    def validate(self) -> None:
        for name in ("train_size", "test_size", "eval_questions", "eval_chains", "eval_batch_questions",
                     "eval_vote_candidates"):
            check_range(f"task.{name}", getattr(self, name), low=1)
        check_range("task.gold_size", self.gold_size, low=0)
        check_range("task.max_operand", self.max_operand, low=1)
        check_range("task.min_len", self.min_len, low=0)
        check_range("task.max_len", self.max_len, low=1)
        check_range("task.cot_shots", self.cot_shots, low=0)
        if not self.methods() or any(m not in ("gfn", "cot_prompting") for m in self.methods()):
            raise GfnlmError(f"task.eval_methods {self.eval_methods!r}: choose from gfn, cot_prompting.")
        if self.eval_temperature <= 0:
            raise GfnlmError("task.eval_temperature must be positive.")
        if "{answer}" not in self.answer_template or not self.answer_template.startswith("\n"):
            raise GfnlmError("task.answer_template must start with a newline (the stop) and contain {answer}.")
        operands = self.operand_counts()
        if not operands or min(operands + (self.ood_operands,)) < 2:
            raise GfnlmError(f"task.train_operands {self.train_operands!r}: give counts of at least 2, like '3,4'.")

    def methods(self) -> list[str]:
        return [m.strip() for m in self.eval_methods.split(",") if m.strip()]

    def operand_counts(self) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in str(self.train_operands).split(",") if x.strip())
        except ValueError as exc:
            raise GfnlmError(f"task.train_operands {self.train_operands!r} is not a list of integers.") from exc


def final_answer(text: str) -> int | None:
    """The last number of a chain: the calculator's last result."""
    numbers = NUMBER.findall(text)
    return int(numbers[-1]) if numbers else None


class ArithmeticTask(Task):
    name = "arithmetic"
    Config = ArithmeticConfig
    training_metric_names = ("chain_correct",)

    def check_inputs(self) -> None:
        c = self.config
        simple, hard = (min(c.operand_counts()), max(c.operand_counts()))
        tests = {"simple": simple, "hard": hard, "ood": c.ood_operands}
        self.data = generate(c.seed, c.train_size, c.gold_size, c.test_size, c.operand_counts(), tests, c.max_operand)

    def setup(self, tokenizer, vocab_size: int) -> None:
        self.check_inputs()
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop = tokenizer.encode("\n", add_special_tokens=False)
        if len(self.stop) != 1:
            raise GfnlmError("The tokenizer does not write a newline as one token; the arithmetic task needs it.")
        self.allowed = sorted({t for piece in POLICY_PIECES for t in tokenizer.encode(piece, add_special_tokens=False)})
        self.train_set = [self.prompt(p, f"train-{i}") for i, p in enumerate(self.data.train)]
        self.answers = {tp.key: self.answer_ids(p) for tp, p in zip(self.train_set, self.data.train)}
        self.problem_of = {tp.key: p for tp, p in zip(self.train_set, self.data.train)}

    def prompt(self, problem: Problem, key: str) -> TaskPrompt:
        return TaskPrompt(problem.query, tuple(self.tokenizer.encode(problem.query, add_special_tokens=False)), key)

    def answer_ids(self, problem: Problem, answer: int | None = None) -> list[int]:
        text = self.config.answer_template.format(answer=problem.answer if answer is None else answer)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def train_prompts(self) -> list[TaskPrompt]:
        return list(self.train_set)

    def action_space(self) -> ActionSpace:
        return ActionSpace(self.vocab_size, self.stop, min_len=self.config.min_len, max_len=self.config.max_len,
                           allowed_tokens=self.allowed + self.stop)

    def target(self, policy: Policy) -> Target:
        return PromptAnswerLikelihood(policy, self.answers)

    def insert_hook(self):
        return ToolHook([Calculator()], self.tokenizer)

    def rationale_tokens(self, problem: Problem) -> tuple[tuple[int, ...], tuple[bool, ...]]:
        """The gold chain as the sampler would have produced it: policy text, then calculator output."""
        tokens: list[int] = []
        mask: list[bool] = []
        for k, step in enumerate(problem.rationale.split(" , ")):
            expression, result = step.split(" = ")
            written = self.tokenizer.encode((" " if k == 0 else " , ") + expression + " =", add_special_tokens=False)
            inserted = self.tokenizer.encode(f" {result}", add_special_tokens=False)
            tokens += written + inserted
            mask += [True] * len(written) + [False] * len(inserted)
        return tuple(tokens), tuple(mask)

    def seed_trajectories(self):
        return [(tp.key, *self.rationale_tokens(p)) for tp, p in zip(self.train_set, self.data.gold)]

    def training_metrics(self, traj: Trajectories, texts: list[str]) -> dict:
        right = sum(final_answer(t) == self.problem_of[traj.row_key(b)].answer for b, t in enumerate(texts))
        return {"chain_correct": right / max(len(texts), 1)}

    # ----------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def answer_log_probs(self, policy: Policy, prompt: TaskPrompt, problem: Problem, chains: list[list[int]],
                         candidates: list[int]) -> torch.Tensor:
        """(K, C) log p_LM(Y_c | X, Z_k) under the base model, in one batched pass."""
        contexts = [tuple(prompt.ids) + tuple(z) for z in chains for _ in candidates]
        answers = [self.answer_ids(problem, y) for _ in chains for y in candidates]
        with policy.base() as model:
            scores = continuation_log_probs(model, contexts, answers)
        return scores.view(len(chains), len(candidates))

    def few_shot_prefix(self) -> tuple[int, ...]:
        """Worked examples (gold chains and answers) for the chain-of-thought prompting baseline."""
        text = "".join(f"{p.query} {p.rationale}{self.config.answer_template.format(answer=p.answer)}\n\n"
                       for p in self.data.gold[: self.config.cot_shots])
        return tuple(self.tokenizer.encode(text, add_special_tokens=False)) if text else ()

    def method_accuracy(self, policy: Policy, method: str, config) -> tuple[dict, list]:
        """Accuracy on every test split. "gfn": the policy on the bare question; "cot_prompting": the base
        model after a few worked examples. Both sample K chains with the calculator and vote."""
        import contextlib

        from tqdm.auto import tqdm

        from gfnlm.sampler import sample_trajectories

        c = self.config
        space = self.action_space().to(policy.device)
        hook = self.insert_hook()
        prefix = self.few_shot_prefix() if method == "cot_prompting" else ()
        generator = torch.Generator(device=policy.device).manual_seed(config.seed)
        results, examples = {}, []
        for split, problems in self.data.tests.items():
            problems = problems[: c.eval_questions]
            counts = Counter()
            for start in tqdm(range(0, len(problems), c.eval_batch_questions), desc=f"{method} {split}",
                              disable=not config.progress, dynamic_ncols=True):
                batch = problems[start: start + c.eval_batch_questions]
                prompts = [TaskPrompt(p.query, prefix + self.prompt(p, "").ids, f"{split}-{start + i}")
                           for i, p in enumerate(batch)]
                index = torch.arange(len(batch)).repeat_interleave(c.eval_chains)
                with policy.base() if method == "cot_prompting" else contextlib.nullcontext(policy.model) as model:
                    traj = sample_trajectories(model, space, [p.ids for p in prompts], [p.key for p in prompts],
                                               index, temperature=c.eval_temperature, generator=generator,
                                               insert_hook=hook)
                for i, (tp, problem) in enumerate(zip(prompts, batch)):
                    chains = [traj.row(b) for b in range(i * c.eval_chains, (i + 1) * c.eval_chains)]
                    finals = [final_answer(self.tokenizer.decode(z)) for z in chains]
                    # the most frequent final answers are the candidates scored by p(Y | X, Z) (cost K x C)
                    tally = Counter(f for f in finals if f is not None)
                    candidates = [y for y, _ in tally.most_common(c.eval_vote_candidates)]
                    counts["questions"] += 1
                    counts["chains_correct"] += sum(f == problem.answer for f in finals)
                    if not candidates:
                        continue
                    majority = candidates[0]
                    log_p = self.answer_log_probs(policy, tp, problem, chains, candidates)
                    by_likelihood = candidates[int(torch.logsumexp(log_p, 0).argmax())]
                    counts["majority"] += majority == problem.answer
                    counts["likelihood"] += by_likelihood == problem.answer
                    if len(examples) < 6:
                        examples.append({"method": method, "split": split, "question": problem.query,
                                         "answer": problem.answer, "chain": self.tokenizer.decode(chains[0]),
                                         "majority": majority, "by_likelihood": by_likelihood})
            n = max(counts["questions"], 1)
            results[split] = {"questions": counts["questions"], "accuracy_majority": counts["majority"] / n,
                              "accuracy_likelihood": counts["likelihood"] / n,
                              "single_chain_accuracy": counts["chains_correct"] / (n * c.eval_chains)}
        return results, examples

    def evaluate(self, policy: Policy, run_dir: Path, config) -> EvalResult:
        c = self.config
        results, examples = {}, []
        for method in c.methods():
            results[method], shown = self.method_accuracy(policy, method, config)
            examples += shown
        (Path(run_dir) / "eval_arithmetic.json").write_text(json.dumps({"results": results, "examples": examples},
                                                                       indent=1))
        lines = [f"{c.eval_chains} chains per question at temperature {c.eval_temperature}, with the calculator; "
                 f"cot_prompting = the base model after {c.cot_shots} worked examples.", "",
                 "| method | split | questions | accuracy (vote by p(Y ∣ X, Z)) | accuracy (majority) | single chain |",
                 "|---|---|---|---|---|---|"]
        for method, by_split in results.items():
            for split, r in by_split.items():
                lines.append(f"| {method} | {split} | {r['questions']} | {r['accuracy_likelihood']:.3f} | "
                             f"{r['accuracy_majority']:.3f} | {r['single_chain_accuracy']:.3f} |")
        lines += ["", "Examples:", ""] + [f"- {e['method']}: `{e['question']}` -> `{e['chain']}` (answer {e['answer']})"
                                           for e in examples]
        return EvalResult(results, [], "\n".join(lines))
