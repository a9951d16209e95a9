"""Training throughput on the embedded model: steps/s, sampled tokens/s, sequences/s and peak memory.

Two configurations, each measured in its own process (so peak memory is its own):

  documented  8 trajectories per step, prompts cut to their first 30 tokens, up to 20 generated
              tokens, LoRA r=16 on every attention and MLP projection, one optimizer step per batch.
  reference   the exact set-up of ../shared/docs/reference-throughput.md (the paper's code on this
              CPU): the 40 listed OpenWebText prompts in order, one per step, n = 8 and n = 16,
              up to 30 tokens ending with ".", LoRA r=64 alpha=16, lr 1e-4, 2/3 of batches sampled at
              a temperature from U(0.5, 2), SubTB lambda=1, no replay. Our figure is divided by theirs.

A step is sample + reward of every prefix + policy scores + loss + backward + optimizer step, as there.

  python benchmarks/throughput.py [--steps 12] [--prompts ../shared/data/reference/openwebtext/prompts.txt]

Several processes (DDP through Accelerate, gloo on CPU): ``--processes N`` measures each configuration
in 1 process and in N processes launched by torchrun, every process drawing its own batch of n
trajectories per step (so N processes make N x n per step), and reports trajectories per second.

  python benchmarks/throughput.py --processes 2 --configs documented --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
DEFAULT_PROMPTS = ROOT.parent / "shared" / "data" / "reference" / "openwebtext" / "prompts.txt"
REFERENCE_LINES = [331, 747, 448, 527, 760, 631, 571, 271, 411, 98, 78, 679, 781, 371, 489, 508, 700, 204, 604, 333,
                   338, 94, 701, 717, 818, 244, 716, 283, 951, 9, 576, 115, 613, 841, 706, 791, 413, 348, 205, 634]
# The reference code on this CPU: median seconds per step and peak RSS in GiB (reference-throughput.md).
REFERENCE = {8: (13.45, 7.0), 16: (17.37, 11.9)}

CONFIGS = {
    "documented": dict(dtype="float32", n=8, prompt_tokens=30, max_len=20, lora_r=16, lora_alpha=32, lr=1e-4,
                       tempered_prob=0.5),
    "reference-n8": dict(dtype="float32", n=8, prompt_tokens=0, max_len=30, lora_r=64, lora_alpha=16, lr=1e-4,
                         tempered_prob=2 / 3),
    "reference-n16": dict(dtype="float32", n=16, prompt_tokens=0, max_len=30, lora_r=64, lora_alpha=16, lr=1e-4,
                          tempered_prob=2 / 3),
    # Not part of the side-by-side ratio (the reference runs float32): the same set-up with bfloat16
    # base weights (LoRA weights and every log-softmax stay float32), for CPUs with native bf16.
    "reference-n8-bf16": dict(n=8, prompt_tokens=0, max_len=30, lora_r=64, lora_alpha=16, lr=1e-4,
                              tempered_prob=2 / 3, dtype="bfloat16"),
}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark so the training peak excludes model loading (Linux only)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def current_peak_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def measure(name: str, steps: int, prompts_file: Path) -> dict | None:
    """Run one configuration in this process (one of several under torchrun) and return its figures."""
    import torch

    from gfnlm.core.action_space import ActionSpace
    from gfnlm.core.config import TrainConfig
    from gfnlm.core.task import Task, TaskPrompt
    from gfnlm.core.trainer import Trainer
    from gfnlm.infra.distributed import start
    from gfnlm.model.loading import load_base_model
    from gfnlm.model.policy import LoraSettings, Policy
    from gfnlm.targets import LMLikelihood

    spec = CONFIGS[name]
    torch.manual_seed(0)
    processes = start("cpu")  # one process, or DDP over gloo under torchrun
    model, tokenizer = load_base_model("embedded", dtype=spec["dtype"], device=processes.device)
    policy = Policy(model, tokenizer, LoraSettings(spec["lora_r"], spec["lora_alpha"], "all-linear"), seed=0)
    lines = prompts_file.read_text(encoding="utf-8").splitlines()
    prompts = []
    for i, line in enumerate(REFERENCE_LINES):
        ids = tuple(tokenizer.encode(lines[line], add_special_tokens=False))
        if spec["prompt_tokens"]:
            ids = ids[: spec["prompt_tokens"]]
        prompts.append(TaskPrompt(lines[line], ids, f"p{i}"))
    period = tokenizer.encode(".", add_special_tokens=False)
    # As in the reference: no newlines, tabs or special tokens inside a sentence.
    banned = [i for i in range(len(tokenizer)) if any(c in tokenizer.decode([i]) for c in "\n\t\r")]
    banned += [t for t in tokenizer.all_special_ids if t not in period]

    class Sentences(Task):
        name, Config = "sentences", dict

        def setup(self, tokenizer, vocab_size):
            pass

        def train_prompts(self):
            return prompts

        def action_space(self):
            return ActionSpace(policy.vocab_size, period, min_len=1, max_len=spec["max_len"], banned_tokens=banned)

        def target(self, policy):
            return LMLikelihood(policy, period)

    config = TrainConfig(objective="subtb", subtb_lambda=1.0, steps=steps, trajectories_per_prompt=spec["n"],
                         lr=spec["lr"], warmup_steps=20, replay_prob=0.0, tempered_prob=spec["tempered_prob"],
                         tempered_min=0.5, tempered_max=2.0, checkpoint_every=10**9, progress=False)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, Sentences({}), policy, Path(run_dir), processes)
        reset = reset_peak_rss()
        rows = []
        for step in range(steps):
            trainer.prompts = [prompts[step % len(prompts)]]  # one prompt per step, in the listed order
            started = time.perf_counter()
            row = trainer.train_step()
            row["wall"] = time.perf_counter() - started
            rows.append(row)
            if processes.is_main:
                print(f"  {name} step {step + 1}/{steps}: {row['wall']:.2f} s, {row['sampled_tokens']} tokens "
                      f"(all processes)", flush=True)
    if not processes.is_main:
        return None
    timed = rows[2:]  # the first steps warm up allocators and kernels (the reference median also skips them)
    seconds = statistics.median(r["wall"] for r in timed)
    total_wall = sum(r["wall"] for r in timed)
    world = processes.world_size
    return {
        "config": name, **spec, "processes": world, "steps_timed": len(timed), "median_s_per_step": seconds,
        "steps_per_s": 1 / seconds, "sequences_per_s": world * spec["n"] / seconds,
        "sampled_tokens_per_s": sum(r["sampled_tokens"] for r in timed) / total_wall,
        "mean_prompt_tokens": statistics.mean(len(p.ids) for p in prompts),
        "mean_generated_tokens": sum(r["length"] for r in timed) / len(timed),
        "peak_rss_gib": peak_rss_gib(), "training_peak_rss_gib": current_peak_gib() if reset else float("nan"),
        "torch_threads": torch.get_num_threads(),
    }


def run_one(name: str, args, processes: int = 1) -> dict | None:
    """Measure one configuration in fresh processes (torchrun when more than one); None if it failed."""
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command = launcher + [__file__, "--one", name, "--steps", str(args.steps), "--prompts", str(args.prompts)]
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          check=False)
    lines = proc.stdout.splitlines()
    print("\n".join(line for line in lines if not line.startswith("RESULT ")), flush=True)
    if proc.returncode != 0:
        print(f"{name} failed with exit code {proc.returncode}", file=sys.stderr)
        return None
    return json.loads(next(line for line in lines if line.startswith("RESULT "))[7:])


def compare_processes(names: list[str], args) -> int:
    """Trajectories per second of each configuration in 1 process and in ``args.processes`` processes."""
    results = []
    for name in names:
        for count in (1, args.processes):
            print(f"{name}: measuring {args.steps} steps in {count} fresh process(es) ...", flush=True)
            result = run_one(name, args, count)
            if result is None:
                return 1
            results.append(result)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "throughput_processes.json").write_text(json.dumps(results, indent=2))
    print("\n| config | processes | torch threads each | trajectories per step | median s/step | trajectories/s "
          "| sampled tok/s | peak RSS GiB (rank 0) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['config']} | {r['processes']} | {r['torch_threads']} | {r['processes'] * r['n']} | "
              f"{r['median_s_per_step']:.2f} | {r['sequences_per_s']:.2f} | {r['sampled_tokens_per_s']:.1f} | "
              f"{r['peak_rss_gib']:.2f} |")
    print(f"\nSaved {OUT / 'throughput_processes.json'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="steps per configuration (the first 2 are not timed)")
    parser.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    parser.add_argument("--processes", type=int, default=0,
                        help="also measure in this many processes (torchrun, DDP over gloo) beside 1 process")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one configuration, print JSON
    args = parser.parse_args()
    if args.steps < 3:
        parser.error("--steps must be at least 3 (two warm-up steps are not timed)")
    if not args.prompts.is_file():
        parser.error(f"prompt file {args.prompts} not found (the reference OpenWebText prompts)")
    if args.one:
        result = measure(args.one, args.steps, args.prompts)
        if result is not None:  # rank 0 of several processes, or the only one
            print("RESULT " + json.dumps(result), flush=True)
        return 0
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}")
    if args.processes:
        return compare_processes(names, args)
    results = []
    for name in names:
        print(f"{name}: measuring {args.steps} steps in a fresh process ...", flush=True)
        result = run_one(name, args)
        if result is None:
            return 1
        results.append(result)
    for r in results:
        if r["config"] in ("reference-n8", "reference-n16"):
            ref_seconds, ref_gib = REFERENCE[r["n"]]
            r["reference_s_per_step"], r["reference_peak_rss_gib"] = ref_seconds, ref_gib
            r["speedup_vs_reference"] = ref_seconds / r["median_s_per_step"]
            r["memory_fraction_of_reference"] = r["peak_rss_gib"] / ref_gib
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "throughput.json").write_text(json.dumps(results, indent=2))
    print("\n| config | dtype | n | s/step | steps/s | seq/s | sampled tok/s | peak RSS GiB (training) | vs reference |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        versus = (f"{r['speedup_vs_reference']:.2f}x faster, {r['memory_fraction_of_reference']:.2f}x memory"
                  if "speedup_vs_reference" in r else "-")
        print(f"| {r['config']} | {r['dtype']} | {r['n']} | {r['median_s_per_step']:.2f} | {r['steps_per_s']:.3f} | "
              f"{r['sequences_per_s']:.2f} | {r['sampled_tokens_per_s']:.1f} | {r['peak_rss_gib']:.2f} "
              f"({r['training_peak_rss_gib']:.2f}) | {versus} |")
    print(f"\nSaved {OUT / 'throughput.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
