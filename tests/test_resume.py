"""Checkpoints: exact resume, atomic writes, damaged checkpoints, the run lock."""

import json
import os

import pytest
import torch

from gfnlm.infra.checkpoint import CheckpointStore, RunLock
from gfnlm.infra.errors import GfnlmError
from tests.test_enumerable_training import EnumerableTask, make_trainer


def adapter_and_log_z(trainer):
    state = trainer.policy.adapter_state()
    state["log_z"] = trainer.log_z.values.detach().clone()
    return state


def buffer_rows(trainer):
    return {k: [(e.tokens, e.log_rewards[-1]) for e in v] for k, v in trainer.buffer.items.items()}


@pytest.mark.parametrize("conditional", ["", "0.5:1.0"])
def test_resume_reaches_the_same_parameters_as_an_uninterrupted_run(tmp_path, conditional):
    full = make_trainer(tmp_path / "full", "subtb", EnumerableTask(min_len=1), steps=12, conditional=conditional)
    full.train()

    # The same run killed during step 8; its last checkpoint is step 5, so steps 6-7 are redone.
    killed = make_trainer(tmp_path / "split", "subtb", EnumerableTask(min_len=1), steps=12, checkpoint_every=5,
                          conditional=conditional)
    real_step = killed.train_step

    def dying_step():
        if killed.step == 7:
            raise KeyboardInterrupt
        return real_step()

    killed.train_step = dying_step
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    torch.randn(3)  # move the global RNG: resume must restore it

    # A fresh trainer (new model, new task object) continues from the checkpoint.
    resumed = make_trainer(tmp_path / "split", "subtb", EnumerableTask(min_len=1), steps=12, checkpoint_every=5,
                           conditional=conditional)
    resumed.train(resume=True)
    want, got = adapter_and_log_z(full), adapter_and_log_z(resumed)
    assert want.keys() == got.keys()
    if conditional:  # the temperature embedding was trained and is part of the exact state
        assert want["temperature_embedding.weight"].abs().max() > 0
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert buffer_rows(full) == buffer_rows(resumed)
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


def test_damaged_checkpoints_are_detected_and_skipped(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    for step in (1, 2, 3):
        store.save(step, {"a.txt": lambda p, s=step: p.write_text(f"step {s}" * 100)})
    newest = store.list()[-1]
    with open(newest / "a.txt", "r+") as fh:  # truncate the newest file, as a crash mid-write would
        fh.truncate(10)
    with pytest.warns(UserWarning, match="checksum"):
        assert store.latest().name == "step-0000002"
    (store.list()[1] / "manifest.json").unlink()  # a checkpoint whose write never finished
    with pytest.warns(UserWarning):
        assert store.latest().name == "step-0000001"


def test_half_written_checkpoint_folders_are_invisible(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(1, {"a.txt": lambda p: p.write_text("x")})

    def crash(path):
        path.write_text("partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.save(2, {"a.txt": crash})
    assert [p.name for p in store.list()] == ["step-0000001"]
    assert store.latest().name == "step-0000001"


def test_only_the_last_checkpoints_are_kept(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for step in range(1, 6):
        store.save(step, {"a.txt": lambda p: p.write_text("x")})
    assert [p.name for p in store.list()] == ["step-0000004", "step-0000005"]


def test_run_lock_refuses_a_second_run_and_takes_over_stale_locks(tmp_path):
    lock = RunLock(tmp_path)
    lock.acquire()
    (tmp_path / "run.lock").write_text(str(os.getppid()))  # pretend a live process holds it
    with pytest.raises(GfnlmError, match="Another run"):
        RunLock(tmp_path).acquire()
    (tmp_path / "run.lock").write_text("999999999")  # a process that no longer exists
    other = RunLock(tmp_path)
    other.acquire()
    assert (tmp_path / "run.lock").read_text() == str(os.getpid())
    other.release()
    assert not (tmp_path / "run.lock").exists()


def test_a_run_folder_is_recognised_only_by_the_same_configuration(tmp_path, tiny_model_dir):
    """What benchmarks use to reuse or continue a run: config.yaml as a run writes it matches exactly the
    configuration that wrote it, and no other."""
    from gfnlm.runs import CONFIG_FILE, config_text, holds_run_of, resolve

    def spec(**options):
        return resolve("rng", None, {"model": str(tiny_model_dir), "output_dir": str(tmp_path), **options})

    assert not holds_run_of(tmp_path, spec())  # no config.yaml yet
    (tmp_path / CONFIG_FILE).write_text(config_text(spec(steps=5, task={"high": 20})))
    assert holds_run_of(tmp_path, spec(steps="5", task={"high": "20"}))  # the same values, given as text
    assert not holds_run_of(tmp_path, spec(steps=6, task={"high": 20}))
    assert not holds_run_of(tmp_path, spec(steps=5, task={"high": 21}))
