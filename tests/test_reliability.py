"""Runs survive SIGKILL at any moment (also mid-checkpoint) and non-finite rewards.

The killed runs are real child processes running the `gfnlm train` command on a tiny model; each is
killed with SIGKILL at a random moment and continued with --resume until it finishes. The final
parameters must equal those of an uninterrupted run bit for bit.

The children are forked from a fork server that imported torch and gfnlm once, so they start in
milliseconds. They are not forked from the test process itself: by now it has threads (progress-bar
monitors, torch's pools) that may hold a lock at the moment of the fork, and a child that inherits
a held lock waits forever.
"""

import math
import multiprocessing
import os
import random
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

import gfnlm.infra.checkpoint as checkpoint_module
from gfnlm.infra.checkpoint import CheckpointStore
from gfnlm.infra.errors import GfnlmError
from tests.test_enumerable_training import EnumerableTask, make_trainer

KILLS = 24
CHILD_TIMEOUT = 300  # seconds: a child that runs longer is stuck (a whole run takes a few seconds)
PROCESSES = multiprocessing.get_context("forkserver")
PROCESSES.set_forkserver_preload(["tests.test_reliability", "gfnlm.cli", "gfnlm.core.trainer", "peft",
                                   "transformers.models.llama.modeling_llama"])


def train_args(tiny_model_dir, run):
    return ["train", "rng", "--model", str(tiny_model_dir), "--output_dir", str(run), "--steps", "40",
            "--trajectories_per_prompt", "8", "--checkpoint_every", "3", "--progress", "false", "--evaluate", "false",
            "--lora_r", "4", "--task.prompt", "numbers: 4, 7,", "--task.high", "20", "--resume"]


def child(args, slow_checkpoint_marker):
    import sys

    sys.stdout = sys.stderr = open(os.devnull, "w")
    if slow_checkpoint_marker:  # make checkpoint writes slow and announce them, so the kill lands inside one
        real = checkpoint_module.sha256

        def slow(path):
            open(slow_checkpoint_marker, "w").close()
            time.sleep(0.3)
            return real(path)

        checkpoint_module.sha256 = slow
    from gfnlm.cli import main

    os._exit(main(args))


def final_state(run):
    latest = CheckpointStore(run).latest()
    return latest.name, load_file(str(latest / "adapter.safetensors")), load_file(str(latest / "log_z.safetensors"))


def start_child(tiny_model_dir, run, slow_checkpoint_marker=None):
    p = PROCESSES.Process(target=child, args=(train_args(tiny_model_dir, run), slow_checkpoint_marker))
    p.start()
    return p


def join_or_fail(p):
    p.join(CHILD_TIMEOUT)
    if p.is_alive():
        p.kill()
        pytest.fail(f"a training child ran longer than {CHILD_TIMEOUT} s")


def run_uninterrupted(tiny_model_dir, run) -> float:
    """Run to the end without interruption; return the wall time."""
    warm_up = PROCESSES.Process(target=int)  # the fork server's own start (seconds) is not timed
    warm_up.start()
    join_or_fail(warm_up)
    started = time.perf_counter()
    p = start_child(tiny_model_dir, run)
    join_or_fail(p)
    assert p.exitcode == 0
    return time.perf_counter() - started


def run_with_kills(tiny_model_dir, run, kills_wanted: int, full_time: float, seed: int = 0) -> tuple[int, int]:
    """SIGKILL a run at random moments (every fourth time inside a checkpoint write), resuming it each
    time, until ``kills_wanted`` kills have landed; then let it finish. Returns (kills, mid-checkpoint kills)."""
    rng = random.Random(seed)
    kills = mid_checkpoint = 0
    while True:
        marker = run.parent / f"{run.name}-writing-{kills}"
        slow = kills % 4 == 3
        p = start_child(tiny_model_dir, run, str(marker) if slow else None)
        if kills < kills_wanted:
            if slow:
                deadline = time.monotonic() + CHILD_TIMEOUT
                while p.is_alive() and not marker.exists() and time.monotonic() < deadline:
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, 0.25))
            else:
                time.sleep(rng.uniform(0.0, full_time))
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                kills += 1
                mid_checkpoint += slow and marker.exists()
        join_or_fail(p)
        if p.exitcode == 0:
            if kills >= kills_wanted:
                return kills, mid_checkpoint
            # finished before being killed: start over so that every trial interrupts a live run
            for path in sorted(run.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()


def same_final_state(run_a, run_b) -> bool:
    a, b = final_state(run_a), final_state(run_b)
    return a[0] == b[0] and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                for x, y in zip(a[1:], b[1:]))


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_result(tmp_path, tiny_model_dir):
    full_time = run_uninterrupted(tiny_model_dir, tmp_path / "uninterrupted")
    kills, mid_checkpoint = run_with_kills(tiny_model_dir, tmp_path / "killed", KILLS, full_time)
    assert kills >= KILLS and mid_checkpoint >= KILLS // 4 - 1
    assert final_state(tmp_path / "killed")[0] == "step-0000040"
    assert same_final_state(tmp_path / "uninterrupted", tmp_path / "killed")


