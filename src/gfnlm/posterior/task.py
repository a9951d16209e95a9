"""A posterior the user defines without code in the package: inputs, the policy's prompt, the action space
and the reward terms (``terms.py``) in the ``task:`` section of a YAML file, or from Python (``gfnlm.api``).

    gfnlm train posterior --config my-posterior.yaml

The target is R(Z | X) = exp(sum_k weight_k term_k(Z, X)), tempered by the run's reward temperature
(``reward_temp_end``). Every terminated prefix of Z is scored: each LM term in one packed forward pass per
batch, each function term in one call per batch.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from gfnlm.core.action_space import LINE_BREAKS, ActionSpace, banned_sentence_tokens
from gfnlm.core.config import EvaluationMethods, check_range
from gfnlm.core.task import EvalResult, Task, TaskPrompt
from gfnlm.core.trajectories import Trajectories
from gfnlm.evaluation.methods import ALL_METHODS, REJECTION
from gfnlm.evaluation.tables import evaluation_stem
from gfnlm.infra.errors import GfnlmError
from gfnlm.model.policy import Policy
from gfnlm.posterior.inputs import read_inputs, split_rows
from gfnlm.posterior.target import PosteriorTarget
from gfnlm.posterior.terms import (
    CONSTRAINTS,
    LATENT,
    Term,
    columns_read,
    constraint_function,
    import_function,
    parse_terms,
    template_fields,
)
from gfnlm.targets import Target
from gfnlm.targets.text_function import TextFunction
from gfnlm.targets.text_likelihood import Pieces, TextLikelihood

SENTINEL = "\x00"  # stands for Z while a template is rendered, then split on


@dataclass
class PosteriorConfig(EvaluationMethods):
    METHODS = ALL_METHODS + (REJECTION,)
    data: str = field(default="", metadata={
        "help": "the inputs X: a .txt file (one X per line, column X), .jsonl or .csv (a header names the columns)"})
    test_data: str = field(default="", metadata={"help": "held-out inputs for the evaluation (same columns)"})
    test_fraction: float = field(default=0.0, metadata={
        "help": "without test_data: hold out this fraction of the inputs (a fixed random split)"})
    prompt: str = field(default="{X}", metadata={"help": "the policy's prompt, a template over the columns"})
    terminator: str = field(default=".", metadata={"help": "the text that ends Z (the policy's stop)"})
    min_len: int = field(default=1, metadata={"help": "fewest tokens of Z"})
    max_len: int = field(default=20, metadata={"help": "most tokens of Z"})
    banned: list[str] = field(default_factory=lambda: list(LINE_BREAKS), metadata={
        "help": "strings Z may not contain: every token holding one is banned"})
    allowed_chars: str = field(default="", metadata={
        "help": "if given, only tokens made of these characters may be written"})
    reward: list[dict] = field(default_factory=list, metadata={
        "help": "the log-reward terms: lm, function, contains, not_contains, regex (docs/posteriors.md)"})
    hard_penalty: float = field(default=50.0, metadata={
        "help": "in training, a hard constraint's violation costs this many nats instead of making R zero (a "
                "finite signal, so the policy learns from the other terms of every output); evaluation, IS and "
                "SMC use R = 0"})
    base_dir: str = field(default="", metadata={
        "help": "folder that relative data paths and function modules are read from (\"\": the config file's "
                "folder)"})
    eval_samples: int = field(default=16, metadata={"help": "N samples per input and method"})
    eval_prompts: int = field(default=0, metadata={"help": "evaluate on the first this-many held-out inputs (0: all)"})
    eval_methods: str = field(default="", metadata={
        "help": f"comma-separated evaluation methods, of {', '.join(ALL_METHODS + (REJECTION,))} (\"\": the policy, "
                "base sampling, tempered sampling, IS and SMC with either proposal, and rejection sampling when "
                "the reward has a hard constraint)"})
    eval_top_p: float = field(default=0.95, metadata={"help": "p of the nucleus-sampling method"})
    eval_particles: int = field(default=8, metadata={
        "help": "corrected methods: policy particles per output (base-model methods get as many tokens)"})

    def validate(self) -> None:
        if not self.data:
            raise GfnlmError("task.data is empty; name the inputs file (.txt, .jsonl or .csv).")
        if not self.terminator:
            raise GfnlmError("task.terminator is empty; give the text that ends Z (e.g. '.').")
        check_range("task.test_fraction", self.test_fraction, low=0, high=0.9)
        check_range("task.min_len", self.min_len, low=0)
        check_range("task.max_len", self.max_len, low=1)
        if self.min_len > self.max_len:
            raise GfnlmError(f"task.min_len ({self.min_len}) exceeds task.max_len ({self.max_len}).")
        check_range("task.hard_penalty", self.hard_penalty, low=0, low_open=True)
        if LATENT in template_fields(self.prompt, "task.prompt"):
            raise GfnlmError(f"task.prompt reads {{{LATENT}}}, the text the policy writes; the prompt comes before it.")
        check_range("task.eval_samples", self.eval_samples, low=2)
        check_range("task.eval_prompts", self.eval_prompts, low=0)
        check_range("task.eval_particles", self.eval_particles, low=1)
        if not 0 < self.eval_top_p <= 1:
            raise GfnlmError(f"task.eval_top_p must be in (0, 1], got {self.eval_top_p}.")
        if self.eval_methods:
            self.methods()
        self.terms()

    def evaluation_methods(self, terminator_length: int) -> list[str]:
        """The chosen methods, or the ones that apply to this posterior (SMC needs a one-token stop)."""
        if self.eval_methods:
            return self.methods()
        methods = ["gfn", "sampling", "tempered", "gfn_is", "base_is"]
        if terminator_length == 1:
            methods += ["gfn_smc", "base_smc"]
        if any(t.is_hard_constraint for t in self.terms()):
            methods.append(REJECTION)
        return methods

    def terms(self) -> list[Term]:
        return parse_terms(self.reward)

    def path(self, name: str) -> Path:
        return Path(self.base_dir or ".") / name


class PosteriorTask(Task):
    name = "posterior"
    Config = PosteriorConfig
    evaluates_on_every_process = True  # the harness splits the held-out inputs over the processes
    functions: dict | None = None  # name -> callable, for function terms given from Python (gfnlm.api)

    def check_inputs(self) -> None:
        """Read the inputs, and check every template column and function before any model loads."""
        c = self.config
        self.terms = c.terms()
        rows = read_inputs(c.path(c.data))
        self.train_rows, self.test_rows = (rows, read_inputs(c.path(c.test_data))) if c.test_data else split_rows(
            rows, c.test_fraction)
        columns = set(rows[0])
        if self.test_rows and set(self.test_rows[0]) != columns:
            raise GfnlmError(f"task.test_data has the columns {sorted(self.test_rows[0])}, task.data has "
                             f"{sorted(columns)}.")
        needs = [("task.prompt", set(template_fields(c.prompt, "task.prompt")))]
        needs += [(f"task.reward {t.name}", columns_read(t)) for t in self.terms]
        for where, read in needs:
            missing = sorted(read - columns)
            if missing:
                raise GfnlmError(f"{where} reads the column {{{missing[0]}}}, which {c.data} does not have (columns: "
                                 f"{', '.join(sorted(columns))}).")
        self.term_functions = {t.name: (self.functions or {}).get(t.function) or import_function(
            t.function, c.base_dir, f"task.reward {t.name}") for t in self.terms if t.kind == "function"}

    def setup(self, tokenizer, vocab_size: int) -> None:
        self.check_inputs()
        c = self.config
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.terminator_ids = tokenizer.encode(c.terminator, add_special_tokens=False)
        self.banned = banned_sentence_tokens(tokenizer, vocab_size, c.terminator, self.terminator_ids,
                                             c.banned, c.allowed_chars)
        self.train_set = self._encode(self.train_rows, "train")
        self.test_set = self._encode(self.test_rows, "test")
        self.row_of: dict[tuple[int, ...], dict] = {}
        for prompt, row in zip(self.train_set + self.test_set, self.train_rows + self.test_rows):
            earlier = self.row_of.setdefault(prompt.ids, row)
            if earlier != row:  # the policy sees only the prompt: it could not tell the two posteriors apart
                raise GfnlmError(f"Two inputs give the same prompt {prompt.text!r} but different columns; put the "
                                 "columns the reward reads into task.prompt, or remove the duplicate.")
        self.other_models: dict[str, object] = {}

    def _encode(self, rows: list[dict], split: str) -> list[TaskPrompt]:
        prompts = []
        for i, row in enumerate(rows):
            text = self.config.prompt.format_map(row)
            ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
            if not ids:
                raise GfnlmError(f"task.prompt gives {split} input {i + 1} an empty prompt.")
            prompts.append(TaskPrompt(text, ids, f"{split}-{i}"))
        return prompts

    def train_prompts(self) -> list[TaskPrompt]:
        return list(self.train_set)

    def all_prompts(self) -> list[TaskPrompt]:
        return self.train_set + self.test_set

    def action_space(self) -> ActionSpace:
        return ActionSpace(self.vocab_size, self.terminator_ids, min_len=self.config.min_len,
                           max_len=self.config.max_len, banned_tokens=self.banned)

    def target(self, policy: Policy, exact: bool = True) -> PosteriorTarget:
        return PosteriorTarget([(t, self.term_target(t, policy)) for t in self.terms], self.source,
                               self.config.hard_penalty, exact)

    def training_target(self, policy: Policy) -> PosteriorTarget:
        return self.target(policy, exact=False)

    def term_target(self, term: Term, policy: Policy) -> Target:
        if term.kind == "lm":
            pieces = {ids: self.lm_pieces(term, row) for ids, row in self.row_of.items()}
            bias = self.action_space().vocab_bias if term.renormalize else None
            return TextLikelihood(self.scoring_model(term, policy), pieces, bias)
        fn = self.term_functions[term.name] if term.kind == "function" else constraint_function(term)
        return TextFunction(fn, self.tokenizer, self.row_of, f"{self.source + ': ' if self.source else ''}reward "
                            f"{term.name}")

    def lm_pieces(self, term: Term, row: dict) -> Pieces:
        """The tokens before and after Z for one input, each piece tokenized on its own (as the policy's prompt
        and Z are), and which of them the term scores."""
        values = {**row, LATENT: SENTINEL}
        context, text = term.context.format_map(values), term.text.format_map(values)
        encode = lambda s: tuple(self.tokenizer.encode(s, add_special_tokens=False)) if s else ()
        if SENTINEL in text:
            head, tail = text.split(SENTINEL)
            before, scored_before, after, scored_after = encode(context) + encode(head), len(encode(context)), \
                encode(tail), 0
        else:
            head, tail = context.split(SENTINEL)
            before, after, scored_after = encode(head), encode(tail) + encode(text), len(encode(tail))
            scored_before = len(before)
        bos = self.tokenizer.bos_token_id
        if scored_before == 0 and bos is not None:  # with nothing before it, the text is read after BOS
            before, scored_before = (bos,) + before, 1
        if not before:
            raise GfnlmError(f"task.reward {term.name}: nothing comes before {{{LATENT}}} and the tokenizer has no "
                             "beginning-of-text token; give a context.")
        return Pieces(before, after, scored_before, SENTINEL in text, scored_after)

    def scoring_model(self, term: Term, policy: Policy):
        """A callable giving a context manager that yields the term's model: the base model (adapter off), or
        another local model that shares the policy's tokenizer."""
        if term.model == "base":
            return policy.base
        if term.model not in self.other_models:
            from gfnlm.model.loading import load_base_model

            dtype = str(policy.model.get_input_embeddings().weight.dtype).removeprefix("torch.")
            model, tokenizer = load_base_model(term.model, dtype=dtype, device=policy.device)
            if tokenizer.get_vocab() != self.tokenizer.get_vocab():
                raise GfnlmError(f"task.reward {term.name}: model {term.model} has another tokenizer than the "
                                 "policy's; an LM term scores the policy's tokens, so it needs the same vocabulary.")
            self.other_models[term.model] = model
        model = self.other_models[term.model]
        return lambda: contextlib.nullcontext(model)

    def term_metrics(self, target: PosteriorTarget):
        """Per input: the fraction of outputs that satisfy each constraint, and each other term's mean value."""
        def metrics(prompt: TaskPrompt, rows, texts) -> dict:
            traj = Trajectories.from_rows([prompt.ids], [prompt.key], [0] * len(rows), rows,
                                          device=self.action_space().vocab_bias.device)
            out = {}
            for term, term_target in target.terms:
                values = term_target.terminal_log_rewards(traj).tolist()
                if term.kind in CONSTRAINTS:
                    out[f"rate: {term.name}"] = sum(v == 0 for v in values) / len(values)
                else:
                    finite = [v for v in values if v > -math.inf]
                    out[f"mean: {term.name}"] = sum(finite) / len(finite) if finite else math.nan
            return out
        return metrics

    def evaluate(self, policy: Policy, run_dir: Path, config) -> EvalResult:
        from gfnlm.evaluation.harness import evaluate_methods  # transformers + sentence-transformers: heavy

        c = self.config
        prompts = self.test_set or self.train_set
        split = "held-out" if self.test_set else "training (no held-out inputs given)"
        if c.eval_prompts:
            prompts = prompts[: c.eval_prompts]
        temperature = config.reward_temp_end
        stem = evaluation_stem(self.name)
        target = self.target(policy)
        rows, markdown, plot = evaluate_methods(
            policy, self.action_space(), target, prompts,
            c.evaluation_methods(len(self.terminator_ids)), c.eval_samples, temperature,
            config.seed, Path(run_dir), stem, f"posterior, T = {temperature:g}: {len(prompts)} inputs x "
            f"{c.eval_samples} samples", top_p=c.eval_top_p, progress=config.progress, particles=c.eval_particles,
            extra_metrics=self.term_metrics(target),
            headers={"mean_loglik": "mean log R(Z ∣ X)", "max_loglik": "max log R(Z ∣ X)",
                     "target_loglik_est": "p_T's mean log R (IS)"})
        terms = "; ".join(f"{t.name}: {'hard' if t.is_hard_constraint else f'weight {t.weight:g}'}" for t in self.terms)
        text = "\n".join([
            f"{len(prompts)} {split} inputs, N = {c.eval_samples} samples per input and method, target R(Z | X)^(1/T) "
            f"with T = {temperature:g}, log R = the weighted sum of the terms ({terms}). 'mean log R' averages the "
            "outputs with R > 0; 'R > 0' is their fraction (shown when below 1). 'sampling' is the base model "
            "under the same action space; corrected methods and base_rejection spend "
            f"{c.eval_particles} policy samples' worth of generated tokens on each output.", "", markdown])
        by_method = {r["method"]: r for r in rows}
        (Path(run_dir) / f"{stem}_summary.json").write_text(json.dumps(by_method, indent=1))
        return EvalResult(by_method, [plot], text)
