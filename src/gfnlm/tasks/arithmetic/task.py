"""Arithmetic with a calculator tool: the latent Z is a chain of calculator calls.

X = "Question: 3 + 5 - 6 = ? Answer:", Z = " 3 + 5 = 8 , 8 - 6 = 2" where every result after "="
is written by the calculator (non-policy tokens), and the target is p_LM(X Z Y) with
Y = "\\nThe answer is 2." for the correct answer: the policy stops by writing Y's first token
("\\n"), and the reward of every prefix appends all of Y. With ``reward: verifier`` the target is
instead p_LM(Z "\\n" | X) for chains whose final result is the answer and exp(verifier_floor) times it
for the others: the LM's own distribution restricted to correct chains. The policy may only write digits,
spaces, " +", " -", " =", " ," and the stop. The reward model reads ``reward_shots`` worked examples before X (the
policy does not); their keys/values are computed once per batch. The gold rationales of the first
training problems seed the replay buffer (with their calculator outputs marked as non-policy, so
replays reproduce them).

Evaluation: K chains per test question (with the calculator); the answer is chosen by majority of
the chains' final results and by the highest total p_LM(Y | X, Z) over the chains.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gfnlm.baselines.sft import SupervisedExample
from gfnlm.core.action_space import ActionSpace
from gfnlm.core.config import EvaluationMethods, check_choice, check_range
from gfnlm.core.lm_forward import continuation_log_probs
from gfnlm.core.task import EvalResult, Task, TaskPrompt
from gfnlm.core.tools import ToolHook
from gfnlm.core.trajectories import Trajectories
from gfnlm.infra.distributed import current, gather_flat, my_range, process_generator
from gfnlm.infra.errors import GfnlmError
from gfnlm.model.policy import Policy
from gfnlm.targets import LMLikelihood, PromptAnswerLikelihood, Target, TextFunction
from gfnlm.tasks.arithmetic.calculator import Calculator
from gfnlm.tasks.arithmetic.data import Problem, generate

POLICY_PIECES = [" ", *"0123456789", " +", " -", " =", " ,"]
REWARDS = ("joint", "verifier")
NUMBER = re.compile(r"-?\d+")


@dataclass
class ArithmeticConfig(EvaluationMethods):
    METHODS = ("gfn", "cot_prompting")
    seed: int = field(default=0, metadata={"help": "seed of the generated questions"})
    train_size: int = field(default=50, metadata={"help": "training questions"})
    gold_size: int = field(default=10, metadata={
        "help": "the first this-many training questions come with a gold rationale (replay-buffer seeds, SFT "
                "data, worked examples)"})
    test_size: int = field(default=200, metadata={"help": "test questions per split (simple, hard, ood)"})
    train_operands: str = field(default="3,4", metadata={
        "help": "operand counts of the training questions; the smallest is the simple test split, the largest "
                "the hard one"})
    ood_operands: str = field(default="5", metadata={
        "help": "operand counts of the out-of-distribution test splits (one split 'ood-K' each), like '5,6'"})
    validation_size: int = field(default=0, metadata={
        "help": "questions of a 'validation' split drawn like the training questions (for tuning; 0: none)"})
    max_operand: int = field(default=9, metadata={"help": "largest operand"})
    answer_template: str = field(default="\nThe answer is {answer}.", metadata={
        "help": "Y after the chain; starts with a newline (the policy's stop) and contains {answer}"})
    min_len: int = field(default=5, metadata={
        "help": "fewest tokens of Z, as the reference (with 0 the policy learns to answer directly, with empty "
                "chains)"})
    max_len: int = field(default=40, metadata={"help": "most tokens of Z, calculator outputs included"})
    stop_after_tool: bool = field(default=True, metadata={
        "help": "Z is a whole chain of calculator calls: the policy may stop only right after a result"})
    eval_questions: int = field(default=50, metadata={"help": "test questions per split in the evaluation"})
    eval_splits: str = field(default="", metadata={
        "help": "comma-separated splits to evaluate (default: every test split; 'validation' only when named)"})
    eval_chains: int = field(default=10, metadata={"help": "K chains per test question"})
    eval_temperature: float = field(default=0.5, metadata={"help": "sampling temperature of the evaluation's chains"})
    eval_batch_questions: int = field(default=16, metadata={"help": "test questions sampled together"})
    eval_methods: str = field(default="gfn,cot_prompting", metadata={
        "help": "comma-separated evaluation methods, of gfn (the trained policy) and cot_prompting (the base "
                "model after cot_shots worked examples)"})
    eval_vote_by_likelihood: bool = field(default=True, metadata={
        "help": "also vote by total p(Y | X, Z) (one pass of the judge per distinct chain; off: majority only)"})
    eval_vote_candidates: int = field(default=4, metadata={
        "help": "answers compared by total p(Y | X, Z): the chains' most frequent ones"})
    cot_shots: int = field(default=3, metadata={
        "help": "worked examples (gold rationales) before each question for cot_prompting"})
    reward_shots: int = field(default=3, metadata={
        "help": "worked examples the reward model reads before X, as the reference (0: the bare X)"})
    reward: str = field(default="joint", metadata={
        "help": "joint: p_LM(X Z Y) for the correct answer Y (the paper's reward); verifier: p_LM(Z stop | X) for a "
                "chain whose final result is the answer, times exp(verifier_floor) for any other (the LM's own "
                "distribution restricted to correct chains)"})
    verifier_floor: float = field(default=-30.0, metadata={
        "help": "verifier: log-reward added to a chain whose final result is wrong (before the reward temperature)"})

    def validate(self) -> None:
        for name in ("train_size", "test_size", "eval_questions", "eval_chains", "eval_batch_questions",
                     "eval_vote_candidates"):
            check_range(f"task.{name}", getattr(self, name), low=1)
        check_range("task.gold_size", self.gold_size, low=0)
        check_range("task.max_operand", self.max_operand, low=1)
        check_range("task.min_len", self.min_len, low=0)
        check_range("task.max_len", self.max_len, low=1)
        check_range("task.cot_shots", self.cot_shots, low=0)
        check_range("task.reward_shots", self.reward_shots, low=0)
        check_choice("task.reward", self.reward, REWARDS)
        if self.verifier_floor >= 0:
            raise GfnlmError("task.verifier_floor must be negative: a wrong chain is worth less than a right one.")
        self.methods()  # an empty list or an unknown method is an error
        if self.eval_temperature <= 0:
            raise GfnlmError("task.eval_temperature must be positive.")
        if "{answer}" not in self.answer_template or not self.answer_template.startswith("\n"):
            raise GfnlmError("task.answer_template must start with a newline (the stop) and contain {answer}.")
        check_range("task.validation_size", self.validation_size, low=0)
        for name in ("train_operands", "ood_operands"):
            counts = self.counts(name)
            if not counts or min(counts) < 2:
                raise GfnlmError(f"task.{name} {getattr(self, name)!r}: give counts of at least 2, like '3,4'.")
        known = {"simple", "hard", *(f"ood-{k}" for k in self.counts("ood_operands"))}
        known |= {"validation"} if self.validation_size else set()
        unknown = sorted(set(self.splits()) - known)
        if unknown:
            raise GfnlmError(f"task.eval_splits: unknown split(s) {unknown}; the splits are {sorted(known)}.")

    def counts(self, name: str) -> tuple[int, ...]:
        """The operand counts of ``train_operands`` or ``ood_operands``."""
        try:
            return tuple(int(x) for x in str(getattr(self, name)).split(",") if x.strip())
        except ValueError as exc:
            raise GfnlmError(f"task.{name} {getattr(self, name)!r} is not a list of integers.") from exc

    def operand_counts(self) -> tuple[int, ...]:
        return self.counts("train_operands")

    def splits(self) -> list[str]:
        """The splits the evaluation answers."""
        named = [s.strip() for s in self.eval_splits.split(",") if s.strip()]
        return named or ["simple", "hard", *(f"ood-{k}" for k in self.counts("ood_operands"))]


def final_answer(text: str) -> int | None:
    """The last number of a chain: the calculator's last result."""
    numbers = NUMBER.findall(text)
    return int(numbers[-1]) if numbers else None