class FlakyTarget:
    """A target whose rewards are NaN on chosen calls."""

    def __init__(self, inner, bad_calls):
        self.inner, self.bad_calls, self.calls = inner, bad_calls, 0

    def log_rewards(self, traj):
        self.calls += 1
        rewards = self.inner.log_rewards(traj)
        return torch.full_like(rewards, math.nan) if self.calls in self.bad_calls else rewards


def test_a_nan_reward_batch_is_skipped_counted_and_not_stored(tmp_path):
    trainer = make_trainer(tmp_path, "subtb", EnumerableTask(), steps=12)
    trainer.config.replay_prob = 0.0
    trainer.target = FlakyTarget(trainer.target, bad_calls={3, 7})
    rows = trainer.train()
    assert [r["skipped"] for r in rows].count(1) == 2 and len(rows) == 12
    assert all(math.isfinite(r["grad_norm"]) or r["skipped"] for r in rows)
    for items in trainer.buffer.items.values():
        assert all(not math.isnan(it.log_rewards[-1]) for it in items)
    for p in trainer.policy.trainable_parameters():
        assert torch.isfinite(p).all()


def test_rewards_that_stay_nan_stop_training_with_a_clear_message(tmp_path):
    trainer = make_trainer(tmp_path, "subtb", EnumerableTask(), steps=50)
    trainer.config.replay_prob = 0.0
    trainer.target = FlakyTarget(trainer.target, bad_calls=set(range(1, 100)))
    with pytest.raises(GfnlmError, match="non-finite"):
        trainer.train()


def test_sampling_shrinks_its_batch_when_memory_runs_out(monkeypatch):
    import gfnlm.inference.sampling as sampling
    from gfnlm.core.action_space import ActionSpace
    from tests.conftest import tiny_llama

    real, sizes = sampling.sample_trajectories, []

    def limited(model, space, prompts, keys, index, **kw):
        sizes.append(len(index))
        if len(index) > 8:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory")
        return real(model, space, prompts, keys, index, **kw)

    monkeypatch.setattr(sampling, "sample_trajectories", limited)
    space = ActionSpace(6, [4], min_len=1, max_len=3, banned_tokens=[5])
    with pytest.warns(UserWarning, match="Out of memory"):
        rows = sampling.sample_completions(tiny_llama(6), space, (5,), 40, batch_size=32, progress=False)
    assert len(rows) == 40 and sizes[:3] == [32, 16, 8] and max(sizes[3:]) <= 8


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path, tiny_model_dir):
    run_uninterrupted(tiny_model_dir, tmp_path / "uninterrupted")
    run = tmp_path / "interrupted"
    p = start_child(tiny_model_dir, run)
    deadline = time.monotonic() + CHILD_TIMEOUT
    while p.is_alive() and CheckpointStore(run).latest() is None and time.monotonic() < deadline:
        time.sleep(0.005)  # until training (and its handler) has started
    os.kill(p.pid, signal.SIGINT)
    join_or_fail(p)
    assert p.exitcode == 2  # "Interrupted: checkpoint saved at step N ...; continue with --resume."
    saved = CheckpointStore(run).latest()
    assert saved is not None and saved.name != "step-0000040"
    assert not (run / "run.lock").exists()  # a clean exit releases the run lock
    assert run_uninterrupted(tiny_model_dir, run) > 0  # --resume finishes the run
    assert same_final_state(tmp_path / "uninterrupted", run)
