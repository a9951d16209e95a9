"""Text classification with a latent rationale, trained by EM (tasks ``classify`` and ``subjectivity``).

X = 'Classify this movie review as objective or subjective: "<text>" This review is', Z = a short
rationale (1-5 word tokens, e.g. " full of opinions"), Y = ", so it is subjective.". The policy q(Z | X)
reads X only; each training X carries its label, so on the training set q is q(Z | X, Y), and on new
sentences it proposes rationales for every label. The policy stops by writing Y's first token (",").

E-step: GFlowNet fine-tuning of q towards p_LM(Z | X) p(Y_true | X, Z) with a penalty when Z makes
another label more likely (target.py); the buffer starts with "wishful" rationales: the base
model's continuations of X + " <true label> because it is" (``seed_rationales`` per example).
M-step: a second LoRA adapter learns p(Y | X, Z) on rationales drawn from q (em.py).
Prediction: for a test sentence, K rationales from q, every label scored under p(Y | X, Z); majority
vote, mean probability, and the label of the greedy rationale. Baselines on the same model: zero-shot
and few-shot (all N training examples in the prompt) scoring of " <label>." after X, and supervised
LoRA fine-tuning on X -> " <label>." (TRL), all on the same test sentences.
``calibrate``: every label score, of every method and of the E-step's penalty, is taken relative to the
scoring model's label prior on content-free sentences (labels.py).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from gfnlm.baselines.sft import SupervisedExample, SupervisedSettings, supervised_finetune
from gfnlm.core.action_space import ActionSpace
from gfnlm.core.config import EvaluationMethods, check_range
from gfnlm.core.lm_forward import common_prefix
from gfnlm.core.task import EvalResult, Task, TaskPrompt
from gfnlm.inference.sampling import sample_per_prompt
from gfnlm.infra.errors import GfnlmError
from gfnlm.infra.seeding import python_rng, torch_generator
from gfnlm.model.policy import Policy
from gfnlm.tasks.classification.data import load_labelled_jsonl, parse_labels
from gfnlm.tasks.classification.labels import (
    CONTENT_FREE_TEXTS,
    content_free_offsets,
    label_log_probs,
    rationale_label_log_probs,
    vote,
)
from gfnlm.tasks.classification.target import RationaleLabelReward

METHODS = ("zero_shot", "few_shot", "supervised", "gfn_e_step", "gfn_em")
WORD_TOKEN = re.compile(r" ?[A-Za-z]*")  # a word piece, with or without its leading space
SUPERVISED_ADAPTER = "supervised"
GREEDY_TEMPERATURE = 1e-4  # sampling this cold is argmax decoding (up to exact ties), in one batched pass


def builtin_file(name: str) -> str:
    return str(resources.files("gfnlm.data").joinpath(name))


def label_word_tokens(tokenizer, labels: list[str]) -> set[int]:
    """Every token of every label's name as it may be written inside a rationale: with or without a
    leading space, lower-case or capitalized ("objective" -> " objective", "object" + "ive", ...)."""
    tokens = set()
    for label in labels:
        for form in {label, label.lower(), label.capitalize()}:
            for text in (form, " " + form):
                tokens.update(tokenizer.encode(text, add_special_tokens=False))
    return tokens


@dataclass
class ClassificationConfig(EvaluationMethods):
    METHODS = METHODS
    data: str = field(default="", metadata={"help": 'training examples, JSON lines {"text", "label"}'})
    test_data: str = field(default="", metadata={"help": "test examples, JSON lines"})
    labels: str = field(default="objective,subjective", metadata={
        "help": "comma-separated label names; integer labels index this list"})
    prompt_template: str = field(default='Classify this movie review as {labels}: "{text}" This review is', metadata={
        "help": "X: contains {text} (and may contain {labels})"})
    answer_template: str = field(default=", so it is {label}.", metadata={
        "help": "Y after the rationale; contains {label}, and its first token is the policy's stop"})
    direct_template: str = field(default=" {label}.", metadata={
        "help": "the answer right after X (zero_shot, few_shot, supervised)"})
    seed: int = field(default=0, metadata={
        "help": "seed of the wishful seeds, the few-shot order and the M-step draws"})
    min_len: int = field(default=1, metadata={"help": "fewest tokens of a rationale"})
    max_len: int = field(default=5, metadata={"help": "most tokens of a rationale"})
    words_only: bool = field(default=True, metadata={
        "help": "rationales use word tokens only (no punctuation, digits, newlines)"})
    ban_label_words: bool = field(default=True, metadata={
        "help": "rationales cannot write a label's name (nor its tokens): they must describe X"})
    wrong_label_penalty: float = field(default=50.0, metadata={
        "help": "log-reward penalty of a rationale after which another label is more likely than the true one"})
    calibrate: bool = field(default=False, metadata={
        "help": "subtract each scoring model's label prior on content-free sentences from its label scores"})
    seed_rationales: int = field(default=20, metadata={
        "help": "wishful rationales per training example put in the replay buffer (0: none)"})
    seed_hint: str = field(default=" {label} because it is", metadata={
        "help": "what the base model continues after X to write a wishful rationale; contains {label}"})
    em_rounds: int = field(default=1, metadata={
        "help": "E-step / M-step rounds; the run's steps are split evenly over them (0: E-step only, q trained "
                "against the base model's judge for every step, no likelihood adapter)"})
    m_rationales: int = field(default=8, metadata={
        "help": "rationales drawn from q per training example for the M-step"})
    m_epochs: float = field(default=3.0, metadata={
        "help": "epochs of the M-step's fit (fewer when early stopping ends it)"})
    m_lr: float = field(default=2e-4, metadata={"help": "learning rate of the M-step's fit"})
    m_batch_size: int = field(default=8, metadata={
        "help": "batch size of the M-step's fit and of the supervised baseline"})
    m_validation: float = field(default=0.2, metadata={
        "help": "share of the training examples held out of the E-step and of the M-step's data, to early-stop "
                "the M-step and check its fit (0: none)"})
    m_patience: int = field(default=2, metadata={
        "help": "M-step epochs without a better held-out loss before it stops"})
    m_keep_only_if_better: bool = field(default=True, metadata={
        "help": "keep the fitted likelihood only when it predicts the held-out labels better than the judge it "
                "would replace (the base model in round 1), scored as at test time"})
    supervised_epochs: float = field(default=20.0, metadata={"help": "epochs of the supervised baseline"})
    supervised_lr: float = field(default=5e-4, metadata={"help": "learning rate of the supervised baseline"})
    eval_size: int = field(default=200, metadata={"help": "evaluate on the first this-many test sentences"})
    eval_rationales: int = field(default=10, metadata={"help": "K rationales per test sentence"})
    eval_temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the test rationales"})
    eval_batch: int = field(default=16, metadata={"help": "test sentences sampled together"})
    eval_methods: str = field(default=",".join(METHODS), metadata={
        "help": f"comma-separated evaluation methods, of {', '.join(METHODS)}"})

    def validate(self) -> None:
        parse_labels(self.labels)
        for name in ("max_len", "m_rationales", "m_batch_size", "m_patience", "eval_size",
                     "eval_rationales", "eval_batch"):
            check_range(f"task.{name}", getattr(self, name), low=1)
        for name in ("min_len", "seed_rationales", "wrong_label_penalty", "em_rounds"):
            check_range(f"task.{name}", getattr(self, name), low=0)
        for name in ("m_epochs", "m_lr", "supervised_epochs", "supervised_lr", "eval_temperature"):
            check_range(f"task.{name}", getattr(self, name), low=0, low_open=True)
        if self.min_len > self.max_len:
            raise GfnlmError("task.min_len must not exceed task.max_len.")
        if not 0 <= self.m_validation < 1:
            raise GfnlmError(f"task.m_validation must be in [0, 1), got {self.m_validation}.")
        for name, fields in (("prompt_template", ("{text}",)), ("answer_template", ("{label}",)),
                             ("direct_template", ("{label}",)), ("seed_hint", ("{label}",))):
            if not all(f in getattr(self, name) for f in fields):
                raise GfnlmError(f"task.{name} must contain {' and '.join(fields)}.")
        self.methods()  # an empty list or an unknown method is an error


class ClassificationTask(Task):
    name = "classify"
    Config = ClassificationConfig
    training_metric_names = ("rationale_right",)
    evaluates_on_every_process = True  # the supervised baseline trains with TRL (data-parallel under a launcher)
    default_data = ("", "")  # (training file, test file) when the config names none

    def check_inputs(self) -> None:
        c = self.config
        self.labels = parse_labels(c.labels)
        train_file, test_file = c.data or self.default_data[0], c.test_data or self.default_data[1]
        if not train_file:
            raise GfnlmError(f"Task {self.name} needs its training data: --data FILE.jsonl (and --test_data FILE.jsonl to evaluate).")
        self.train_rows = load_labelled_jsonl(train_file, self.labels)
        self.test_rows = load_labelled_jsonl(test_file, self.labels)[: c.eval_size] if test_file else []

    # ----------------------------------------------------------------------------------------- setup
    def setup(self, tokenizer, vocab_size: int) -> None:
        self.check_inputs()
        c = self.config
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.answers = [self.encode(c.answer_template.format(label=y)) for y in self.labels]
        self.direct_answers = [self.encode(c.direct_template.format(label=y)) for y in self.labels]
        if len({a[0] for a in self.answers}) != 1:
            raise GfnlmError(f"task.answer_template {c.answer_template!r} must start with the same token for every "
                             "label: that token is the policy's stop.")
        self.stop = [self.answers[0][0]]
        self.train_set = [self.prompt(row.text, f"train-{i}") for i, row in enumerate(self.train_rows)]
        self.label_of = {tp.key: row.label for tp, row in zip(self.train_set, self.train_rows)}
        self.test_set = [self.prompt(row.text, f"test-{i}") for i, row in enumerate(self.test_rows)]
        self.content_free = [self.prompt(t, "content-free").ids for t in CONTENT_FREE_TEXTS] if c.calibrate else []
        allowed = None
        if c.words_only:
            pieces = tokenizer.batch_decode([[t] for t in range(min(vocab_size, len(tokenizer)))])
            special = set(tokenizer.all_special_ids)
            allowed = [t for t, text in enumerate(pieces) if text and t not in special and WORD_TOKEN.fullmatch(text)]
        self.label_tokens = label_word_tokens(tokenizer, self.labels) if c.ban_label_words else set()
        if allowed is not None:
            allowed = [t for t in allowed if t not in self.label_tokens]
        self.allowed = allowed

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt_text(self, text: str) -> str:
        names = self.labels
        joined = names[0] + " or " + names[1] if len(names) == 2 else ", ".join(names[:-1]) + " or " + names[-1]
        return self.config.prompt_template.format(labels=joined, text=text)

    def prompt(self, text: str, key: str) -> TaskPrompt:
        full = self.prompt_text(text)
        return TaskPrompt(full, tuple(self.encode(full)), key)

    def train_prompts(self) -> list[TaskPrompt]:
        """The E-step's examples: all training examples but the M-step's held-out ones, so that q never sees
        their labels and its rationales for them are drawn as for a test sentence."""
        held = set() if self.config.em_rounds == 0 else self.m_step_held_out()
        return [tp for i, tp in enumerate(self.train_set) if i not in held]

    def m_step_held_out(self) -> set[int]:
        """The training examples (indices) whose labels check the M-step."""
        from gfnlm.tasks.classification.em import held_out_examples

        return held_out_examples(len(self.train_set), self.config.m_validation, self.config.seed)

    def all_prompts(self) -> list[TaskPrompt]:
        return self.train_set + self.test_set

    def action_space(self) -> ActionSpace:
        c = self.config
        allowed = None if self.allowed is None else self.allowed + self.stop
        banned = sorted(self.label_tokens - set(self.stop))
        return ActionSpace(self.vocab_size, self.stop, min_len=c.min_len, max_len=c.max_len, allowed_tokens=allowed,
                           banned_tokens=banned or None)

    def target(self, policy: Policy) -> RationaleLabelReward:
        self.policy = policy  # the wishful seeds are drawn from its base model
        self.reward = RationaleLabelReward(policy, self.answers, self.label_of, self.config.wrong_label_penalty,
                                           content_free=self.content_free)
        return self.reward

    def fit(self, trainer, resume: bool = False) -> None:
        from gfnlm.tasks.classification.em import run_em

        if self.config.em_rounds == 0:  # E-step only: the "GFlowNet E-step only" method on its own compute
            trainer.train(resume=resume)
        else:
            run_em(trainer, self, resume)

    @torch.no_grad()
    def seed_trajectories(self):
        """Wishful rationales: the base model continues X + " <true label> because it is" (the hint), and
        what it writes, up to the stop, becomes a rationale Z for X (scored without the hint)."""
        c = self.config
        if not c.seed_rationales:
            return []
        prompts = self.train_prompts()
        hints = [tuple(self.encode(tp.text + c.seed_hint.format(label=self.labels[self.label_of[tp.key]])))
                 for tp in prompts]
        generator = torch_generator(self.policy.device, c.seed)
        space = self.action_space().to(self.policy.device)
        with self.policy.base() as model:
            drawn = sample_per_prompt(model, space, hints, c.seed_rationales, 1.0, generator, c.eval_batch)
        seeds = []
        for tp, rationales in zip(prompts, drawn):
            for z in dict.fromkeys(tuple(z) for z in rationales if z):
                seeds.append((tp.key, z, (True,) * len(z)))
        return seeds

    def training_metrics(self, traj, texts: list[str]) -> dict:
        """Fraction of fresh rationales after which the true label's answer is the most likely one."""
        with torch.no_grad():
            stops = self.reward.label_scores(traj)
        end = stops[torch.arange(traj.batch_size, device=stops.device), traj.lengths]
        true = torch.tensor([self.label_of[traj.row_key(b)] for b in range(traj.batch_size)], device=end.device)
        return {"rationale_right": float((end.argmax(-1) == true).float().mean())}

    # ----------------------------------------------------------------------------------------- EM data
    def likelihood_examples(self, rationales: list[list[list[int]]]) -> list[SupervisedExample]:
        """(X, Z) -> Y_true for the M-step; only the label's own tokens (after the answer's common
        start ", so it is") are in the loss."""
        lead = len(common_prefix(self.answers))
        out = []
        for tp, zs in zip(self.train_set, rationales):
            answer = self.answers[self.label_of[tp.key]]
            for z in zs:
                out.append(SupervisedExample(tp.ids + tuple(z), answer, [i >= lead for i in range(len(answer))]))
        return out

    def fit_likelihood(self, policy: Policy, rationales: list[list[list[int]]], settings: SupervisedSettings,
                       validation: list[list[list[int]]] | None = None, patience: int = 2) -> dict:
        """Train the active (likelihood) adapter on each training example's rationales -> its true label (TRL
        SFT); with ``validation`` rationales (of held-out examples) early-stopped on them."""
        return supervised_finetune(policy, self.likelihood_examples(rationales), settings,
                                   validation=self.likelihood_examples(validation or []), patience=patience)

    def direct_examples(self) -> list[SupervisedExample]:
        """X -> " <label>." for the supervised baseline (the label's own tokens in the loss)."""
        lead = len(common_prefix(self.direct_answers))
        return [SupervisedExample(tp.ids, a, [i >= lead for i in range(len(a))])
                for tp in self.train_set for a in [self.direct_answers[self.label_of[tp.key]]]]

    def few_shot_prefix(self) -> tuple[int, ...]:
        """All training examples, answered directly, in one seeded shuffled order (run once, cached)."""
        rows = list(zip(self.train_set, self.train_rows))
        python_rng(self.config.seed).shuffle(rows)
        text = "".join(tp.text + self.config.direct_template.format(label=self.labels[row.label]) + "\n\n"
                       for tp, row in rows)
        return tuple(self.encode(text))

    # ----------------------------------------------------------------------------------------- evaluation
    def evaluate(self, policy: Policy, run_dir: Path, config) -> EvalResult:
        """Under a launcher each process scores a block of the test sentences (its rationales drawn from its
        own seed; rank 0 keeps the run's) and the scores are gathered in test order; the supervised baseline
        trains on every process together."""
        from gfnlm.infra.distributed import current, gather_flat, my_range, process_generator
        from gfnlm.tasks.classification.em import LIKELIHOOD_ADAPTER, load_latest_likelihood

        c = self.config
        if not self.test_set:
            return EvalResult({}, [], "No test data (task.test_data); nothing evaluated.")
        processes = current()
        truth = torch.tensor([row.label for row in self.test_rows])
        part = my_range(len(self.test_set))
        prompts = [self.test_set[i].ids for i in part]

        def everyone(score) -> torch.Tensor:  # this process's scores (a process may have no sentences) -> all
            return torch.cat([s for s in processes.gather(score().cpu() if prompts else None) if s is not None])

        results: dict[str, dict] = {}
        methods = c.methods()
        for method in [m for m in methods if m in ("zero_shot", "few_shot", "supervised")]:
            started = time.perf_counter()
            if method == "supervised":
                self.train_supervised(policy, config)
                with policy.adapter(SUPERVISED_ADAPTER) as model:
                    lp = everyone(lambda: label_log_probs(model, prompts, self.direct_answers))
                    lp = lp - content_free_offsets(model, self.content_free, self.direct_answers).cpu()
            else:
                shared = self.few_shot_prefix() if method == "few_shot" else ()
                with policy.base() as model:
                    lp = everyone(lambda: label_log_probs(model, prompts, self.direct_answers, shared))
                    lp = lp - content_free_offsets(model, self.content_free, self.direct_answers, shared).cpu()
            results[method] = {"accuracy": accuracy(lp.argmax(-1), truth), "seconds": time.perf_counter() - started}
        rationale_methods = [m for m in methods if m in ("gfn_e_step", "gfn_em")]
        source = Path(processes.broadcast(str(run_dir)))  # the other processes evaluate into a scratch folder
        if "gfn_em" in rationale_methods and not load_latest_likelihood(policy, source, c):
            rationale_methods.remove("gfn_em")
            results["gfn_em"] = {"skipped": "no M-step adapter in the run folder"}
        if rationale_methods:
            started = time.perf_counter()
            generator = process_generator(c.seed, policy.device, processes)
            space = self.action_space().to(policy.device)
            sampled = sample_per_prompt(policy.model, space, prompts, c.eval_rationales, c.eval_temperature,
                                        generator, c.eval_batch, progress=config.progress, desc="sample rationales")
            greedy = sample_per_prompt(policy.model, space, prompts, 1, GREEDY_TEMPERATURE, generator, c.eval_batch,
                                       progress=config.progress, desc="greedy rationales")
            sampling_seconds = time.perf_counter() - started
            for method in rationale_methods:
                started = time.perf_counter()
                adapter = LIKELIHOOD_ADAPTER if method == "gfn_em" else None
                if adapter and "gfn_e_step" in results and judges_as_base_model(policy, adapter):
                    # no M-step was kept: the same rationales, judged by the same (base) model
                    results[method] = {**results["gfn_e_step"], "judge": "the base model (no M-step fit kept)"}
                    continue
                lp = everyone(lambda: self.rationale_scores(policy, prompts, sampled, adapter, progress=config.progress))
                greedy_lp = everyone(lambda: self.rationale_scores(policy, prompts, greedy, adapter,
                                                                   progress=config.progress))[:, 0]
                votes = vote(lp)
                results[method] = {"accuracy": accuracy(votes["mean_prob"], truth),
                                   "accuracy_majority": accuracy(votes["majority"], truth),
                                   "accuracy_greedy": accuracy(greedy_lp.argmax(-1), truth),
                                   "seconds": sampling_seconds + time.perf_counter() - started}
            results["examples"] = gather_flat([
                {"text": self.test_rows[i].text, "label": self.labels[self.test_rows[i].label],
                 "rationales": [self.tokenizer.decode(z) for z in zs[:5]], "greedy": self.tokenizer.decode(g[0])}
                for i, zs, g in list(zip(part, sampled, greedy))[:8]])[:8]
        examples = results.pop("examples", [])
        n = len(self.test_set)
        (Path(run_dir) / "eval_classification.json").write_text(json.dumps(
            {"test_sentences": n, "results": results, "examples": examples}, indent=1))
        plots = [plot_accuracy(Path(run_dir) / "classification_accuracy.png", results,
                               f"{self.name}: {len(self.train_rows)} training examples, {n} test sentences")]
        return EvalResult(results, plots, self.markdown(results, examples, n))

    def train_supervised(self, policy: Policy, config) -> None:
        """Supervised LoRA baseline: a fresh adapter trained on X -> " <label>." (TRL SFT)."""
        c = self.config
        if SUPERVISED_ADAPTER not in policy.model.peft_config:
            policy.add_adapter(SUPERVISED_ADAPTER, seed=c.seed)
        with policy.adapter(SUPERVISED_ADAPTER, train=True):
            supervised_finetune(policy, self.direct_examples(), SupervisedSettings(
                epochs=c.supervised_epochs, lr=c.supervised_lr, batch_size=c.m_batch_size, seed=c.seed,
                progress=config.progress))

    def rationale_scores(self, policy: Policy, prompts, rationales: list[list[list[int]]],
                         adapter: str | None, progress: bool = False, calibrated: bool = True) -> torch.Tensor:
        """(N, K, labels) label scores of every rationale (``rationale_label_log_probs``) under the base model
        or the named likelihood adapter, minus the label prior when calibrated."""
        with policy.adapter(adapter) if adapter else policy.base() as model:
            return rationale_label_log_probs(model, prompts, rationales, self.answers,
                                             self.content_free if calibrated else [], progress=progress,
                                             desc=f"score rationales ({adapter or 'base model'})")

    def markdown(self, results: dict, examples: list, n: int) -> str:
        c = self.config
        lines = [f"{n} test sentences, {len(self.train_rows)} training examples. Rationale methods: K = "
                 f"{c.eval_rationales} rationales from q per sentence at temperature {c.eval_temperature}; "
                 "accuracy = mean-probability vote (also majority vote and the greedy rationale's label).", "",
                 "| method | accuracy | majority vote | greedy rationale | seconds |", "|---|---|---|---|---|"]
        for method, r in results.items():
            if "skipped" in r:
                lines.append(f"| {method} | skipped: {r['skipped']} | | | |")
                continue
            name = f"{method} (judge: {r['judge']})" if "judge" in r else method
            lines.append(f"| {name} | {r['accuracy']:.3f} | {fmt(r.get('accuracy_majority'))} | "
                         f"{fmt(r.get('accuracy_greedy'))} | {r['seconds']:.0f} |")
        lines += ["", "Examples (true label: rationales):", ""]
        lines += [f"- {e['label']}: \"{e['text'][:70]}\" -> {e['rationales']} (greedy {e['greedy']!r})" for e in examples]
        return "\n".join(lines)


class SubjectivityTask(ClassificationTask):
    """Classification task preset on movie-review subjectivity, with the project's small example files
    (give the SUBJ files with --task.data / --task.test_data)."""

    name = "subjectivity"
    default_data = (builtin_file("subjectivity_train.jsonl"), builtin_file("subjectivity_test.jsonl"))


def judges_as_base_model(policy: Policy, adapter: str) -> bool:
    """Whether the adapter is still a fresh one (every LoRA B zero): its outputs are the base model's."""
    b = [v for k, v in policy.adapter_state(adapter).items() if "lora_B" in k]
    return bool(b) and not any(bool(v.any()) for v in b)


def accuracy(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    return float((predicted.cpu() == truth).float().mean())


def fmt(value) -> str:
    return "" if value is None else f"{value:.3f}"


def plot_accuracy(path: Path, results: dict, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {m: r for m, r in results.items() if "accuracy" in r}
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(list(shown), [r["accuracy"] for r in shown.values()], color="#4477aa")
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=9)
    for i, r in enumerate(shown.values()):
        ax.text(i, r["accuracy"] + 0.02, f"{r['accuracy']:.2f}", ha="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["ClassificationConfig", "ClassificationTask", "SubjectivityTask"]
