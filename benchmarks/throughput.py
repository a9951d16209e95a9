"""Training throughput on the embedded model: steps/s, sampled tokens/s, sequences/s and peak memory.

Configurations, each measured in its own process (so peak memory is its own):

  documented  8 trajectories per step, prompts cut to their first 30 tokens, up to 20 generated
              tokens, LoRA r=16 on every attention and MLP projection, one optimizer step per batch.
  reference   the exact set-up of ../shared/docs/reference-throughput.md (the paper's code on this
              CPU): the 40 listed OpenWebText prompts in order, one per step, n = 8 and n = 16,
              up to 30 tokens ending with ".", LoRA r=64 alpha=16, lr 1e-4, 2/3 of batches sampled at
              a temperature from U(0.5, 2), SubTB lambda=1, no replay. Our figure is divided by theirs.

A step is sample + reward of every prefix + policy scores + loss + backward + optimizer step, as there.

  python benchmarks/throughput.py [--steps 12] [--configs ...] [--prompts PROMPTS_FILE]

(PROMPTS_FILE: the reference's OpenWebText prompts, by default ../shared/data/reference/openwebtext/prompts.txt.)

Every configuration is saved to benchmarks/out/throughput/<config>[-p<processes>].json the moment it
finishes; a later invocation reuses it when its settings (configuration, steps, prompt file, git commit of
the code, CPU, OMP_NUM_THREADS) match and the code has no uncommitted changes, unless --fresh. A failed
configuration is named and makes the exit code 1; the others still count.

The reference side by side: ``--reference-kit ../shared/reference-kit`` also runs the paper's code on this
machine (its setup.sh first when /tmp/gfn-ref-kit.env is missing, then run.sh N STEPS for each reference n
measured; saved as reference-kit-n<N>.json) and divides by it. Without it the ratios divide by a stored
figure measured on another machine with the same avx512_bf16 flag, which the output says.

  python benchmarks/throughput.py --configs reference-n8,reference-n16 --reference-kit ../shared/reference-kit

Scaling (``--scaling``): s/step and training peak memory against trajectories per step and maximum length
at the reference set-up, and the prefix reward's cost against the answer length |Y|; each point saved as
it comes, one figure written to docs/results/throughput_scaling.png. 6 steps per point by default.

  python benchmarks/throughput.py --scaling

Several processes (DDP through Accelerate, gloo on CPU): ``--processes N`` measures each configuration
in 1 process and in N processes launched by torchrun, every process drawing its own batch of n
trajectories per step (so N processes make N x n per step), and reports trajectories per second.

  python benchmarks/throughput.py --processes 2 --configs documented --steps 6
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from throughput_measure import UNTIMED_STEPS, train_in_fresh_process
from throughput_reference import STORED, kit_settings, ratios, run_kit, stored_reference
from throughput_saved import (
    ROOT,
    SAVED,
    code_commit,
    cpu_info,
    describe_cpu,
    file_digest,
    machine_settings,
    saved_or_measured,
)

DEFAULT_PROMPTS = ROOT.parent / "shared" / "data" / "reference" / "openwebtext" / "prompts.txt"
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
COMPARED = {"reference-n8": 8, "reference-n16": 16}  # the configurations divided by the reference's figure
YES = {True: "yes", False: "no"}


def measure_ours(names: list[str], counts: tuple[int, ...], steps: int, prompts: Path,
                 fresh: bool) -> tuple[list[dict], list[str]]:
    """Each configuration in each process count, saved or reused one by one; (results, failed labels)."""
    common = {"steps": steps, "prompts": str(prompts.resolve()), "prompts_sha256": file_digest(prompts),
              "git_commit": code_commit(), **machine_settings()}
    results, failed = [], []
    for name in names:
        for count in counts:
            label = name if count == 1 else f"{name}-p{count}"
            print(f"{label}: {steps} steps in {count} fresh process(es) ...", flush=True)
            settings = {"config": CONFIGS[name], "processes": count, **common}
            result, how = saved_or_measured(
                SAVED / f"{label}.json", settings,
                partial(train_in_fresh_process, name, CONFIGS[name], steps, prompts, count), fresh)
            if result is None:
                failed.append(label)
            else:
                print(f"{label}: {result['median_s_per_step']:.2f} s/step ({how})", flush=True)
                results.append(result)
    return results, failed


def reference_figures(names: list[str], ours: list[dict], kit: Path | None, steps: int, cpu: dict,
                      fresh: bool) -> tuple[dict[int, dict], list[str]]:
    """The reference's figure for each compared n: run by the kit with our run's torch threads (saved or
    reused like ours), or stored."""
    figures, failed = {}, []
    threads = {r["n"]: r["torch_threads"] for r in ours if r["config"] in COMPARED}
    for n in sorted({COMPARED[name] for name in names if name in COMPARED}):
        if kit is None:
            stored = stored_reference(n, cpu["avx512_bf16"])
            if stored is not None:
                figures[n] = stored
            continue
        print(f"reference kit: n={n}, {steps} steps (run.sh) ...", flush=True)
        result, how = saved_or_measured(SAVED / f"reference-kit-n{n}.json",
                                        {**kit_settings(kit, n, steps, threads.get(n)), **machine_settings()},
                                        partial(run_kit, kit, n, steps, threads.get(n), cpu), fresh)
        if result is None:
            failed.append(f"reference-kit-n{n}")
        else:
            print(f"reference kit: n={n} {result['median_s_per_step']:.2f} s/step ({how})", flush=True)
            figures[n] = result
    return figures, failed


def print_results(results: list[dict], references: dict[int, dict], cpu: dict, kit: Path | None) -> None:
    print(f"\nCPU: {describe_cpu(cpu)}")
    print("\n| config | dtype | torch threads | n | s/step | steps/s | seq/s | sampled tok/s | "
          "peak RSS GiB (training) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['config']} | {r['dtype']} | {r['torch_threads']} | {r['n']} | {r['median_s_per_step']:.2f} | "
              f"{r['steps_per_s']:.3f} | {r['sequences_per_s']:.2f} | {r['sampled_tokens_per_s']:.1f} | "
              f"{r['peak_rss_gib']:.2f} ({r['training_peak_rss_gib']:.2f}) |")
    compared = [r for r in results if r["config"] in COMPARED]
    if not compared:
        return
    print("\n| config | ours s/step (steps) | reference s/step (steps) | reference torch threads | ours/reference "
          "s/step | x faster | peak RSS GiB ours / reference | ours/reference peak memory |")
    print("|---|---|---|---|---|---|---|---|")
    for r in compared:
        ref = references.get(r["n"])
        if ref is None:
            print(f"| {r['config']} | {r['median_s_per_step']:.2f} | - | - | - | - | - | - |")
            continue
        q = ratios(r, ref)
        print(f"| {r['config']} | {q['ours_s_per_step']:.2f} ({q['steps'][0]}-{q['steps'][1]}) | "
              f"{ref['median_s_per_step']:.2f} ({ref['steps'][0]}-{ref['steps'][1]}, {ref['source']}) | "
              f"{ref.get('torch_threads') or '?'} | {q['s_per_step_ratio']:.2f} | {q['x_faster']:.2f}x | "
              f"{r['peak_rss_gib']:.2f} / {ref['peak_rss_gib']:.2f} | {q['peak_memory_ratio']:.2f} |")
    print("\nOur s/step in the ratios: our median over the steps the reference timed, as far as our run goes (one "
          "prompt per step in the same order; step time follows prompt length). Peak RSS includes model loading "
          "on both sides.")
    if kit is not None:
        print(f"The reference was run by {kit} on this machine, in this invocation or a saved earlier one.")
        return
    stored_cpu = STORED[cpu["avx512_bf16"]]["cpu"]
    print(f"The reference figures are STORED, not measured beside this run: they come from {stored_cpu} (this CPU "
          f"has avx512_bf16: {YES[cpu['avx512_bf16']]}); for a side-by-side ratio use --reference-kit.")
    for r in compared:
        if r["n"] not in references:
            print(f"No stored reference figure for n = {r['n']} on {stored_cpu}: no ratio for {r['config']}.")


def print_processes(results: list[dict], cpu: dict) -> None:
    print(f"\nCPU: {describe_cpu(cpu)}")
    print("\n| config | dtype | processes | torch threads each | trajectories per step | median s/step | "
          "trajectories/s | sampled tok/s | peak RSS GiB (rank 0) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['config']} | {r['dtype']} | {r['processes']} | {r['torch_threads']} | {r['processes'] * r['n']} | "
              f"{r['median_s_per_step']:.2f} | {r['sequences_per_s']:.2f} | {r['sampled_tokens_per_s']:.1f} | "
              f"{r['peak_rss_gib']:.2f} |")


def scaling(steps: int, prompts: Path, fresh: bool, cpu: dict) -> list[str]:
    from throughput_scaling import plot, print_tables, sweep

    training, rewards, failed = sweep(CONFIGS["reference-n8"], steps, prompts, fresh)
    print(f"\nCPU: {describe_cpu(cpu)}; float32, LoRA r=64; {steps} steps per point, the first {UNTIMED_STEPS} "
          f"untimed")
    print_tables(training, rewards)
    threads = sorted({r["torch_threads"] for r in [*training.values(), *rewards.values()]})
    figure = plot(training, rewards, f"gfnlm {code_commit()[:12]}, {describe_cpu(cpu)}, torch threads "
                                     f"{'/'.join(map(str, threads))}, float32, LoRA r=64, {steps} steps per point")
    print(f"\nSaved {figure}")
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="steps per configuration (the first 2 are not timed); "
                                                  "default 12, 6 per point with --scaling")
    parser.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    parser.add_argument("--processes", type=int, default=0,
                        help="also measure in this many processes (torchrun, DDP over gloo) beside 1 process")
    parser.add_argument("--reference-kit", type=Path,
                        help="run the reference code with this kit (../shared/reference-kit) beside ours")
    parser.add_argument("--scaling", action="store_true", help="the scaling sweep instead of the configurations")
    parser.add_argument("--fresh", action="store_true", help="measure again even where a saved result matches")
    args = parser.parse_args()
    steps = args.steps or (6 if args.scaling else 12)
    if steps <= UNTIMED_STEPS:
        parser.error(f"--steps must be at least {UNTIMED_STEPS + 1} (the first {UNTIMED_STEPS} steps are not timed)")
    if not args.prompts.is_file():
        parser.error(f"prompt file {args.prompts} not found (the reference OpenWebText prompts)")
    if args.scaling and (args.processes or args.reference_kit):
        parser.error("--scaling runs alone (without --processes or --reference-kit)")
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}")
    if args.reference_kit:
        if not (args.reference_kit / "run.sh").is_file():
            parser.error(f"{args.reference_kit} is not the reference kit (no run.sh)")
        if not any(n in COMPARED for n in names):
            parser.error(f"--reference-kit needs one of {list(COMPARED)} in --configs")
        if steps <= 3:
            parser.error("--steps must be at least 4 with --reference-kit (the kit does not time steps 0-2)")
    cpu = cpu_info()

    if args.scaling:
        failed = scaling(steps, args.prompts, args.fresh, cpu)
    elif args.processes:
        results, failed = measure_ours(names, (1, args.processes), steps, args.prompts, args.fresh)
        print_processes(results, cpu)
    else:
        results, failed = measure_ours(names, (1,), steps, args.prompts, args.fresh)
        references, kit_failed = reference_figures(names, results, args.reference_kit, steps, cpu, args.fresh)
        failed += kit_failed
        print_results(results, references, cpu, args.reference_kit)
    print(f"\nResults saved one by one under {SAVED}")
    if failed:
        print(f"FAILED (not in the tables; see the output above): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
