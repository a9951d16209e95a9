"""The training loop: behaviour mix -> rewards -> policy log-probs -> balance loss -> AdamW on LoRA.

One optimizer step = ``grad_accum`` micro-batches; each micro-batch draws ``prompts_per_batch``
training prompts and ``trajectories_per_prompt`` trajectories for each, from one behaviour:
replay of the buffer (probability ``replay_prob``, when every drawn prompt has buffered samples),
sampling at a random temperature in [tempered_min, tempered_max] (``tempered_prob``), or on-policy.
Checkpoints hold everything the next step depends on (adapter, log Z, optimizer, scheduler, buffer,
every random stream, step), so ``resume`` continues exactly where an uninterrupted run would be.

Several processes (torchrun / accelerate launch, see distributed.py): each samples its own micro-batches
from its own streams (streams.py), the loss pass runs through DDP so the gradients of the LoRA
parameters and log Z are averaged over processes, and only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import signal
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_scheduler

from gfnlm.core.buffer import BufferItem, ReplayBuffer
from gfnlm.core.config import TrainConfig
from gfnlm.core.objectives import BalanceTerms, LogPartition, balance_loss, batch_log_z
from gfnlm.core.policy_scores import score_policy
from gfnlm.core.sampler import sample_trajectories
from gfnlm.core.streams import Stream, buffer_file, generator_key
from gfnlm.core.task import Task
from gfnlm.core.trajectories import Trajectories
from gfnlm.infra.checkpoint import CheckpointStore
from gfnlm.infra.distributed import Processes
from gfnlm.infra.errors import GfnlmError
from gfnlm.infra.metrics_log import MetricsLog
from gfnlm.model.policy import Policy
from gfnlm.model.temperature import EMBEDDING_LR_SCALE, SCALAR_LR_SCALE, TemperatureConditioning

METRIC_COLUMNS = [
    "step", "loss", "log_reward", "log_reward_max", "length", "reward_temperature", "lr", "grad_norm", "log_z",
    "replay", "tempered", "on_policy", "skipped", "buffer_size", "sampled_tokens", "seconds",
]


@dataclass
class LossPass:
    loss: torch.Tensor  # to backpropagate: the balance loss, or an exact 0 when the micro-batch is dropped
    terminable: torch.Tensor  # (B, L+1) which states could stop (from the policy scores)
    rewards_finite: bool
    loss_finite: bool
    log_z: float = math.nan  # mean log Z(X) used by the loss (logged when it is estimated from the batch)


class Learner(torch.nn.Module):
    """The trained parameters (LoRA policy, learned log Z) as one module whose forward is the loss pass:
    the one forward DDP wraps, so exactly these gradients are all-reduced. Sampling and rewards use
    the unwrapped model and never run DDP's hooks."""

    def __init__(self, model: torch.nn.Module, log_z: LogPartition, space, config: TrainConfig):
        super().__init__()
        self.model = model
        self.log_z = log_z
        self.space = space
        self.config = config

    def forward(self, traj: Trajectories, rewards: torch.Tensor, temperature: float,
                prompt_ids: torch.Tensor) -> LossPass:
        scores = score_policy(self.model, self.space, traj)
        if not bool(torch.isfinite(rewards[scores.terminable]).all()):
            return LossPass(self._zero(), scores.terminable, False, False)
        c = self.config
        terms = BalanceTerms(scores.log_pf, scores.log_stop, torch.nan_to_num(rewards) / temperature,
                             scores.terminable, traj.lengths, self.log_z(prompt_ids))
        if c.log_z == "batch":
            terms.log_z = batch_log_z(c.objective, terms, prompt_ids, c.subtb_lambda)
        loss = balance_loss(c.objective, terms, c.subtb_lambda)
        if not torch.isfinite(loss):
            return LossPass(self._zero(), scores.terminable, True, False)
        return LossPass(loss, scores.terminable, True, True, float(terms.log_z.detach().mean()))

    def _zero(self) -> torch.Tensor:
        """0 that reaches every trained parameter: a dropped micro-batch still joins the all-reduce
        (every process must), adding exactly nothing."""
        return sum((p * 0.0).sum() for p in self.parameters() if p.requires_grad)


