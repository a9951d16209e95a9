"""The training loop: behaviour mix -> rewards -> policy log-probs -> balance loss -> AdamW on LoRA.

One optimizer step = ``grad_accum`` micro-batches; each micro-batch draws ``prompts_per_batch``
training prompts and ``trajectories_per_prompt`` trajectories for each, from one behaviour:
replay of the buffer (probability ``replay_prob``, when every drawn prompt has buffered samples),
sampling at a random temperature in [tempered_min, tempered_max] (``tempered_prob``), or on-policy.
Checkpoints hold everything the next step depends on (adapter, log Z, optimizer, scheduler, buffer,
every random stream, step), so ``resume`` continues exactly where an uninterrupted run would be.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_scheduler

from gfnlm.buffer import BufferItem, ReplayBuffer
from gfnlm.checkpoint import CheckpointStore
from gfnlm.config import TrainConfig
from gfnlm.errors import GfnlmError
from gfnlm.metrics_log import MetricsLog
from gfnlm.objectives import BalanceTerms, LogPartition, balance_loss
from gfnlm.policy import Policy
from gfnlm.policy_scores import score_policy
from gfnlm.sampler import sample_trajectories
from gfnlm.tasks.base import Task
from gfnlm.trajectories import Trajectories

METRIC_COLUMNS = [
    "step", "loss", "log_reward", "log_reward_max", "length", "reward_temperature", "lr", "grad_norm", "log_z",
    "replay", "tempered", "on_policy", "skipped", "buffer_size", "sampled_tokens", "seconds",
]


class Trainer:
    def __init__(self, config: TrainConfig, task: Task, policy: Policy, run_dir: Path):
        self.config = config
        self.task = task
        self.policy = policy
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = policy.device
        self.prompts = task.train_prompts()
        if not self.prompts:
            raise GfnlmError("The task has no training prompts.")
        self.key_index = {p.key: i for i, p in enumerate(self.prompts)}
        self.space = task.action_space().to(self.device)
        self.target = task.target(policy)
        self.insert_hook = task.insert_hook()
        self.log_z = LogPartition(len(self.prompts)).to(self.device)
        self.optimizer = torch.optim.AdamW(
            [
                {"params": policy.trainable_parameters(), "lr": config.lr, "weight_decay": config.weight_decay},
                {"params": list(self.log_z.parameters()), "lr": config.logz_lr, "weight_decay": 0.0},
            ]
        )
        self.scheduler = get_scheduler(
            config.lr_schedule, self.optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps
        )
        self.buffer = ReplayBuffer(config.buffer_capacity, config.buffer_tolerance, config.buffer_sampling,
                                   config.buffer_priority_temperature)
        self.rng = random.Random(config.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.step = 0
        self.bad_steps = 0
        self.store = CheckpointStore(self.run_dir, keep=config.keep_checkpoints)
        self._stop_requested = False

    # ----------------------------------------------------------------------------------------- schedule
    def reward_temperature(self, step: int) -> float:
        c = self.config
        if c.reward_temp_horizon <= 0:
            return c.reward_temp_end
        frac = min(1.0, step / c.reward_temp_horizon)
        return c.reward_temp_start + (c.reward_temp_end - c.reward_temp_start) * frac

    # ----------------------------------------------------------------------------------------- batches
    def behaviour_batch(self) -> tuple[Trajectories, torch.Tensor, str]:
        """Trajectories, their untempered per-prefix log-rewards, and which behaviour made them."""
        c = self.config
        chosen = [self.prompts[self.rng.randrange(len(self.prompts))] for _ in range(c.prompts_per_batch)]
        prompt_ids = [p.ids for p in chosen]
        keys = [p.key for p in chosen]
        prompt_index = [g for g in range(len(chosen)) for _ in range(c.trajectories_per_prompt)]
        u = self.rng.random()
        if u < c.replay_prob and all(self.buffer.count(k) > 0 for k in keys):
            items = [it for k in keys for it in self.buffer.sample(k, c.trajectories_per_prompt, self.generator)]
            traj = Trajectories.from_rows(prompt_ids, keys, prompt_index, [it.tokens for it in items],
                                          [it.policy_mask for it in items], device=self.device)
            rewards = torch.full((traj.batch_size, traj.max_length + 1), math.nan)
            for b, it in enumerate(items):
                rewards[b, : len(it.log_rewards)] = torch.tensor(it.log_rewards)
            return traj, rewards.to(self.device), "replay"
        tempered = u < c.replay_prob + c.tempered_prob
        temperature = self.rng.uniform(c.tempered_min, c.tempered_max) if tempered else 1.0
        traj = sample_trajectories(self.policy.model, self.space, prompt_ids, keys,
                                   torch.tensor(prompt_index), temperature=temperature, epsilon=c.epsilon,
                                   generator=self.generator, insert_hook=self.insert_hook)
        rewards = self.target.log_rewards(traj).float().clamp(min=c.log_reward_floor)
        return traj, rewards, "tempered" if tempered else "on_policy"

    @torch.no_grad()
    def seed_buffer(self) -> None:
        """Put the task's given trajectories (e.g. gold rationales) into the replay buffer, scored by the target."""
        seeds = self.task.seed_trajectories()
        if not seeds:
            return
        by_key = {p.key: p for p in self.prompts}
        keys = sorted({key for key, _, _ in seeds}, key=list(by_key).index)
        traj = Trajectories.from_rows([by_key[k].ids for k in keys], keys, [keys.index(k) for k, _, _ in seeds],
                                      [list(t) for _, t, _ in seeds], [list(m) for _, _, m in seeds],
                                      device=self.device)
        rewards = self.target.log_rewards(traj).float().clamp(min=self.config.log_reward_floor)
        self._remember(traj, rewards, score_policy(self.policy.model, self.space, traj).terminable)

    def _remember(self, traj: Trajectories, rewards: torch.Tensor, terminable: torch.Tensor) -> None:
        stored = torch.where(terminable, rewards, torch.full_like(rewards, math.nan)).cpu()
        texts = self.decode(traj)
        for b in range(traj.batch_size):
            n = int(traj.lengths[b])
            self.buffer.add(traj.row_key(b), BufferItem(tuple(traj.row(b)), tuple(traj.row_policy_mask(b)),
                                                        tuple(stored[b, : n + 1].tolist()), texts[b]))

    def decode(self, traj: Trajectories) -> list[str]:
        tok = self.policy.tokenizer
        return [tok.decode(traj.row(b)) if tok is not None else " ".join(map(str, traj.row(b)))
                for b in range(traj.batch_size)]

    # ----------------------------------------------------------------------------------------- one step
    def train_step(self) -> dict:
        c = self.config
        temperature = self.reward_temperature(self.step)
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        stats: dict[str, list] = defaultdict(list)
        counts = {"replay": 0, "tempered": 0, "on_policy": 0, "skipped": 0}
        applied = 0
        for _ in range(c.grad_accum):
            traj, rewards, mode = self.behaviour_batch()
            counts[mode] += 1
            scores = score_policy(self.policy.model, self.space, traj)
            rows = torch.arange(traj.batch_size, device=self.device)
            terminal = rewards[rows, traj.lengths]
            if not bool(torch.isfinite(rewards[scores.terminable]).all()):
                counts["skipped"] += 1  # non-finite reward: drop the batch, never store it
                continue
            if mode != "replay":
                self._remember(traj, rewards, scores.terminable)
                stats["log_reward"].append(float(terminal.mean()))
                stats["log_reward_max"].append(float(terminal.max()))
                stats["length"].append(float(traj.lengths.float().mean()))
                stats["sampled_tokens"].append(int(traj.lengths.sum()) + traj.batch_size * self.space.terminator_length)
                for key, value in self.task.training_metrics(traj, self.decode(traj)).items():
                    stats[key].append(value)
            prompt_ids = torch.tensor([self.key_index[traj.row_key(b)] for b in range(traj.batch_size)],
                                      device=self.device)
            terms = BalanceTerms(scores.log_pf, scores.log_stop, torch.nan_to_num(rewards) / temperature,
                                 scores.terminable, traj.lengths, self.log_z(prompt_ids))
            loss = balance_loss(c.objective, terms, c.subtb_lambda)
            if not torch.isfinite(loss):
                counts["skipped"] += 1
                continue
            (loss / c.grad_accum).backward()
            stats["loss"].append(loss.item())
            applied += 1
        params = self.policy.trainable_parameters() + list(self.log_z.parameters())
        grad_norm = torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm if c.max_grad_norm > 0 else math.inf)
        if applied and torch.isfinite(grad_norm):
            self.optimizer.step()
            self.bad_steps = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps += 1
            if self.bad_steps >= c.max_bad_steps:
                raise GfnlmError(f"{self.bad_steps} steps in a row had non-finite rewards, losses or gradients; "
                                 "check the target, lower lr or raise log_reward_floor.")
        self.scheduler.step()
        self.step += 1
        row = {"step": self.step, "reward_temperature": temperature, "lr": self.scheduler.get_last_lr()[0],
               "grad_norm": float(grad_norm), "log_z": self.log_z.values.mean().item(),
               "buffer_size": len(self.buffer), "seconds": time.perf_counter() - started, **counts}
        for key, values in stats.items():
            row[key] = sum(values) if key == "sampled_tokens" else sum(values) / len(values)
        return row

    # ----------------------------------------------------------------------------------------- loop
    def train(self, resume: bool = False) -> list[dict]:
        c = self.config
        resumed_from = self.restore() if resume else None
        if resume and resumed_from is None:
            print(f"No checkpoint in {self.store.root}; starting from step 0.", flush=True)
        if resumed_from is None:
            self.seed_buffer()
        columns = METRIC_COLUMNS + list(self.task.training_metric_names)
        log = MetricsLog(self.run_dir, columns, resume_step=self.step if resumed_from else None,
                         tensorboard=c.tensorboard)
        rows = []
        previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._request_stop)
        bar = tqdm(total=c.steps, initial=self.step, desc="train", disable=not c.progress, dynamic_ncols=True)
        shown: dict[str, str] = {}
        try:
            while self.step < c.steps:
                row = self.train_step()
                rows.append(row)
                log.append(row)
                bar.update(1)
                shown.update({k: f"{row[k]:.3g}" for k in ("loss", "log_reward") if k in row})  # replay has no logR
                bar.set_postfix(shown)
                if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                    self.save()
                if self._stop_requested:
                    if self.step % c.checkpoint_every:
                        self.save()
                    raise GfnlmError(f"Interrupted: checkpoint saved at step {self.step} in {self.store.root}; "
                                     "continue with --resume.")
        finally:
            bar.close()
            log.close()
            signal.signal(signal.SIGINT, previous)
        return rows

    def _request_stop(self, signum, frame) -> None:
        if self._stop_requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self._stop_requested = True
        print("\nStopping after this step (Ctrl-C again to abort without saving) ...", flush=True)

    # ----------------------------------------------------------------------------------------- state
    def save(self) -> Path:
        def write_state(path: Path) -> None:
            version, internal, gauss = self.rng.getstate()
            path.write_text(json.dumps({"step": self.step, "bad_steps": self.bad_steps,
                                        "python_rng": [version, list(internal), gauss]}))

        return self.store.save(self.step, {
            "adapter.safetensors": self.policy.save_adapter,
            "log_z.safetensors": lambda p: save_file({"values": self.log_z.values.detach().cpu()}, str(p)),
            "optimizer.pt": lambda p: torch.save(self.optimizer.state_dict(), p),
            "scheduler.pt": lambda p: torch.save(self.scheduler.state_dict(), p),
            "rng.safetensors": lambda p: save_file({"torch": torch.get_rng_state(),
                                                    "sampler": self.generator.get_state()}, str(p)),
            "buffer.jsonl": self.buffer.save,
            "state.json": write_state,
        })

    def restore(self) -> Path | None:
        path = self.store.latest()
        if path is None:
            return None
        self.policy.load_adapter(path / "adapter.safetensors")
        with torch.no_grad():
            self.log_z.values.copy_(load_file(str(path / "log_z.safetensors"))["values"])
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location=self.device))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        states = load_file(str(path / "rng.safetensors"))
        torch.set_rng_state(states["torch"])
        self.generator.set_state(states["sampler"])
        self.buffer.load(path / "buffer.jsonl")
        state = json.loads((path / "state.json").read_text())
        version, internal, gauss = state["python_rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.step = int(state["step"])
        self.bad_steps = int(state["bad_steps"])
        print(f"Resumed from {path} (step {self.step}).", flush=True)
        return path
