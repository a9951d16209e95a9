"""A reinforcement-learning baseline written here: REINFORCE with a leave-one-out baseline (RLOO) on a
task reward, with the project's sampler, so tools run inside rollouts exactly as for GFlowNet
fine-tuning. ``grpo.py`` is the same kind of baseline run by TRL; this one has no library in between,
which makes it easy to test exactly and to change.

Each step draws one training prompt and k trajectories for it; the advantage of trajectory i is
r_i - mean_{j != i} r_j; the loss is -mean(advantage * log q(trajectory)), where log q sums the
policy's own tokens and its stop (inserted tool tokens are not actions). An optional KL penalty
beta * (log q - log p_base) of the whole trajectory is subtracted from the reward, as in RLHF.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from gfnlm.core.policy_scores import score_policy
from gfnlm.core.sampler import sample_trajectories
from gfnlm.core.task import Task
from gfnlm.infra.errors import GfnlmError
from gfnlm.model.policy import Policy

# reward(prompt key, latent tokens incl. tool output) -> a number (e.g. 1.0 for a correct final answer)
TaskReward = Callable[[str, list[int]], float]


@dataclass
class PolicyGradientSettings:
    steps: int = 100
    trajectories_per_prompt: int = 8
    lr: float = 5e-4
    kl_coef: float = 0.0
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    seed: int = 0
    progress: bool = True


def leave_one_out_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """r_i minus the mean reward of the other k-1 trajectories of the same prompt."""
    k = rewards.shape[0]
    if k < 2:
        raise GfnlmError("RLOO needs at least 2 trajectories per prompt.")
    return rewards - (rewards.sum() - rewards) / (k - 1)


def trajectory_log_probs(model, space, traj) -> torch.Tensor:
    scores = score_policy(model, space, traj)
    rows = torch.arange(traj.batch_size, device=traj.tokens.device)
    return scores.log_pf.sum(-1) + scores.log_stop[rows, traj.lengths]


def train_rloo(policy: Policy, task: Task, reward: TaskReward, settings: PolicyGradientSettings) -> list[dict]:
    """Train the policy's adapter; returns one row of metrics per step."""
    s = settings
    prompts = task.train_prompts()
    if not prompts:
        raise GfnlmError("The task has no training prompts.")
    space = task.action_space().to(policy.device)
    hook = task.insert_hook()
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=s.lr)
    rng = random.Random(s.seed)
    generator = torch.Generator(device=policy.device).manual_seed(s.seed)
    rows = []
    for step in tqdm(range(s.steps), desc="rloo", disable=not s.progress, dynamic_ncols=True):
        started = time.perf_counter()
        prompt = prompts[rng.randrange(len(prompts))]
        traj = sample_trajectories(policy.model, space, [prompt.ids], [prompt.key],
                                   torch.zeros(s.trajectories_per_prompt, dtype=torch.long),
                                   temperature=s.temperature, generator=generator, insert_hook=hook)
        task_rewards = torch.tensor([reward(prompt.key, traj.row(b))
                                     for b in range(traj.batch_size)], device=policy.device)
        log_q = trajectory_log_probs(policy.model, space, traj)
        shaped = task_rewards
        if s.kl_coef > 0:
            with torch.no_grad(), policy.base() as base:
                log_p = trajectory_log_probs(base, space, traj)
            shaped = task_rewards - s.kl_coef * (log_q.detach() - log_p)
        loss = -(leave_one_out_advantages(shaped) * log_q).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), s.max_grad_norm)
        optimizer.step()
        rows.append({"step": step + 1, "loss": loss.item(), "reward": float(task_rewards.mean()),
                     "grad_norm": float(grad_norm), "length": float(traj.lengths.float().mean()),
                     "reward_calls": traj.batch_size, "seconds": time.perf_counter() - started})
    return rows
