"""What a task provides to the trainer: prompts, the action space, the target and its evaluation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from gfnlm.core.action_space import ActionSpace
from gfnlm.core.trajectories import Trajectories
from gfnlm.infra.errors import GfnlmError
from gfnlm.model.policy import Policy

if TYPE_CHECKING:  # targets and baselines sit above the engine: tasks build and feed them
    from gfnlm.baselines.sft import SupervisedExample
    from gfnlm.targets import Target


@dataclass(frozen=True)
class TaskPrompt:
    text: str
    ids: tuple[int, ...]
    key: str


@dataclass
class EvalResult:
    metrics: dict
    plots: list[Path] = field(default_factory=list)
    markdown: str = ""


class Task(ABC):
    name: ClassVar[str]
    Config: ClassVar[type]
    training_metric_names: ClassVar[tuple[str, ...]] = ()  # keys returned by training_metrics
    # True when evaluate() must run on every process of a launch: it splits its sampling over them
    # (gfnlm.infra.distributed.share / gather_flat), or it trains a baseline adapter with TRL, which is
    # data-parallel over the launch's processes. Otherwise rank 0 evaluates alone.
    evaluates_on_every_process: ClassVar[bool] = False
    # whether ``evaluate`` handles a temperature-conditional policy (else its report skips the evaluation)
    evaluates_conditional_runs: ClassVar[bool] = False
    source: str = ""  # the config file the task was read from, named in errors found after the model loads

    def __init__(self, config):
        self.config = config

    def check_inputs(self) -> None:
        """Cheap checks of the task's inputs (files, prompts) before any model is loaded."""

    @abstractmethod
    def setup(self, tokenizer, vocab_size: int) -> None:
        """Tokenize prompts and build token sets once the tokenizer is known."""

    @abstractmethod
    def train_prompts(self) -> list[TaskPrompt]: ...

    def all_prompts(self) -> list[TaskPrompt]:
        """Every prompt the task will run the model on (training and evaluation)."""
        return self.train_prompts()

    @abstractmethod
    def action_space(self) -> ActionSpace: ...

    @abstractmethod
    def target(self, policy: Policy) -> Target: ...

    def training_target(self, policy: Policy) -> Target:
        """The target the trainer fits; the same as ``target`` unless the task trains on a smoothed version of
        it (a hard constraint as a large finite penalty)."""
        return self.target(policy)

    def insert_hook(self):
        """Tools that write into rollouts (the sampler's insert hook), or None."""
        return None

    def seed_trajectories(self) -> list[tuple[str, tuple[int, ...], tuple[bool, ...]]]:
        """(prompt key, tokens, policy mask) rows put into the replay buffer before training."""
        return []

    def fit(self, trainer, resume: bool = False) -> None:
        """Train the policy (``trainer``: a gfnlm.core.trainer.Trainer); tasks with more than one phase (EM)
        run them here."""
        trainer.train(resume=resume)

    def training_metrics(self, traj: Trajectories, texts: list[str]) -> dict:
        """Task metrics of freshly sampled completions, logged each step."""
        return {}

    def evaluate(self, policy: Policy, run_dir: Path, config) -> EvalResult:
        """Evaluate a trained policy; ``config`` is the run's TrainConfig (seed, reward temperature, ...)."""
        return EvalResult({})

    # The data of the baselines (gfnlm baseline sft|grpo): a task that has it overrides these.
    def supervised_examples(self) -> list[SupervisedExample]:
        """Gold (X, Z) examples for supervised fine-tuning of the policy (after ``setup``)."""
        raise GfnlmError(f"Task {self.name} has no gold examples of Z for supervised fine-tuning.")

    def task_reward(self) -> Callable[[str, list[int]], float]:
        """reward(prompt key, latent tokens incl. tool output) -> a number, for reinforcement learning (after
        ``setup``)."""
        raise GfnlmError(f"Task {self.name} has no task reward (such as a checked answer) for reinforcement "
                         "learning.")

    @classmethod
    def provides(cls, data: str) -> bool:
        """Whether the task overrides the method ``data`` (supervised_examples, task_reward): known before any
        model is loaded."""
        return getattr(cls, data) is not getattr(Task, data)