class Trainer:
    def __init__(self, config: TrainConfig, task: Task, policy: Policy, run_dir: Path,
                 processes: Processes | None = None):
        self.config = config
        self.processes = processes if processes is not None else Processes(policy.device)
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
        self.target = task.training_target(policy)
        self.insert_hook = task.insert_hook()
        self.conditioning = (TemperatureConditioning(config.conditional_temperatures)
                             if config.conditional_temperatures else None)
        self.log_z = LogPartition(len(self.prompts)).to(self.device)
        if config.log_z == "batch":  # estimated from each batch: the table is unused, and DDP must not wait for it
            self.log_z.values.requires_grad_(False)
        self.learner = Learner(policy.model, self.log_z, self.space, config)
        self.loss_pass = self.processes.prepare(self.learner)  # DDP under a launcher, else the learner
        conditioning = policy.temperature_embedding
        embedding = [conditioning.weight] if conditioning is not None else []
        scalars = conditioning.scalar_parameters() if conditioning is not None else []
        lora = [p for p in policy.trainable_parameters() if not any(p is e for e in embedding + scalars)]
        groups = [{"params": lora, "lr": config.lr, "weight_decay": config.weight_decay},
                  {"params": list(self.log_z.parameters()), "lr": config.logz_lr, "weight_decay": 0.0}]
        for params, scale in ((embedding, EMBEDDING_LR_SCALE), (scalars, SCALAR_LR_SCALE)):
            if params:  # their own learning rates: parameters that start at zero
                groups.append({"params": params, "lr": config.lr * scale, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups)
        self.scheduler = get_scheduler(
            config.lr_schedule, self.optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps
        )
        first = self.processes.rank * config.virtual_ranks
        self.streams = [Stream.create(first + v, config.seed, self.device, self.new_buffer())
                        for v in range(config.virtual_ranks)]
        self.total_streams = self.processes.world_size * config.virtual_ranks
        self.step = 0
        self.bad_steps = 0
        self.store = CheckpointStore(self.run_dir, keep=config.keep_checkpoints)
        self._stop_requested = False

    def new_buffer(self) -> ReplayBuffer:
        c = self.config
        return ReplayBuffer(c.buffer_capacity, c.buffer_tolerance, c.buffer_sampling, c.buffer_priority_temperature)

    # The first stream's state under the names a single process always had.
    @property
    def buffer(self) -> ReplayBuffer:
        return self.streams[0].buffer

    @property
    def rng(self):
        return self.streams[0].rng

    @property
    def generator(self) -> torch.Generator:
        return self.streams[0].generator

    # ----------------------------------------------------------------------------------------- schedule
    def reward_temperature(self, step: int) -> float:
        c = self.config
        if c.reward_temp_horizon <= 0:
            return c.reward_temp_end
        frac = min(1.0, step / c.reward_temp_horizon)
        return c.reward_temp_start + (c.reward_temp_end - c.reward_temp_start) * frac

    def reading(self, temperature: float):
        """Inside: a temperature-conditional policy reads ``temperature``."""
        if self.conditioning is None:
            return contextlib.nullcontext()
        return self.conditioning.at(self.policy, temperature)

    # ----------------------------------------------------------------------------------------- batches
    def behaviour_batch(self, stream: Stream | None = None) -> tuple[Trajectories, torch.Tensor, str]:
        """Trajectories drawn by ``stream`` (default: the first), their untempered per-prefix log-rewards,
        and which behaviour made them."""
        c = self.config
        stream = stream or self.streams[0]
        rng, generator, buffer = stream.rng, stream.generator, stream.buffer
        chosen = [self.prompts[rng.randrange(len(self.prompts))] for _ in range(c.prompts_per_batch)]
        prompt_ids = [p.ids for p in chosen]
        keys = [p.key for p in chosen]
        prompt_index = [g for g in range(len(chosen)) for _ in range(c.trajectories_per_prompt)]
        u = rng.random()
        if u < c.replay_prob and all(buffer.count(k) > 0 for k in keys):
            items = [it for k in keys for it in buffer.sample(k, c.trajectories_per_prompt, generator)]
            traj = Trajectories.from_rows(prompt_ids, keys, prompt_index, [it.tokens for it in items],
                                          [it.policy_mask for it in items], device=self.device)
            rewards = torch.full((traj.batch_size, traj.max_length + 1), math.nan)
            for b, it in enumerate(items):
                rewards[b, : len(it.log_rewards)] = torch.tensor(it.log_rewards)
            return traj, rewards.to(self.device), "replay"
        tempered = u < c.replay_prob + c.tempered_prob
        temperature = rng.uniform(c.tempered_min, c.tempered_max) if tempered else 1.0
        traj = sample_trajectories(self.policy.model, self.space, prompt_ids, keys,
                                   torch.tensor(prompt_index), temperature=temperature, epsilon=c.epsilon,
                                   generator=generator, insert_hook=self.insert_hook)
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
        terminable = score_policy(self.policy.model, self.space, traj).terminable
        for stream in self.streams:  # every stream starts from the same seeds
            self._remember(stream.buffer, traj, rewards, terminable)

    def _remember(self, buffer: ReplayBuffer, traj: Trajectories, rewards: torch.Tensor,
                  terminable: torch.Tensor) -> None:
        stored = torch.where(terminable, rewards, torch.full_like(rewards, math.nan)).cpu()
        texts = self.decode(traj)
        for b in range(traj.batch_size):
            n = int(traj.lengths[b])
            buffer.add(traj.row_key(b), BufferItem(tuple(traj.row(b)), tuple(traj.row_policy_mask(b)),
                                                   tuple(stored[b, : n + 1].tolist()), texts[b]))

    @torch.no_grad()
    def rescore_buffers(self) -> None:
        """Score every buffered trajectory again under the current target (e.g. after EM's M-step changed
        the likelihood), keeping the best ``buffer_capacity`` per prompt under the new rewards."""
        by_key = {p.key: p for p in self.prompts}
        for stream in self.streams:
            old, stream.buffer = stream.buffer, self.new_buffer()
            for key, items in old.items.items():
                traj = Trajectories.from_rows([by_key[key].ids], [key], [0] * len(items), [list(it.tokens) for it in items],
                                              [list(it.policy_mask) for it in items], device=self.device)
                rewards = self.target.log_rewards(traj).float().clamp(min=self.config.log_reward_floor)
                self._remember(stream.buffer, traj, rewards, score_policy(self.policy.model, self.space, traj).terminable)

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
        per_stream = c.grad_accum // len(self.streams)  # each stream's micro-batches in turn, as N processes
        for k in range(c.grad_accum):
            stream = self.streams[k // per_stream]
            if self.conditioning is not None:  # this micro-batch's target temperature, read by the policy
                temperature = self.conditioning.draw(stream.rng)
                stats["reward_temperature"].append(temperature)
            with self.reading(temperature):
                traj, rewards, mode = self.behaviour_batch(stream)
            counts[mode] += 1
            prompt_ids = torch.tensor([self.key_index[traj.row_key(b)] for b in range(traj.batch_size)],
                                      device=self.device)
            # Gradients are all-reduced once per step, in the last micro-batch's backward; every process
            # runs every backward (a dropped micro-batch adds an exact 0), so the reductions always match.
            last = k == c.grad_accum - 1
            # The policy reads T through the backward too (gradient checkpointing re-runs the forward).
            sync = contextlib.nullcontext() if last else self.processes.no_sync(self.loss_pass)
            with self.reading(temperature), sync:
                out = self.loss_pass(traj, rewards, temperature, prompt_ids)
                self.processes.backward(out.loss / c.grad_accum)
            if not out.rewards_finite:
                counts["skipped"] += 1  # non-finite reward: drop the batch, never store it
                continue
            if mode != "replay":
                self._remember(stream.buffer, traj, rewards, out.terminable)
                terminal = rewards[torch.arange(traj.batch_size, device=self.device), traj.lengths]
                stats["log_reward"].append(float(terminal.mean()))
                stats["log_reward_max"].append(float(terminal.max()))
                stats["length"].append(float(traj.lengths.float().mean()))
                stats["sampled_tokens"].append(int(traj.lengths.sum()) + traj.batch_size * self.space.terminator_length)
                for key, value in self.task.training_metrics(traj, self.decode(traj)).items():
                    stats[key].append(value)
            if not out.loss_finite:
                counts["skipped"] += 1
                continue
            stats["loss"].append(out.loss.item())
            if c.log_z == "batch":
                stats["log_z"].append(out.log_z)
            applied += 1
        applied, counts, stats, buffer_size = self._pool(applied, counts, stats)
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
               "buffer_size": buffer_size, "seconds": time.perf_counter() - started, **counts}
        for key, values in stats.items():
            row[key] = sum(values) if key == "sampled_tokens" else sum(values) / len(values)
        return row

    def _pool(self, applied: int, counts: dict, stats: dict) -> tuple[int, dict, dict, int]:
        """Applied micro-batches, behaviour counts, metric values and buffer sizes of all processes."""
        mine = (applied, counts, dict(stats), sum(len(s.buffer) for s in self.streams))
        parts = self.processes.gather(mine)
        if len(parts) == 1:
            return parts[0]
        pooled: dict[str, list] = defaultdict(list)
        for _, _, part, _ in parts:
            for key, values in part.items():
                pooled[key] += values
        return (sum(p[0] for p in parts), {k: sum(p[1][k] for p in parts) for k in counts}, pooled,
                sum(p[3] for p in parts))

    # ----------------------------------------------------------------------------------------- loop
    def train(self, resume: bool = False, until: int | None = None) -> list[dict]:
        """Train to ``config.steps`` (or to step ``until``: a later call continues from there, as EM's
        rounds do). ``resume`` first restores the run folder's latest checkpoint."""
        c = self.config
        main = self.processes.is_main
        until = c.steps if until is None else min(until, c.steps)
        resumed_from = self.restore() if resume else None
        if resume and resumed_from is None and main:
            print(f"No checkpoint in {self.store.root}; starting from step 0.", flush=True)
        if self.step == 0:
            self.seed_buffer()
        columns = METRIC_COLUMNS + list(self.task.training_metric_names)
        log = MetricsLog(self.run_dir, columns, resume_step=self.step if self.step else None,
                         tensorboard=c.tensorboard) if main else None
        rows = []
        previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._request_stop)
        bar = tqdm(total=c.steps, initial=self.step, desc="train", disable=not (c.progress and main),
                   dynamic_ncols=True)
        shown: dict[str, str] = {}
        try:
            while self.step < until:
                row = self.train_step()
                rows.append(row)
                if log is not None:
                    log.append(row)
                bar.update(1)
                shown.update({k: f"{row[k]:.3g}" for k in ("loss", "log_reward") if k in row})  # replay has no logR
                bar.set_postfix(shown)
                if self.step % c.checkpoint_every == 0 or self.step == until:
                    self.save()
                if self.processes.any(self._stop_requested):  # every process stops after the same step
                    if self.step % c.checkpoint_every:
                        self.save()
                    raise GfnlmError(f"Interrupted: checkpoint saved at step {self.step} in {self.store.root}; "
                                     "continue with --resume.")
        finally:
            bar.close()
            if log is not None:
                log.close()
            signal.signal(signal.SIGINT, previous)
        return rows

    def _request_stop(self, signum, frame) -> None:
        if self._stop_requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self._stop_requested = True
        if self.processes.is_main:
            print("\nStopping after this step (Ctrl-C again to abort without saving) ...", flush=True)

    # ----------------------------------------------------------------------------------------- state
    def save(self) -> Path | None:
        """Rank 0 writes the checkpoint (with every process's streams, gathered here); the others wait."""
        streams = sorted((s for part in self.processes.gather([s.state() for s in self.streams]) for s in part),
                         key=lambda s: s["index"])
        self._check_in_sync()
        path = None
        if self.processes.is_main:
            def write_state(p: Path) -> None:
                state = {"step": self.step, "bad_steps": self.bad_steps, "python_rng": streams[0]["python_rng"],
                         "streams": len(streams)}
                if len(streams) > 1:
                    state["stream_python_rng"] = {str(s["index"]): s["python_rng"] for s in streams[1:]}
                p.write_text(json.dumps(state))

            def write_text(text: str):
                return lambda p: p.write_text(text, encoding="utf-8")

            writers = {
                "adapter.safetensors": self.policy.save_adapter,
                "log_z.safetensors": lambda p: save_file({"values": self.log_z.values.detach().cpu()}, str(p)),
                "optimizer.pt": lambda p: torch.save(self.optimizer.state_dict(), p),
                "scheduler.pt": lambda p: torch.save(self.scheduler.state_dict(), p),
                "rng.safetensors": lambda p: save_file(
                    {"torch": torch.get_rng_state(), **{generator_key(s["index"]): s["generator"] for s in streams}},
                    str(p)),
                **{buffer_file(s["index"]): write_text(s["buffer"]) for s in streams},
                "state.json": write_state,
            }
            path = self.store.save(self.step, writers)
        self.processes.barrier()
        return path

    def _check_in_sync(self) -> None:
        """Processes must hold the same parameters (DDP keeps them so); fail loudly if they ever differ."""
        if not self.processes.distributed:
            return
        digest = hashlib.sha256()
        for p in self.policy.trainable_parameters() + list(self.log_z.parameters()):
            digest.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        digests = self.processes.gather(digest.hexdigest())
        if len(set(digests)) > 1:
            raise GfnlmError(f"The {len(digests)} processes hold different parameters at step {self.step}; "
                             "the gradient all-reduce did not keep them in step.")

    def restore(self) -> Path | None:
        latest = self.store.latest() if self.processes.is_main else None
        name = self.processes.broadcast(latest.name if latest is not None else None)
        if name is None:
            return None
        path = self.store.root / name
        problem = None if self.processes.is_main else CheckpointStore.verify(path)
        self.processes.agree(problem and f"Process {self.processes.rank} cannot read the checkpoint {path} "
                                         f"({problem}); put output_dir on a filesystem every process sees.")
        self.policy.load_adapter(path / "adapter.safetensors")
        with torch.no_grad():
            self.log_z.values.copy_(load_file(str(path / "log_z.safetensors"))["values"])
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location=self.device))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        generators = load_file(str(path / "rng.safetensors"))
        torch.set_rng_state(generators["torch"])
        state = json.loads((path / "state.json").read_text())
        self.step = int(state["step"])
        self.bad_steps = int(state["bad_steps"])
        saved = int(state.get("streams", 1))
        if saved == self.total_streams:
            for stream in self.streams:
                g = stream.index
                stream.generator.set_state(generators[generator_key(g)])
                stream.buffer.load(path / buffer_file(g))
                stream.set_python_rng(state["python_rng"] if g == 0 else state["stream_python_rng"][str(g)])
        else:
            self._restore_other_streams(path, saved)
        if self.processes.is_main:
            print(f"Resumed from {path} (step {self.step}).", flush=True)
        return path

    def _restore_other_streams(self, path: Path, saved: int) -> None:
        """A checkpoint of a different number of streams (processes x virtual_ranks): merge the saved
        buffers into one, give every stream a copy, and re-seed the streams. Training goes on, but not
        as an uninterrupted run would have."""
        merged = self.new_buffer()
        for g in range(saved):
            part = self.new_buffer()
            part.load(path / buffer_file(g))
            for key, items in part.items.items():
                for item in items:
                    merged.add(key, item)
        for stream in self.streams:
            stream.buffer = copy.deepcopy(merged)
            stream.reseed(self.config.seed, "resumed", self.step)
        if self.processes.is_main:
            print(f"The checkpoint holds {saved} sampling streams and this run has {self.total_streams} "
                  f"({self.processes.world_size} processes x virtual_ranks {self.config.virtual_ranks}): the replay "
                  "buffers are merged and the streams re-seeded, so training continues, but not exactly as the "
                  f"saved run would have. For an exact continuation use processes x virtual_ranks = {saved}.",
                  flush=True)
