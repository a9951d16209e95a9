"""Story infilling: sample the missing fourth sentence Z of a five-sentence story in proportion to
p_LM(X Z Y), where X is sentences 1-3 and Y sentence 5.

The policy reads an instruction with both X and Y ("Beginning: ... Ending: ... Middle:") and writes Z;
it stops by writing "." (the first token of ". Y"). The reward reads only X, then Z, then ". Y" once:
log R(z_1..z_i stop) = log p_LM(z_1..z_i . Y | X) for every prefix in one packed pass
(PromptAnswerLikelihood behind OwnPrompts). p_LM is the loaded model: the base model, or a prior
fine-tuned on the training stories (`gfnlm prior infilling --out DIR`, then `--model DIR`).
Sentences cannot hold line breaks, special tokens or any other token containing "." (as in the
continuation task). ``seed_gold`` puts the training stories' gold middles in the replay buffer (off by
default: the fair comparison). The test split never reaches training: the prior, the SFT baseline and
the few-shot examples all read training stories only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gfnlm.baselines.sft import SupervisedExample
from gfnlm.core.action_space import ActionSpace, banned_sentence_tokens
from gfnlm.core.config import EvaluationMethods, check_range
from gfnlm.core.task import EvalResult, Task, TaskPrompt
from gfnlm.infra.errors import GfnlmError
from gfnlm.model.policy import Policy
from gfnlm.targets import OwnPrompts, PromptAnswerLikelihood, Target
from gfnlm.tasks.infilling.stories import Story, builtin_stories, load_stories_csv

METHODS = ("prompting", "prompting_fewshot", "beginning_only", "sft", "gfn")


@dataclass
class InfillingConfig(EvaluationMethods):
    METHODS = METHODS
    data: str = field(default="", metadata={
        "help": "stories in the ROCStories CSV layout (\"\": the built-in 160, the first 110 for training and "
                "the last 50 for testing)"})
    test_data: str = field(default="", metadata={"help": "held-out stories (\"\": the last test_size stories of data)"})
    test_size: int = field(default=50, metadata={"help": "stories of data held out for testing when no test_data"})
    train_size: int = field(default=0, metadata={"help": "use the first this-many training stories (0: all)"})
    instruction: str = field(default="Write the missing fourth sentence of the story.", metadata={
        "help": "the instruction at the start of the policy's prompt"})
    policy_template: str = field(
        default="{instruction}\nBeginning: {beginning}\nEnding: {ending}\nMiddle:", metadata={
            "help": "the policy's prompt; contains {beginning} and {ending} (and may contain {instruction})"})
    min_len: int = field(default=3, metadata={"help": "fewest tokens of the middle sentence"})
    max_len: int = field(default=25, metadata={"help": "most tokens of the middle sentence"})
    seed_gold: bool = field(default=False, metadata={
        "help": "the training stories' gold middles seed the replay buffer (not a fair comparison)"})
    seed: int = field(default=0, metadata={
        "help": "seed of the evaluation: its samples, its sft adapter and its BERTScore rescaling"})
    eval_stories: int = field(default=50, metadata={"help": "test stories in the evaluation"})
    eval_samples: int = field(default=8, metadata={"help": "N samples per test story and method"})
    eval_temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the evaluation"})
    eval_batch: int = field(default=8, metadata={"help": "test stories sampled together"})
    eval_methods: str = field(default=",".join(METHODS), metadata={
        "help": f"comma-separated evaluation methods, of {', '.join(METHODS)}"})
    fewshot_examples: int = field(default=3, metadata={
        "help": "solved training stories before the prompt (prompting_fewshot)"})
    sft_epochs: float = field(default=5.0, metadata={"help": "epochs of the evaluation's sft method"})
    sft_lr: float = field(default=5e-4, metadata={"help": "learning rate of the evaluation's sft method"})

    def validate(self) -> None:
        for name in ("test_size", "min_len", "max_len", "eval_stories", "eval_samples", "eval_batch",
                     "fewshot_examples"):
            check_range(f"task.{name}", getattr(self, name), low=1)
        check_range("task.train_size", self.train_size, low=0)
        for name in ("eval_temperature", "sft_epochs", "sft_lr"):
            check_range(f"task.{name}", getattr(self, name), low=0, low_open=True)
        if self.min_len > self.max_len:
            raise GfnlmError("task.min_len must not exceed task.max_len.")
        for slot in ("{beginning}", "{ending}"):
            if slot not in self.policy_template:
                raise GfnlmError(f"task.policy_template must contain {slot}.")
        self.methods()  # an empty list or an unknown method is an error


class InfillingTask(Task):
    name = "infilling"
    Config = InfillingConfig
    evaluates_on_every_process = True  # the SFT baseline trains with TRL (data-parallel under a launcher)

    def check_inputs(self) -> None:
        c = self.config
        stories = load_stories_csv(c.data) if c.data else builtin_stories()
        if c.test_data:
            self.train_stories, self.test_stories = stories, load_stories_csv(c.test_data)
        else:
            if len(stories) <= c.test_size:
                raise GfnlmError(f"{len(stories)} stories leave none for training after a test split of "
                                 f"{c.test_size}; lower task.test_size or give task.test_data.")
            self.train_stories, self.test_stories = stories[: -c.test_size], stories[-c.test_size:]
        if c.train_size:
            self.train_stories = self.train_stories[: c.train_size]
        overlap = {s.text for s in self.train_stories} & {s.text for s in self.test_stories}
        if overlap:
            raise GfnlmError(f"{len(overlap)} test stories also appear in the training data; remove them.")
        self.test_stories = self.test_stories[: c.eval_stories]

    def setup(self, tokenizer, vocab_size: int) -> None:
        self.check_inputs()
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop = self.encode(".")
        if len(self.stop) != 1:
            raise GfnlmError("The tokenizer does not write '.' as one token; the infilling task needs it.")
        self.banned = banned_sentence_tokens(tokenizer, vocab_size, ".", self.stop)
        self.train_set = [self.policy_prompt(s, f"train-{i}") for i, s in enumerate(self.train_stories)]
        self.test_set = [self.policy_prompt(s, f"test-{i}") for i, s in enumerate(self.test_stories)]
        self.story_of = {tp.key: s for tp, s in zip(self.train_set + self.test_set,
                                                     self.train_stories + self.test_stories)}
        for key, story in self.story_of.items():
            if self.ending_ids(story)[0] != self.stop[0]:
                raise GfnlmError(f"Story {story.id}: '. ' + its ending does not start with the '.' token.")

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def policy_prompt_text(self, story: Story) -> str:
        c = self.config
        return c.policy_template.format(instruction=c.instruction, beginning=story.beginning, ending=story.ending)

    def policy_prompt(self, story: Story, key: str) -> TaskPrompt:
        text = self.policy_prompt_text(story)
        return TaskPrompt(text, tuple(self.encode(text)), key)

    def beginning_ids(self, story: Story) -> tuple[int, ...]:
        return tuple(self.encode(story.beginning))

    def ending_ids(self, story: Story) -> list[int]:
        """'. ' + Y: the stop token, then the ending (what the reward appends after Z)."""
        return self.encode(". " + story.ending)

    def middle_ids(self, story: Story) -> tuple[int, ...]:
        """The gold middle as Z (leading space, no final '.'), as the policy would write it."""
        return tuple(self.encode(" " + story.middle.rstrip(".").rstrip()))

    def train_prompts(self) -> list[TaskPrompt]:
        return list(self.train_set)

    def all_prompts(self) -> list[TaskPrompt]:
        return self.train_set + self.test_set

    def action_space(self) -> ActionSpace:
        c = self.config
        return ActionSpace(self.vocab_size, self.stop, min_len=c.min_len, max_len=c.max_len, banned_tokens=self.banned)

    def target(self, policy: Policy) -> Target:
        keys = [tp.key for tp in self.train_set + self.test_set]
        answers = {k: self.ending_ids(self.story_of[k]) for k in keys}
        return OwnPrompts(PromptAnswerLikelihood(policy, answers), {k: self.beginning_ids(self.story_of[k]) for k in keys})

    def seed_trajectories(self):
        if not self.config.seed_gold:
            return []
        c, banned = self.config, set(self.banned)
        seeds = []
        for tp in self.train_set:  # gold middles the policy could have written
            z = self.middle_ids(self.story_of[tp.key])
            if c.min_len <= len(z) <= c.max_len and not banned & set(z):
                seeds.append((tp.key, z, (True,) * len(z)))
        return seeds

    # ----------------------------------------------------------------------------------------- baselines
    def prior_examples(self) -> list[SupervisedExample]:
        """Whole training stories, for fine-tuning the prior p_LM (every token in the loss)."""
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        return [SupervisedExample((), tuple(self.encode(s.text)) + tuple(eos)) for s in self.train_stories]

    def supervised_examples(self) -> list[SupervisedExample]:
        """(beginning, ending) -> middle: the SFT baseline of the policy (the policy's prompt, then Z and '.')."""
        return [SupervisedExample(tp.ids, self.middle_ids(self.story_of[tp.key]) + tuple(self.stop))
                for tp in self.train_set]

    def fewshot_prefix(self) -> tuple[int, ...]:
        stories = self.train_stories[: self.config.fewshot_examples]
        text = "".join(f"{self.policy_prompt_text(s)} {s.middle}\n\n" for s in stories)
        return tuple(self.encode(text))

    def evaluate(self, policy: Policy, run_dir: Path, config) -> EvalResult:
        from gfnlm.tasks.infilling.evaluation import evaluate_infilling

        return evaluate_infilling(self, policy, Path(run_dir), config)
