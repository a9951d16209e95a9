"""Several processes: real 2-process launches (torchrun, and once `accelerate launch`; gloo on CPU) of
`gfnlm` on a tiny model.

After training both ranks hold the same parameters, equal (to 1e-5) to those of one process that
draws the same trajectories (virtual_ranks 2 and twice the micro-batches); a run of 2 processes
resumes with 2 processes, with one process standing in for both, and (not exactly, but it runs) with
a different number of sampling streams. The continuation task is used because its reward runs the
same model with the adapter disabled, outside DDP's wrapper. EM and the TRL-trained baselines run
with every process taking part.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gfnlm.cli import main
from gfnlm.core.streams import Stream
from gfnlm.infra.distributed import Processes, my_range, process_generator, share
from gfnlm.infra.seeding import stream_seed

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = "the cat sat on\nwe went to the\na b c d\n"


def train_args(model_dir, run, prompts, steps, *extra):
    return ["train", "continuation", "--model", str(model_dir), "--output_dir", str(run), "--steps", str(steps),
            "--trajectories_per_prompt", "4", "--checkpoint_every", "2", "--progress", "false", "--evaluate", "false",
            "--lora_r", "4", "--lr", "0.01", "--warmup_steps", "0", "--replay_prob", "0.4",
            "--task.prompt_file", str(prompts), "--task.max_len", "6", *extra]


def launch(args, processes=2, launcher="torchrun"):
    """Run tests/distributed_worker.py (the gfnlm command) in ``processes`` processes under torchrun
    ("--" keeps options such as --run and --n from torchrun's own option parser), or `accelerate launch`
    as the README shows it for CPUs (--multi_gpu: DDP over gloo without GPUs)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    worker = str(ROOT / "tests" / "distributed_worker.py")
    command = {"torchrun": ["torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), worker, "--"],
               "accelerate": ["accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", worker]}
    proc = subprocess.run([sys.executable, "-m", *command[launcher], *args],
                          env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
    return proc


def checkpoint_state(run, name):
    folder = Path(run) / "checkpoints" / name
    state = load_file(str(folder / "adapter.safetensors"))
    state["log_z"] = load_file(str(folder / "log_z.safetensors"))["values"]
    return state


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def buffer_tokens(run, name, index):
    path = Path(run) / "checkpoints" / name / ("buffer.jsonl" if index == 0 else f"buffer-{index}.jsonl")
    return [json.loads(line)["tokens"] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text(PROMPTS)
    return path


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, tiny_model_dir, prompts):
    """4 steps in 2 processes (1 micro-batch each per step)."""
    run = tmp_path_factory.mktemp("two") / "run"
    launch(train_args(tiny_model_dir, run, prompts, 4))
    return run


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model_dir, prompts):
    """6 steps in 1 process that draws rank 0's micro-batch, then rank 1's (checkpoints 4 and 6 kept)."""
    run = tmp_path_factory.mktemp("one") / "run"
    assert main(train_args(tiny_model_dir, run, prompts, 6, "--grad_accum", "2", "--virtual_ranks", "2")) == 0
    return run


@pytest.mark.slow
def test_two_processes_equal_one_process_drawing_the_same_trajectories(two_processes, one_process, tmp_path,
                                                                        tiny_model_dir, prompts):
    rank0 = load_file(str(two_processes / "rank-0.safetensors"))
    rank1 = load_file(str(two_processes / "rank-1.safetensors"))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # DDP keeps the ranks identical
    saved = checkpoint_state(two_processes, "step-0000004")
    assert max_difference(saved, rank0) == 0
    assert max_difference(saved, checkpoint_state(one_process, "step-0000004")) < 1e-5
    assert max(float(v.abs().max()) for k, v in saved.items() if "lora_B" in k) > 1e-3  # training moved them
    for index in (0, 1):  # the same trajectories, in each rank's own buffer
        assert buffer_tokens(two_processes, "step-0000004", index) == buffer_tokens(one_process, "step-0000004", index)
    # Negative control: one stream drawing both micro-batches gives other trajectories, other parameters.
    other = tmp_path / "other"
    assert main(train_args(tiny_model_dir, other, prompts, 4, "--grad_accum", "2")) == 0
    assert max_difference(saved, checkpoint_state(other, "step-0000004")) > 1e-3
    # Only rank 0 wrote the log (each step once) and the checkpoints hold both ranks' streams.
    steps = [json.loads(line)["step"] for line in (two_processes / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    state = json.loads((two_processes / "checkpoints" / "step-0000004" / "state.json").read_text())
    assert state["streams"] == 2 and set(state["stream_python_rng"]) == {"1"}


@pytest.mark.slow
def test_accelerate_launch_runs_the_same_training(two_processes, tmp_path, tiny_model_dir, prompts):
    run = tmp_path / "accelerate"
    launch(train_args(tiny_model_dir, run, prompts, 4), launcher="accelerate")
    ranks = [load_file(run / f"rank-{r}.safetensors") for r in (0, 1)]
    assert max_difference(*ranks) < 1e-6
    assert max_difference(ranks[0], load_file(two_processes / "rank-0.safetensors")) < 1e-5  # = torchrun's run


@pytest.mark.slow
def test_temperature_conditional_policy_in_two_processes_equals_one(tmp_path, tiny_model_dir, prompts):
    """The temperature embedding is all-reduced like the LoRA weights, and each rank draws its own T."""
    conditional = ["--conditional_temperatures", "0.5:1.0", "--log_z", "batch"]
    two, one = tmp_path / "two", tmp_path / "one"
    launch(train_args(tiny_model_dir, two, prompts, 2, *conditional))
    assert main(train_args(tiny_model_dir, one, prompts, 2, "--grad_accum", "2", "--virtual_ranks", "2",
                           *conditional)) == 0
    saved = checkpoint_state(two, "step-0000002")
    assert float(saved["temperature_embedding.weight"].abs().max()) > 1e-3
    assert max_difference(saved, checkpoint_state(one, "step-0000002")) < 1e-5


@pytest.mark.slow
def test_resume_after_two_processes(two_processes, one_process, tmp_path, tiny_model_dir, prompts, capsys):
    want = checkpoint_state(one_process, "step-0000006")
    again, alone, fewer = (tmp_path / name for name in ("again", "alone", "fewer"))
    for run in (again, alone, fewer):
        shutil.copytree(two_processes, run)

    # 2 processes again, now with gradient checkpointing (under DDP; it changes no result beyond rounding)
    launch(train_args(tiny_model_dir, again, prompts, 6, "--resume", "--gradient_checkpointing", "true"))
    assert max_difference(checkpoint_state(again, "step-0000006"), want) < 1e-5
    rank0 = load_file(str(again / "rank-0.safetensors"))
    assert all(torch.equal(rank0[k], v) for k, v in load_file(str(again / "rank-1.safetensors")).items())
    steps = [json.loads(line)["step"] for line in (again / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]

    # One process stands in for both ranks: the same streams, so the same continuation.
    assert main(train_args(tiny_model_dir, alone, prompts, 6, "--resume", "--grad_accum", "2",
                           "--virtual_ranks", "2")) == 0
    assert max_difference(checkpoint_state(alone, "step-0000006"), want) < 1e-5

    # One process with one stream: the two buffers are merged and sampling re-seeded; training goes on.
    capsys.readouterr()
    assert main(train_args(tiny_model_dir, fewer, prompts, 6, "--resume")) == 0
    assert "buffers are merged" in capsys.readouterr().out
    state = json.loads((fewer / "checkpoints" / "step-0000006" / "state.json").read_text())
    assert state["step"] == 6 and state["streams"] == 1
    merged = {tuple(t) for t in buffer_tokens(fewer, "step-0000006", 0)}
    saved = {tuple(t) for i in (0, 1) for t in buffer_tokens(two_processes, "step-0000004", i)}
    assert len(merged & saved) > len(buffer_tokens(two_processes, "step-0000004", 0))  # rows of both ranks


@pytest.mark.slow
def test_rng_evaluation_and_sampling_are_split_over_two_processes(tmp_path, tiny_model_dir):
    run = tmp_path / "rng"
    assert main(["train", "rng", "--model", str(tiny_model_dir), "--output_dir", str(run), "--steps", "2",
                 "--trajectories_per_prompt", "4", "--progress", "false", "--evaluate", "false", "--lora_r", "4",
                 "--task.prompt", "numbers: 4, 7,", "--task.high", "20", "--task.eval_samples", "15"]) == 0
    launch(["eval", "rng", "--run", str(run)])
    result = json.loads((run / "eval_rng.json").read_text())
    assert result["policy"]["n"] == 15 and result["base"]["n"] == 15  # 8 drawn by rank 0, 7 by rank 1
    out = launch(["sample", "--run", str(run), "--n", "5"]).stdout
    assert len([line for line in out.splitlines() if line[:1] in "'\""]) == 5  # printed once, by rank 0


@pytest.mark.slow
def test_continuation_evaluation_split_over_two_processes_equals_one_process(two_processes, tmp_path):
    """Each process evaluates a block of the prompts, seeded per prompt: the gathered table is one process's."""
    one, two = tmp_path / "one", tmp_path / "two"
    for copy in (one, two):
        shutil.copytree(two_processes, copy)
    assert main(["eval", "continuation", "--run", str(one)]) == 0
    launch(["eval", "continuation", "--run", str(two)])
    a, b = (json.loads((run / "eval_continuation.json").read_text()) for run in (one, two))
    assert a["prompts"] == b["prompts"] == 3  # 2 prompts on rank 0, 1 on rank 1
    assert a["per_prompt"].keys() == b["per_prompt"].keys()
    for method, rows in a["per_prompt"].items():
        assert len(rows) == len(b["per_prompt"][method]) == 3
        for x, y in zip(rows, b["per_prompt"][method]):
            assert x.keys() == y.keys()
            assert all(x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-4) for k in x), method
    samples = [[json.loads(line)["completions"] for line in (run / "eval_continuation_samples.jsonl").open()]
               for run in (one, two)]
    assert samples[0] == samples[1]


@pytest.mark.slow
def test_arithmetic_evaluation_counts_every_process_share(tmp_path, tiny_model_dir):
    run = tmp_path / "arithmetic"
    assert main(["train", "arithmetic", "--model", str(tiny_model_dir), "--output_dir", str(run), "--steps", "1",
                 "--trajectories_per_prompt", "2", "--progress", "false", "--lora_r", "4", "--evaluate", "false",
                 "--task.train_size", "4", "--task.gold_size", "1", "--task.test_size", "3",
                 "--task.eval_questions", "3", "--task.eval_chains", "2", "--task.max_len", "12",
                 "--task.eval_batch_questions", "1", "--task.eval_methods", "gfn"]) == 0
    launch(["eval", "arithmetic", "--run", str(run)])  # 2 questions of each split on rank 0, 1 on rank 1
    results = json.loads((run / "eval_arithmetic.json").read_text())["results"]["gfn"]
    assert {split: r["questions"] for split, r in results.items()} == {"simple": 3, "hard": 3, "ood-5": 3}


@pytest.mark.slow
def test_em_and_its_trl_baselines_run_in_two_processes(tmp_path, tiny_model_dir):
    """EM (E-step by the trainer, M-step by TRL, data-parallel) and an evaluation that trains the supervised
    baseline with TRL and splits the test sentences: every process takes part, all hold the same adapters,
    rank 0 writes each file once."""
    from tests.test_classification import ROWS, em_args

    run = tmp_path / "em"
    # every fit kept, as in the one-process EM test: the likelihood's rise is EM's own effect, not the keep check's
    launch(em_args(tmp_path, tiny_model_dir, run, rounds=2, steps=4, extra=["--task.m_keep_only_if_better", "false"]))
    rounds = [json.loads(line) for line in (run / "em.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[-1]["label_log_likelihood_after"] > rounds[0]["label_log_likelihood_before"]
    for r in (1, 2):
        ranks = [load_file(run / f"likelihood-round-{r}-rank-{k}.safetensors") for k in (0, 1)]
        assert max_difference(*ranks) < 1e-6
        assert max_difference(ranks[0], load_file(run / f"likelihood-round-{r}.safetensors")) == 0
    assert max_difference(load_file(run / "rank-0.safetensors"), load_file(run / "rank-1.safetensors")) < 1e-6
    evaluation = json.loads((run / "eval_classification.json").read_text())
    assert set(evaluation["results"]) == {"zero_shot", "few_shot", "supervised", "gfn_e_step", "gfn_em"}
    assert evaluation["test_sentences"] == len(ROWS) and len(evaluation["examples"]) == min(8, len(ROWS))


@pytest.mark.slow
def test_em_in_two_processes_resumes_exactly_across_a_round_boundary(tmp_path, tiny_model_dir):
    from tests.test_classification import em_args

    full, cut = tmp_path / "full", tmp_path / "cut"
    extra = ["--evaluate", "false", "--checkpoint_every", "50"]
    launch(em_args(tmp_path, tiny_model_dir, full, rounds=2, steps=4, extra=extra))
    shutil.copytree(full, cut)  # as if the run died right after round 1's checkpoint
    shutil.rmtree(cut / "checkpoints" / "step-0000004")
    (cut / "likelihood-round-2.safetensors").unlink()
    launch(em_args(tmp_path, tiny_model_dir, cut, rounds=2, steps=4, extra=extra) + ["--resume"])
    for name in ("likelihood-round-2.safetensors", "checkpoints/step-0000004/adapter.safetensors"):
        assert max_difference(load_file(full / name), load_file(cut / name)) < 1e-6, name


@pytest.mark.slow
def test_infilling_with_its_sft_baseline_runs_in_two_processes(tmp_path, tiny_model_dir):
    from tests.test_infilling import OPTIONS, write_stories

    run = tmp_path / "infilling"
    launch(["train", "infilling", "--model", str(tiny_model_dir), "--output_dir", str(run), "--steps", "2",
            "--trajectories_per_prompt", "3", "--lora_r", "4", "--progress", "false", "--task.eval_samples", "2",
            "--task.sft_epochs", "1", "--task.eval_methods", "sft,gfn", "--data",
            str(write_stories(tmp_path / "stories.csv")), "--test_size", "4", *OPTIONS])
    rows = {r["method"]: r for r in json.loads((run / "eval_infilling.json").read_text())["rows"]}
    assert set(rows) == {"sft", "gfn"}


def test_streams_and_shares():
    assert stream_seed(7, 0) == 7  # stream 0 is a single process's stream
    seeds = {stream_seed(7, i) for i in range(1, 50)} | {stream_seed(8, i) for i in range(1, 50)}
    assert len(seeds) == 98 and 7 not in seeds
    a = Stream.create(0, 7, torch.device("cpu"), None)
    b = Stream.create(1, 7, torch.device("cpu"), None)
    assert a.rng.random() != b.rng.random()
    assert not torch.equal(torch.rand(4, generator=a.generator), torch.rand(4, generator=b.generator))
    cpu = torch.device("cpu")
    rank = Processes(cpu)
    first = torch.rand(4, generator=process_generator(7, cpu, rank))
    assert torch.equal(first, torch.rand(4, generator=torch.Generator().manual_seed(7)))  # rank 0: the run's seed
    rank.rank = 1
    assert not torch.equal(first, torch.rand(4, generator=process_generator(7, cpu, rank)))

    class Rank(Processes):
        def __init__(self, rank, world):
            super().__init__(torch.device("cpu"))
            self.rank, self.world_size = rank, world

    assert [share(10, Rank(r, 3)) for r in range(3)] == [4, 3, 3]
    assert [share(1, Rank(r, 2)) for r in range(2)] == [1, 0]
    for n, world in ((10, 3), (1, 2), (7, 7), (0, 2), (5, 1)):  # the blocks cover 0..n-1 once, in rank order
        assert [i for r in range(world) for i in my_range(n, Rank(r, world))] == list(range(n))


def error_of(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gfnlm: error: ") and len(err.splitlines()) == 1
    return err


def test_clear_errors_for_multi_process_options(capsys, monkeypatch, tmp_path):
    assert "multiple of virtual_ranks" in error_of(capsys, ["train", "rng", "--grad_accum", "3",
                                                            "--virtual_ranks", "2"])
    if not torch.cuda.is_available():
        assert "load_in_4bit" in error_of(capsys, ["train", "rng", "--load_in_4bit", "true"])
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # `accelerate launch --cpu --num_processes 2`: one process
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    assert "started a single process" in error_of(capsys, ["train", "rng", "--output_dir", str(tmp_path / "r")])
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under a launcher: a fixed device cannot be shared
    err = error_of(capsys, ["train", "rng", "--device", "cuda:1", "--output_dir", str(tmp_path / "r")])
    assert "cannot be shared by 2 processes" in err