class ArithmeticTask(Task):
    name = "arithmetic"
    Config = ArithmeticConfig
    training_metric_names = ("chain_correct",)
    evaluates_on_every_process = True  # each process answers its share of the questions

    def check_inputs(self) -> None:
        c = self.config
        simple, hard = (min(c.operand_counts()), max(c.operand_counts()))
        tests = {"simple": simple, "hard": hard, **{f"ood-{k}": k for k in c.counts("ood_operands")}}
        self.data = generate(c.seed, c.train_size, c.gold_size, c.test_size, c.operand_counts(), tests, c.max_operand,
                             c.validation_size)

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
                           allowed_tokens=self.allowed + self.stop, stop_after_insert=self.config.stop_after_tool)

    def target(self, policy: Policy) -> Target:
        context = self.few_shot_prefix(self.config.reward_shots)
        if self.config.reward == "joint":
            return PromptAnswerLikelihood(policy, self.answers, context_prefix=context)
        answers = {tp.ids: {"answer": str(self.problem_of[tp.key].answer)} for tp in self.train_set}
        return LMLikelihood(policy, self.stop, context_prefix=context) * TextFunction(
            self.verify, self.tokenizer, answers, "the answer checker")

    def verify(self, texts: list[str], inputs: list[dict]) -> list[float]:
        """The verifier as a reward function: 0 when a chain's final result is the answer, else the floor."""
        floor = self.config.verifier_floor
        return [0.0 if final_answer(t) == int(row["answer"]) else floor for t, row in zip(texts, inputs)]

    def insert_hook(self):
        return ToolHook([Calculator()], self.tokenizer)

    def rationale_tokens(self, problem: Problem) -> tuple[tuple[int, ...], tuple[bool, ...]]:
        """The gold chain as the sampler would have produced it: policy text, then calculator output."""
        return self.chain_tokens(problem.rationale)

    def chain_tokens(self, chain: str) -> tuple[tuple[int, ...], tuple[bool, ...]]:
        """A chain "3 + 5 = 8 , 8 - 6 = 2" as the sampler would have produced it, with its policy mask."""
        tokens: list[int] = []
        mask: list[bool] = []
        for k, step in enumerate(chain.split(" , ")):
            expression, result = step.split(" = ")
            written = self.tokenizer.encode((" " if k == 0 else " , ") + expression + " =", add_special_tokens=False)
            inserted = self.tokenizer.encode(f" {result}", add_special_tokens=False)
            tokens += written + inserted
            mask += [True] * len(written) + [False] * len(inserted)
        return tuple(tokens), tuple(mask)

    def supervised_examples(self) -> list[SupervisedExample]:
        """The gold rationales as supervised data: question -> chain + stop; the calculator's results are
        context, not imitated (the SFT baseline)."""
        examples = []
        for tp, problem in zip(self.train_set, self.data.gold):
            tokens, mask = self.rationale_tokens(problem)
            examples.append(SupervisedExample(tp.ids, tokens + tuple(self.stop), mask + (True,) * len(self.stop)))
        return examples

    def correct(self, key: str, tokens: list[int]) -> float:
        """1.0 when the chain's final result is the training question's answer."""
        return float(final_answer(self.tokenizer.decode(tokens)) == self.problem_of[key].answer)

    def task_reward(self):
        """The answer checker (``correct``): the RL baseline's reward."""
        return self.correct

    def seed_trajectories(self):
        return [(tp.key, *self.rationale_tokens(p)) for tp, p in zip(self.train_set, self.data.gold)]

    def training_metrics(self, traj: Trajectories, texts: list[str]) -> dict:
        right = sum(final_answer(t) == self.problem_of[traj.row_key(b)].answer for b, t in enumerate(texts))
        return {"chain_correct": right / max(len(texts), 1)}

    # ----------------------------------------------------------------------------------------- evaluation
    def few_shot_prefix(self, shots: int) -> tuple[int, ...]:
        """Worked examples (gold chains and answers), for the reward's context and for chain-of-thought prompting."""
        text = "".join(f"{p.query} {p.rationale}{self.config.answer_template.format(answer=p.answer)}\n\n"
                       for p in self.data.gold[:shots])
        return tuple(self.tokenizer.encode(text, add_special_tokens=False)) if text else ()

    @torch.no_grad()
    def vote(self, policy: Policy, prompts: list[TaskPrompt], problems: list[Problem],
             chains: list[list[list[int]]]) -> list[tuple[list, int | None, int | None]]:
        """Per question: the chains' final results, the majority answer, and the answer with the highest
        total p_LM(Y | X, Z) over the chains among the ``eval_vote_candidates`` most frequent results
        (scored under the reward's model and context, one batched pass for all questions; a chain drawn
        several times is scored once and counted as often as it was drawn)."""
        c = self.config
        finals = [[final_answer(self.tokenizer.decode(z)) for z in q] for q in chains]
        candidates = [[y for y, _ in Counter(f for f in q if f is not None).most_common(c.eval_vote_candidates)]
                      for q in finals]
        if not c.eval_vote_by_likelihood:
            return [(f, cands[0] if cands else None, None) for f, cands in zip(finals, candidates)]
        drawn = [Counter(tuple(z) for z in q) for q in chains]
        pairs = [(i, z, y) for i in range(len(problems)) for z in drawn[i] for y in candidates[i]]
        with policy.base() as model:
            scores = continuation_log_probs(
                model, [prompts[i].ids + z for i, z, _ in pairs],
                [self.answer_ids(problems[i], y) for i, _, y in pairs],
                shared_prefix=self.few_shot_prefix(c.reward_shots), batch_size=64)
        out = []
        for i in range(len(problems)):
            if not candidates[i]:
                out.append((finals[i], None, None))
                continue
            mine = torch.tensor([n for n, (q, _, _) in enumerate(pairs) if q == i])
            log_p = scores[mine].view(len(drawn[i]), len(candidates[i]))
            log_p = log_p + torch.tensor([float(n) for n in drawn[i].values()]).log()[:, None]
            out.append((finals[i], candidates[i][0], candidates[i][int(torch.logsumexp(log_p, 0).argmax())]))
        return out

    @torch.no_grad()
    def accuracy(self, policy: Policy, config, few_shot: bool = False, label: str = "policy") -> tuple[dict, list]:
        """Every evaluated split: K chains per question with the calculator, from the policy (adapter on) on
        the bare question, or with ``few_shot`` from the base model after ``cot_shots`` worked examples.
        Per split: accuracy of the majority of the chains' final results and of the candidate (among the
        most frequent ones) with the highest total p_LM(Y | X, Z) over the chains, under the reward's model
        and context (the same judge for every method); unbiased pass@k for k = 1, 2, 4, ... and K; the
        number of distinct correct chains per question; the mean chain length (tokens of Z, calculator
        output included) and calculator calls per chain. Under a launcher each process takes a block of the
        question batches, sampling from its own seed (rank 0 keeps the run's); the sums are gathered."""
        import contextlib

        from tqdm.auto import tqdm

        from gfnlm.core.sampler import sample_trajectories
        from gfnlm.evaluation.pass_at_k import pass_at_k

        c = self.config
        space = self.action_space().to(policy.device)
        hook = self.insert_hook()
        prefix = self.few_shot_prefix(c.cot_shots) if few_shot else ()
        generator = process_generator(config.seed, policy.device)
        ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64) if k <= c.eval_chains} | {c.eval_chains})
        results, examples = {}, []
        for split in c.splits():
            problems = self.data.tests[split][: c.eval_questions]
            sums = Counter()
            starts = range(0, len(problems), c.eval_batch_questions)
            for start in tqdm([starts[i] for i in my_range(len(starts))], desc=f"{label} {split}",
                              disable=not config.progress, dynamic_ncols=True):
                batch = problems[start: start + c.eval_batch_questions]
                prompts = [self.prompt(p, f"{split}-{start + i}") for i, p in enumerate(batch)]
                index = torch.arange(len(batch)).repeat_interleave(c.eval_chains)
                with policy.base() if few_shot else contextlib.nullcontext(policy.model) as model:
                    traj = sample_trajectories(model, space, [p.ids for p in prompts], [p.key for p in prompts],
                                               index, temperature=c.eval_temperature, generator=generator,
                                               insert_hook=hook, shared_prefix=prefix)
                chains = [[traj.row(b) for b in range(i * c.eval_chains, (i + 1) * c.eval_chains)]
                          for i in range(len(batch))]
                for problem, chain_set, (finals, majority, by_likelihood) in zip(
                        batch, chains, self.vote(policy, prompts, batch, chains)):
                    right = [f == problem.answer for f in finals]
                    texts = [self.tokenizer.decode(z) for z in chain_set]
                    sums["questions"] += 1
                    sums["majority"] += majority is not None and majority == problem.answer
                    sums["likelihood"] += by_likelihood is not None and by_likelihood == problem.answer
                    sums["distinct_correct"] += len({tuple(z) for z, r in zip(chain_set, right) if r})
                    sums["tokens"] += sum(len(z) for z in chain_set)
                    sums["calls"] += sum(t.count("=") for t in texts)
                    for k in ks:
                        sums[f"pass@{k}"] += pass_at_k(len(right), sum(right), k)
                    if len(examples) < 6:
                        examples.append({"method": label, "split": split, "question": problem.query,
                                         "answer": problem.answer, "chain": texts[0], "majority": majority,
                                         "by_likelihood": by_likelihood})
            sums = sum(current().gather(sums), Counter())
            n = max(sums["questions"], 1)
            results[split] = {"questions": sums["questions"], "accuracy_majority": sums["majority"] / n,
                              "accuracy_likelihood": sums["likelihood"] / n if c.eval_vote_by_likelihood else None,
                              **{f"pass@{k}": sums[f"pass@{k}"] / n for k in ks},
                              "distinct_correct": sums["distinct_correct"] / n,
                              "mean_length": sums["tokens"] / (n * c.eval_chains),
                              "calculator_calls": sums["calls"] / (n * c.eval_chains)}
        return results, gather_flat(examples)[:6]

    def evaluate(self, policy: Policy, run_dir: Path, config) -> EvalResult:
        c = self.config
        results, examples = {}, []
        for method in c.methods():
            results[method], shown = self.accuracy(policy, config, few_shot=method == "cot_prompting", label=method)
            examples += shown
        (Path(run_dir) / "eval_arithmetic.json").write_text(json.dumps({"results": results, "examples": examples},
                                                                       indent=1))
        lines = [f"{c.eval_chains} chains per question at temperature {c.eval_temperature}, with the calculator; "
                 f"cot_prompting = the base model after {c.cot_shots} worked examples.", "",
                 "| method | split | questions | accuracy (vote by p(Y ∣ X, Z)) | accuracy (majority) | pass@1 | "
                 f"pass@{c.eval_chains} | distinct correct chains | mean length | calculator calls |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for method, by_split in results.items():
            for split, r in by_split.items():
                by_likelihood = "-" if r["accuracy_likelihood"] is None else f"{r['accuracy_likelihood']:.3f}"
                lines.append(f"| {method} | {split} | {r['questions']} | {by_likelihood} | "
                             f"{r['accuracy_majority']:.3f} | {r['pass@1']:.3f} | {r[f'pass@{c.eval_chains}']:.3f} | "
                             f"{r['distinct_correct']:.2f} | {r['mean_length']:.1f} | {r['calculator_calls']:.2f} |")
        lines += ["", "Examples:", ""] + [f"- {e['method']}: `{e['question']}` -> `{e['chain']}` (answer {e['answer']})"
                                           for e in examples]
        return EvalResult(results, [], "\n".join(lines))
