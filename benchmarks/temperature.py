"""One policy for every temperature: a temperature-conditional continuation policy (trained once over a
range of reward temperatures) against policies trained separately at one temperature each.

Runs (in benchmarks/out/temperature/, each trained with `gfnlm train continuation` and the CPU preset
unless it is already there):
- single-T<T>-seed<S>: reward_temp_end T, seeds --single-seeds (0 and 1), for each T in --temperatures,
  with the preset's learned log Z(X); with --single-log-z batch they estimate log Z from each batch as the
  conditional run must (single-T<T>-batchlogz-seed<S>); --single-steps N other than the preset's adds
  -<N>steps, --single-anneal-steps N (the reward temperature's anneal from 1.0 to T; 0: T from the first
  step, as the conditional run draws it) other than the preset's adds -anneal<N>;
- conditional-<steps>steps-seed<s>: --conditional_temperatures <range> --log_z batch (the policy reads T as a
  learned embedding, with learned factors on its logits, its stop token's logit and its LoRA output: see
  gfnlm.model.temperature), one run per seed in --conditional-seeds, with as many steps as the
  single-temperature runs it replaces together (--conditional-steps, default 2 x the preset's).
Each policy is evaluated (once: a run's saved evaluation is reused) by the shared harness ("gfn" only) on
the held-out prompts at each T: mean log p_LM(Z | X), embedding diversity, and the importance estimates
of KL(q || p_T), ESS / N and p_T's own mean log p_LM(Z | X) (a saved evaluation without that estimate is
made again with the same seeds: the same samples when the thread count is the same; with another, sampling
differs in floating-point detail and a few samples differ). Each run (training, then its evaluations) is one
job; --workers K runs K jobs at a time in separate processes, each with 1/K of the cores (benchmarks/job_pool.py: on a
GPU, where one small run leaves the device mostly idle, and on a small CPU, where one run does not keep two
cores busy).
--single-seeds '' trains and tabulates the conditional runs alone (no checks: e.g. compared by hand with
single-temperature runs recorded earlier).
--eval-samples N evaluates with N samples per prompt instead of the preset's 16, saved beside the run's
own evaluation (eval_T<T>-n<N>.json); with more samples the self-normalized estimates of p_T's figures lean
less toward the policy's own.
--base-samples N also samples the base model (the adapter off) with N samples per prompt at each T
(base_T<T>-n<N>.json): its importance estimates of p_T's mean log-likelihood and diversity come from a
proposal flatter than p_T, which covers what the trained policies may miss.
--saved-only trains nothing and tabulates the runs whose evaluations are saved (e.g. runs trained on
another machine, of which only the run folders without adapters came back).

The checks, at each T:
- per conditional seed: its (log-likelihood, diversity) point lies within the spread (min..max) of the
  single-temperature policies (two seeds unless --single-seeds); also shown, whether its KL(q || p_T) estimate
  is no larger than the largest single-temperature one;
- over seeds (with two or more conditional seeds): the conditional seeds' mean lies within the single-T
  seeds' spread on both axes, with both sides' mean, standard deviation and Welch's t statistic in a table.
  With several seeds per side this is the comparison of distributions that a min-max check against one
  conditional seed cannot give when seeds differ by more than the settings do.
Plots: benchmarks/out/temperature_frontier.png (every run, labelled) and temperature_seed_means.png (per T,
every seed and each side's mean ± sd).

  python benchmarks/temperature.py [--temperatures 0.8,0.95] [--range 0.8:1.0]
                                   [--conditional-steps N] [--single-steps N] [--single-anneal-steps N]
                                   [--single-log-z learned|batch] [--conditional-seeds 0,1] [--single-seeds 0,1]
                                   [--workers K] [--eval-samples N] [--base-samples N] [--saved-only]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"


@dataclass
class Job:
    """One run: trained with ``train_args`` unless already there, then evaluated at ``temperatures``."""
    key: str
    run_dir: Path
    train_args: list[str]
    temperatures: list[float]
    eval_samples: int | None = None  # samples per prompt in its evaluations (None: its config's)


def train(run_dir: Path, extra: list[str]) -> float:
    """Train one run unless it finished before (a run stopped part-way continues from its last checkpoint);
    its training wall time (from its report when reused; of this call's part when continued)."""
    if (run_dir / "adapter").is_dir():
        found = re.search(r"training wall time: (\d+) s", (run_dir / "report.md").read_text())
        return float(found.group(1)) if found else float("nan")
    command = [sys.executable, "-m", "gfnlm.cli", "train", "continuation", "--config",
               str(ROOT / "configs" / "continuation-cpu.yaml"), "--evaluate", "false", "--output_dir", str(run_dir),
               "--resume", *extra]
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    if subprocess.run(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode != 0:
        raise SystemExit(f"training {run_dir.name} failed")
    return time.perf_counter() - started


def evaluation_stem(run_config: dict, temperature: float, samples: int | None) -> str:
    """eval_T<T>, or eval_T<T>-n<N> for N samples per prompt other than the run's own setting (so an
    evaluation with more samples sits beside the run's and replaces nothing)."""
    own = run_config["task"]["eval_samples"]
    return f"eval_T{temperature:g}" + (f"-n{samples}" if samples not in (None, own) else "")


def saved_evaluation(run_dir: Path, temperature: float, every_metric: bool = True,
                     samples: int | None = None) -> dict | None:
    """The run's saved evaluation at T (the same harness, prompts and samples: ``samples`` per prompt, or the
    run's own setting), if it is complete: with ``every_metric``, only one that has every metric the harness
    writes now, up to its newest, the estimate of p_T's diversity (an older one is evaluated again, ~70 s
    here)."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        return None
    run_config = yaml.safe_load(config.read_text())
    saved = run_dir / f"{evaluation_stem(run_config, temperature, samples)}.json"
    if not saved.is_file():
        return None
    earlier = json.loads(saved.read_text())
    if earlier["n"] != (samples or run_config["task"]["eval_samples"]) or earlier["temperature"] != temperature:
        return None
    if every_metric and "target_diversity_est" not in earlier["methods"][0]:
        return None
    return {**earlier["methods"][0], "steps": run_config["steps"], "prompts": earlier["prompts"],
            "samples": earlier["n"]}


def evaluate(run_dir: Path, temperature: float, samples: int | None = None) -> dict:
    earlier = saved_evaluation(run_dir, temperature, samples=samples)
    if earlier is not None:
        print(f"  reusing {run_dir.name}'s evaluation at T = {temperature:g}", flush=True)
        return earlier
    from gfnlm.runs import load_run, load_trained_policy

    stem = evaluation_stem(yaml.safe_load((run_dir / "config.yaml").read_text()), temperature, samples)
    spec = load_run(run_dir, {"task": {"eval_samples": samples}} if samples else None)
    task = spec.task
    policy = load_trained_policy(spec, run_dir)
    t0 = time.perf_counter()
    result = task.evaluate_at(policy, run_dir, spec.config, temperature, methods=["gfn"], stem=stem)
    return {**result.metrics["gfn"], "seconds": time.perf_counter() - t0, "steps": spec.config.steps,
            "prompts": len(task.test_set), "samples": task.config.eval_samples}


def base_reference(out_dir: Path, temperature: float, samples: int, saved_only: bool = False) -> dict | None:
    """Plain sampling from the base model (the adapter off) with ``samples`` per held-out prompt, scored against
    p_T: its importance estimates of p_T's own figures come from a proposal flatter than p_T (T < 1) that
    covers the target's support, where a trained policy's estimates see only what that policy samples. Saved
    as base_T<T>-n<N>.json in ``out_dir`` and reused; with ``saved_only``, None when not saved."""
    stem = f"base_T{temperature:g}-n{samples}"
    saved = out_dir / f"{stem}.json"
    if not saved.is_file():
        if saved_only:
            return None
        from gfnlm.runs import prepare_model, resolve

        spec = resolve("continuation", str(ROOT / "configs" / "continuation-cpu.yaml"),
                       {"reward_temp_end": temperature, "task": {"eval_samples": samples}})
        policy = prepare_model(spec)  # its fresh adapter is switched off for "sampling"
        spec.task.evaluate_at(policy, out_dir, spec.config, temperature, methods=["sampling"], stem=stem)
    written = json.loads(saved.read_text())  # the harness's own record: one reading, fresh or reused
    return {**written["methods"][0], "samples": written["n"], "prompts": written["prompts"]}


def base_reference_line(t: float, row: dict) -> str:
    return (f"base model at T = {t:g} ({row['samples']} samples x {row['prompts']} prompts): own diversity "
            f"{row['diversity']:.3f}, ESS / N {row['ess_fraction']:.3f}; p_T's mean log p(Z | X) (IS) "
            f"{row['target_loglik_est']:.2f}, p_T's embedding diversity (IS) {row['target_diversity_est']:.3f}")


def run_job(job: Job, saved_only: bool = False) -> tuple[float, dict[float, dict]] | None:
    """Train then evaluate one run; with ``saved_only`` its saved evaluations, or None if any is missing."""
    if saved_only:
        found = {t: saved_evaluation(job.run_dir, t, every_metric=False, samples=job.eval_samples)
                 for t in job.temperatures}
        return None if None in found.values() else (float("nan"), found)
    seconds = train(job.run_dir, job.train_args)
    return seconds, {t: evaluate(job.run_dir, t, job.eval_samples) for t in job.temperatures}


def within(value: float, points: list[float]) -> bool:
    return min(points) <= value <= max(points)


def welch_t(a: list[float], b: list[float]) -> float:
    """Welch's t statistic of mean(a) - mean(b) (nan with fewer than two values on a side)."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return (statistics.fmean(a) - statistics.fmean(b)) / se if se > 0 else float("nan")


def seed_means(results: list[dict], temperatures: list[float]) -> tuple[list[dict], dict[str, bool]]:
    """Per T and axis: each side's mean and standard deviation over seeds, Welch's t (conditional minus
    single), and whether the conditional mean lies within the single-T seeds' spread. Also, where every run
    has them, the importance estimates of p_T's own mean log-likelihood and diversity (each side's estimate
    of the same number: where the target lies, to see which side is too sharp or too varied)."""
    rows, claims = [], {}
    axes = ["mean_loglik", "diversity", "mean_length"]
    axes += [key for key in ("target_loglik_est", "target_diversity_est")
             if all(r.get(key) is not None for r in results)]
    for t in temperatures:
        for key in axes:
            single = [r[key] for r in results if r["T"] == t and r["kind"] == "single"]
            conditional = [r[key] for r in results if r["T"] == t and r["kind"] == "conditional"]
            if len(conditional) < 2 or len(single) < 2:
                continue
            inside = within(statistics.fmean(conditional), single)
            rows.append({"T": t, "axis": key, "single": f"{statistics.fmean(single):.3f} ± {statistics.stdev(single):.3f}"
                         f" ({min(single):.3f}..{max(single):.3f}, n = {len(single)})",
                         "conditional": f"{statistics.fmean(conditional):.3f} ± {statistics.stdev(conditional):.3f}"
                         f" (n = {len(conditional)})",
                         "welch_t": welch_t(conditional, single), "inside": "yes" if inside else "no"})
            if key in ("mean_loglik", "diversity"):
                claims[f"T = {t:g}: the conditional seeds' mean {key} within the single-T seeds' spread"] = inside
    return rows, claims


def points_table(results: list[dict]) -> str:
    """Every run's point at each T, as markdown."""
    from gfnlm.evaluation.tables import markdown_table

    columns = ["T", "policy", "mean_loglik", "diversity", "mean_length", "kl_q_p", "ess_fraction",
               "target_loglik_est", "target_diversity_est", "seconds"]
    headers = {"mean_loglik": "mean log p(Z ∣ X)", "diversity": "embedding diversity", "mean_length": "tokens",
               "kl_q_p": "KL(q ‖ p_T) (IS)", "ess_fraction": "ESS / N",
               "target_loglik_est": "p_T's mean log p(Z ∣ X) (IS)",
               "target_diversity_est": "p_T's embedding diversity (IS)", "seconds": "eval s"}
    return markdown_table(results, columns, headers)


def plot_seed_means(path: Path, results: list[dict], temperatures: list[float], title: str) -> Path:
    """One panel per T: every seed's (diversity, log-likelihood) point, single-T (blue dots) and conditional
    (red stars), and each side's mean with one standard deviation on both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(temperatures), figsize=(5.2 * len(temperatures), 4.4), squeeze=False)
    for ax, t in zip(axes[0], temperatures):
        for kind, color, marker in (("single", "tab:blue", "o"), ("conditional", "tab:red", "*")):
            side = [r for r in results if r["T"] == t and r["kind"] == kind]
            xs, ys = [r["diversity"] for r in side], [r["mean_loglik"] for r in side]
            ax.scatter(xs, ys, color=color, marker=marker, s=50 if marker == "*" else 25, alpha=0.6,
                       label=f"{kind} (n = {len(side)})")
            if len(side) >= 2:
                ax.errorbar(statistics.fmean(xs), statistics.fmean(ys), xerr=statistics.stdev(xs),
                            yerr=statistics.stdev(ys), color=color, capsize=4, lw=2, marker="s", ms=6)
        ax.set_title(f"T = {t:g}", fontsize=10)
        ax.set_xlabel("embedding diversity")
        ax.set_ylabel("mean log p_LM(Z | X)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(textwrap.fill(title, 75 * len(temperatures)), fontsize=10)  # one panel is narrow
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def single_settings(args: argparse.Namespace, preset: dict) -> tuple[int, int, str]:
    """The single-temperature runs' training steps, reward-temperature anneal steps, and the suffix of their
    folder names after single-T<T>: each setting other than the preset's is named, so runs of the preset
    keep their folders (and are reused) whatever options are added later."""
    steps = args.single_steps or preset["steps"]
    anneal_steps = preset["reward_temp_horizon"] if args.single_anneal_steps is None else args.single_anneal_steps
    suffix = "-batchlogz" if args.single_log_z == "batch" else ""
    suffix += f"-{steps}steps" if steps != preset["steps"] else ""
    suffix += f"-anneal{anneal_steps}" if anneal_steps != preset["reward_temp_horizon"] else ""
    return steps, anneal_steps, suffix


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--temperatures", default="0.8,0.95", help="temperatures compared")
    parser.add_argument("--range", default="0.8:1.0", help="the conditional policy's training range")
    parser.add_argument("--conditional-steps", type=int, default=None,
                        help="its training steps (default: 2 x the single-T runs', the compute of two of them)")
    parser.add_argument("--single-steps", type=int, default=None,
                        help="training steps of each single-temperature run (default: the preset's)")
    parser.add_argument("--single-anneal-steps", type=int, default=None,
                        help="steps over which the single-temperature runs anneal the reward temperature from "
                             "1.0 to T (default: the preset's; 0: T from the first step)")
    parser.add_argument("--single-log-z", default="learned", choices=["learned", "batch"],
                        help="log Z of the single-temperature runs (the conditional run always uses batch)")
    parser.add_argument("--conditional-seeds", "--conditional-seed", dest="conditional_seeds", default="0",
                        help="the conditional runs' seeds (one run each; each is checked on its own); '' trains "
                             "and evaluates the single-temperature runs alone")
    parser.add_argument("--single-seeds", default="0,1", help="seeds of the single-temperature runs per T")
    parser.add_argument("--workers", type=int, default=1, help="runs trained and evaluated at a time")
    parser.add_argument("--eval-samples", type=int, default=None,
                        help="samples per prompt in the evaluations (default: the preset's); another number is "
                             "saved beside the run's own (eval_T<T>-n<N>), e.g. to estimate p_T's figures with less "
                             "self-normalization bias")
    parser.add_argument("--base-samples", type=int, default=None,
                        help="also sample the base model (adapter off) with N samples per prompt at each T: "
                             "estimates of p_T's own log-likelihood and diversity from a proposal that covers it "
                             "(base_T<T>-n<N>.json)")
    parser.add_argument("--saved-only", action="store_true",
                        help="train and evaluate nothing: tabulate the runs whose evaluations are saved")
    args = parser.parse_args()
    single_seeds = [int(s) for s in args.single_seeds.split(",") if s.strip()]
    conditional_seeds = [int(s) for s in args.conditional_seeds.split(",") if s.strip()]
    if args.saved_only and not conditional_seeds:
        parser.error("--saved-only needs at least one conditional seed to compare")
    if len(single_seeds) == 1:
        parser.error("--single-seeds needs at least two seeds (the check is against their spread) or none "
                     "(the conditional runs alone, tabulated without checks)")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    for name in ("eval_samples", "base_samples"):
        if getattr(args, name) is not None and getattr(args, name) < 2:
            parser.error(f"--{name.replace('_', '-')} must be at least 2 (diversity needs pairs)")
    if args.single_anneal_steps is not None and args.single_anneal_steps < 0:
        parser.error("--single-anneal-steps must be 0 or more")
    temperatures = [float(t) for t in args.temperatures.split(",") if t.strip()]
    out_dir = OUT / "temperature"
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    preset = yaml.safe_load((ROOT / "configs" / "continuation-cpu.yaml").read_text())
    single_steps, anneal_steps, single_suffix = single_settings(args, preset)
    steps = args.conditional_steps or 2 * single_steps

    def single_key(t: float, seed: int) -> str:  # also the run's folder name
        return f"single-T{t:g}{single_suffix}-seed{seed}"

    def conditional_key(seed: int) -> str:
        return f"conditional-seed{seed}"

    # Seeds interleaved, longest run first within a seed: stopped early, the finished runs still pair up.
    jobs = []
    for i in range(max(len(single_seeds), len(conditional_seeds))):
        if i < len(conditional_seeds):
            seed = conditional_seeds[i]
            jobs.append(Job(conditional_key(seed), out_dir / f"conditional-{steps}steps-seed{seed}",
                            ["--conditional_temperatures", args.range, "--log_z", "batch", "--steps", str(steps),
                             "--seed", str(seed)], temperatures, args.eval_samples))
        if i < len(single_seeds):
            seed = single_seeds[i]
            for t in temperatures:
                jobs.append(Job(single_key(t, seed), out_dir / single_key(t, seed),
                                ["--reward_temp_end", str(t), "--log_z", args.single_log_z, "--seed", str(seed),
                                 "--steps", str(single_steps), "--reward_temp_horizon", str(anneal_steps)], [t],
                                args.eval_samples))
    from job_pool import run_jobs  # benchmarks/job_pool.py, beside this script

    workers = 1 if args.saved_only else args.workers  # reading saved files needs no processes
    outcomes = dict(zip([job.key for job in jobs],
                        run_jobs(run_job, [(job, args.saved_only) for job in jobs], workers)))
    missing = [key for key, outcome in outcomes.items() if outcome is None]
    if missing:
        print(f"without saved evaluations, left out: {', '.join(missing)}", flush=True)
    train_seconds = {key: outcome[0] for key, outcome in outcomes.items() if outcome is not None}
    for t in temperatures if args.base_samples else []:
        row = base_reference(out_dir, t, args.base_samples, args.saved_only)
        print(base_reference_line(t, row) if row else f"base model at T = {t:g}: no saved evaluation", flush=True)
    if not conditional_seeds:
        if train_seconds:
            print("single-temperature runs trained and evaluated (no conditional seeds to compare): "
                  + ", ".join(f"{k} {v:.0f} s" for k, v in train_seconds.items()))
        return 0
    compared = bool(single_seeds)  # against single-T runs, or the conditional runs alone
    single_seeds = [s for s in single_seeds
                    if all(outcomes[single_key(t, s)] is not None for t in temperatures)]
    conditional_seeds = [s for s in conditional_seeds if outcomes[conditional_key(s)] is not None]
    if (compared and len(single_seeds) < 2) or not conditional_seeds:
        raise SystemExit("fewer than two single-T seeds or no conditional seed with every evaluation saved")

    from gfnlm.evaluation.plots import plot_frontier
    from gfnlm.evaluation.tables import markdown_table

    results = []
    for t in temperatures:
        for seed in single_seeds:
            results.append({"T": t, "policy": f"trained at T = {t:g} (log Z {args.single_log_z}), seed {seed}",
                            "label": f"T={t:g} single, seed {seed}", "kind": "single", "seed": seed,
                            **outcomes[single_key(t, seed)][1][t]})
        for seed in conditional_seeds:
            results.append({"T": t, "policy": f"conditional ({args.range}, {steps} steps), seed {seed}",
                            "label": f"T={t:g} conditional, seed {seed}", "kind": "conditional", "seed": seed,
                            **outcomes[conditional_key(seed)][1][t]})
    seconds_line = "training seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in train_seconds.items())
    if not compared:
        print("\n" + points_table(results))
        print(seconds_line)
        return 0
    claims, closeness, failed = {}, {}, set()
    for t in temperatures:
        singles = [r for r in results if r["T"] == t and r["kind"] == "single"]
        for cond in (r for r in results if r["T"] == t and r["kind"] == "conditional"):
            for key in ("mean_loglik", "diversity"):
                ok = within(cond[key], [r[key] for r in singles])
                claims[f"T = {t:g}: conditional seed {cond['seed']} {key} within the single-T spread"] = ok
                if not ok:
                    failed.add(cond["seed"])
            closeness[f"T = {t:g}: conditional seed {cond['seed']} KL(q || p_T) <= the largest single-T one"] = (
                cond["kl_q_p"] <= max(r["kl_q_p"] for r in singles))
    passing = [seed for seed in conditional_seeds if seed not in failed]
    mean_rows, mean_claims = seed_means(results, temperatures)
    table = points_table(results)
    mean_table = markdown_table(mean_rows, ["T", "axis", "single", "conditional", "welch_t", "inside"],
                                {"single": "single-T: mean ± sd (range, n)", "conditional": "conditional: mean ± sd",
                                 "welch_t": "Welch t (cond. - single)", "inside": "cond. mean inside"})
    plot = plot_frontier(OUT / "temperature_frontier.png",
                         [{**r, "method": r["label"]} for r in results],
                         "diversity", "mean_loglik", "embedding diversity (1 - mean pairwise cosine)",
                         "mean log p_LM(Z | X)", f"conditional policies ({args.range}, stars) vs single-temperature ones",
                         highlight=lambda r: r["kind"] == "conditional")
    means_plot = plot_seed_means(OUT / "temperature_seed_means.png", results, temperatures,
                                 f"seeds and their mean ± sd: conditional ({args.range}) vs single-T"
                                 + (f", {args.eval_samples} samples per prompt" if args.eval_samples else ""))
    summary = {"temperatures": temperatures, "range": args.range, "conditional_steps": steps,
               "single_steps": single_steps, "single_anneal_steps": anneal_steps, "single_log_z": args.single_log_z, "eval_samples": args.eval_samples, "single_seeds": single_seeds,
               "conditional_seeds": conditional_seeds, "results": results, "claims": claims,
               "closeness": closeness, "seeds_passing": passing, "seed_means": mean_rows, "mean_claims": mean_claims,
               "train_seconds": train_seconds, "total_seconds": time.perf_counter() - started, "plot": str(plot),
               "seed_means_plot": str(means_plot)}
    (OUT / "temperature.json").write_text(json.dumps(summary, indent=1))
    print("\n" + table)
    if mean_rows:
        print("\n" + mean_table + "\n")
    for claim, ok in {**claims, **closeness, **mean_claims}.items():
        print(f"  [{'yes' if ok else 'no '}] {claim}")
    print(f"conditional seeds inside the single-T spread on both axes at every T: {len(passing)} of "
          f"{len(conditional_seeds)} ({', '.join(map(str, passing)) or 'none'})")
    print(seconds_line)
    print(f"Total {summary['total_seconds']:.0f} s. Plots: {plot}, {means_plot}\nSaved {OUT / 'temperature.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
