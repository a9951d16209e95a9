"""benchmarks/job_pool.py: runs K at a time in spawned processes, each with its share of the cores."""

import math
import os
import sys
from pathlib import Path

import pytest
import torch

from gfnlm.infra.errors import GfnlmError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from job_pool import run_jobs, share_cores  # noqa: E402


def test_a_process_takes_its_share_of_the_cores(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    before = torch.get_num_threads()
    try:
        share_cores(1)
        # torch in this process, and the environment its subprocesses (a training run) inherit
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_results_come_in_order_in_one_process_or_in_several():
    arguments = [(2, 10), (3, 2), (5, 1)]
    assert list(run_jobs(pow, arguments, 1)) == list(run_jobs(pow, arguments, 2)) == [1024, 9, 5]


@pytest.mark.slow
def test_each_worker_gets_its_share_of_the_cores():
    share = str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert list(run_jobs(os.getenv, [("OMP_NUM_THREADS",)] * 2, 2)) == [share, share]


@pytest.mark.slow
def test_a_failed_job_is_raised_after_the_ones_before_it():
    results = run_jobs(math.sqrt, [(4.0,), (-1.0,), (9.0,)], 2)
    assert next(results) == 2.0
    with pytest.raises(ValueError):
        next(results)


def test_workers_must_be_positive():
    with pytest.raises(GfnlmError, match="at least 1"):
        list(run_jobs(pow, [(2, 2)], 0))
