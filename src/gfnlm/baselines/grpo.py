"""The reinforcement-learning baseline through TRL: GRPOTrainer with LoRA, whose rollouts come from the
project's sampler (TRL's ``rollout_func``), so tools run inside the rollouts exactly as for GFlowNet
fine-tuning; their output is marked as environment tokens (``env_mask`` = 0), which TRL keeps out of
the loss. The reward is the task's checker (e.g. 1.0 for a correct final answer) or, with
``reward: target``, the log-reward log R(Z | X) of the task's GFlowNet target (untempered: GRPO scales
each group's rewards by their spread, which undoes a temperature), so both learners can be given the
same reward.

Rollouts are drawn from the policy restricted to the task's action space; TRL scores the same tokens
with the full vocabulary, so the loss also pushes probability into the allowed tokens (never out of
them). The stop sequence is part of each completion, so the policy learns when to stop.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gfnlm.baselines.sft import TRL_KEEP_MODEL_AS_IS, restores_use_cache, with_pad_token
from gfnlm.core.config import check_choice, check_range
from gfnlm.core.sampler import sample_trajectories
from gfnlm.core.task import Task
from gfnlm.infra.errors import GfnlmError
from gfnlm.infra.seeding import torch_generator
from gfnlm.model.policy import Policy
from gfnlm.targets.base import Target

# reward(prompt key, latent tokens incl. tool output) -> a number (e.g. 1.0 for a correct final answer)
TaskReward = Callable[[str, list[int]], float]


@dataclass
class GrpoSettings:
    steps: int = field(default=100, metadata={"help": "optimizer steps, one prompt each"})
    trajectories_per_prompt: int = field(default=8, metadata={
        "help": "trajectories per prompt and step (TRL's num_generations: one group), at least 2"})
    lr: float = field(default=1e-4, metadata={"help": "learning rate (constant)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the rollouts"})
    reward: str = field(default="checker", metadata={
        "help": "checker: the task's answer check (1 for a correct final answer); target: log R(Z | X) of the "
                "task's GFlowNet target"})
    kl_coef: float = field(default=0.0, metadata={
        "help": "weight of the KL penalty to the base model, adapter off (TRL's beta)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0 disables)"})
    seed: int = field(default=0, metadata={"help": "seed of the prompt order and the rollouts"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def validate(self) -> None:
        check_range("grpo.steps", self.steps, low=1)
        check_range("grpo.trajectories_per_prompt", self.trajectories_per_prompt, low=2)
        check_range("grpo.lr", self.lr, low=0, low_open=True)
        check_range("grpo.temperature", self.temperature, low=0, low_open=True)
        check_choice("grpo.reward", self.reward, ("checker", "target"))
        check_range("grpo.kl_coef", self.kl_coef, low=0)
        check_range("grpo.max_grad_norm", self.max_grad_norm, low=0)


def rollout_function(policy: Policy, task: Task, seed: int, temperature: float = 1.0, target: Target | None = None):
    """TRL's rollout_func: one trajectory of the policy (with the task's tools) per prompt entry, drawn at
    ``temperature``; with a ``target``, each trajectory's log R(Z | X) comes with it ("log_reward"), scored
    in one batch."""
    by_text = {p.text: p for p in task.train_prompts()}
    space = task.action_space().to(policy.device)
    hook = task.insert_hook()
    stop = [int(t) for t in space.terminator]
    generator = torch_generator(policy.device, seed)

    def rollout(prompts: list, trainer) -> dict:
        unknown = [p for p in prompts if p not in by_text]
        if unknown:
            raise GfnlmError(f"GRPO rollout: prompt {unknown[0]!r} is not one of the task's training prompts.")
        distinct = list(dict.fromkeys(prompts))
        index = torch.tensor([distinct.index(p) for p in prompts])
        chosen = [by_text[p] for p in distinct]
        was_training = policy.model.training
        policy.model.eval()
        traj = sample_trajectories(policy.model, space, [p.ids for p in chosen], [p.key for p in chosen], index,
                                   temperature=temperature, generator=generator, insert_hook=hook)
        policy.model.train(was_training)
        rows = [traj.row(b) for b in range(traj.batch_size)]
        masks = [traj.row_policy_mask(b) for b in range(traj.batch_size)]
        return {"prompt_ids": [list(chosen[int(i)].ids) for i in index],
                "completion_ids": [row + stop for row in rows],
                "env_mask": [[int(m) for m in mask] + [1] * len(stop) for mask in masks],
                "logprobs": None,
                "prompt_key": [chosen[int(i)].key for i in index],
                "latent": rows,
                "log_reward": target.terminal_log_rewards(traj).tolist() if target is not None else [None] * len(rows)}

    return rollout


def train_grpo(policy: Policy, task: Task, reward: TaskReward | Target, settings: GrpoSettings) -> list[dict]:
    """Train the policy's adapter with TRL's GRPOTrainer on ``reward``: a function of (prompt key, latent
    tokens), or a target whose log R(Z | X) is the reward; returns one row of metrics per step (mean reward,
    reward calls and seconds)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    s = settings
    prompts = task.train_prompts()
    if not prompts:
        raise GfnlmError("The task has no training prompts.")
    s.validate()  # e.g. GRPO's groups need at least 2 trajectories
    tokenizer = policy.tokenizer
    if tokenizer is None:
        raise GfnlmError("GRPO through TRL needs the policy's tokenizer.")
    with_pad_token(tokenizer)
    calls: list[float] = []

    def task_reward(prompts, completions, prompt_key, latent, log_reward, **_) -> list[float]:
        if isinstance(reward, Target):
            values = [float(r) for r in log_reward]
        else:
            values = [float(reward(key, list(z))) for key, z in zip(prompt_key, latent)]
        calls.extend(values)
        return values

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gfnlm-grpo-") as scratch:
        args = GRPOConfig(output_dir=scratch, max_steps=s.steps, learning_rate=s.lr, lr_scheduler_type="constant",
                          per_device_train_batch_size=s.trajectories_per_prompt,
                          num_generations=s.trajectories_per_prompt, beta=s.kl_coef, temperature=s.temperature,
                          max_grad_norm=s.max_grad_norm, logging_steps=1, save_strategy="no", report_to="none",
                          seed=s.seed, use_cpu=policy.device.type == "cpu", disable_tqdm=not s.progress,
                          dataloader_num_workers=0, **TRL_KEEP_MODEL_AS_IS)
        trainer = GRPOTrainer(model=policy.model, reward_funcs=[task_reward], args=args,
                              train_dataset=Dataset.from_dict({"prompt": [p.text for p in prompts]}),
                              processing_class=tokenizer,
                              rollout_func=rollout_function(policy, task, s.seed, s.temperature,
                                                            reward if isinstance(reward, Target) else None))
        started = time.perf_counter()
        with restores_use_cache(policy.model):
            trainer.train()
        seconds = time.perf_counter() - started
    policy.model.eval()
    per_step = s.trajectories_per_prompt
    for step in range(len(calls) // per_step):
        group = calls[step * per_step: (step + 1) * per_step]
        rows.append({"step": step + 1, "reward": sum(group) / len(group), "reward_calls": len(group),
                     "seconds": seconds / max(len(calls) // per_step, 1)})
    return rows
