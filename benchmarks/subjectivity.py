"""Subjectivity classification from 10, 20 and 50 labelled sentences on the embedded model: zero-shot,
few-shot in-context learning, supervised LoRA, GFlowNet E-step only and GFlowNet + M-step (EM with a
latent rationale), on the same test sentences of the SUBJ data (../shared/data/reference/subj or --data).

Per training-set size N and seed (--seeds: the run's seed and task.seed, i.e. q's initialization, the
wishful buffer seeds, every sampled rationale, the few-shot order and the supervised adapter), one `gfnlm
train subjectivity` run (configs/subjectivity-cpu.yaml) trains the E-step, runs the M-step and evaluates
every method. "E-step only" gets a run of its own (subjectivity-n<N>-seed<S>-estep,
task.em_rounds=0: the same steps, the base model as the judge throughout, all N examples) when the EM run's
E-step differs from it: with more than one EM round (the later E-steps are trained against the M-step's
likelihood) or with the M-step's held-out examples kept out of the E-step (task.m_validation > 0, as in
the preset). Times per method:
  zero_shot / few_shot   scoring only;
  supervised             TRL SFT of a fresh adapter + scoring;
  gfn_e_step             E-step training + sampling K rationales + scoring under the base model;
  gfn_em                 E-steps + M-steps + sampling + scoring under the likelihood adapter.
The table gives each method's mean accuracy over the seeds (with their range when more than one), a
second table every seed's. Runs live in benchmarks/out/subjectivity-n<N>-seed<S>[-estep]: a run of the
same configuration that finished is reused, one stopped part-way continues from its last checkpoint,
anything else is trained afresh, so the benchmark can be run in pieces. --workers K trains and evaluates K
(N, seed) runs at a time in separate processes, each with 1/K of the cores (benchmarks/job_pool.py).
Prints and saves benchmarks/out/subjectivity.json, subjectivity.md and subjectivity_accuracy.png.

  python benchmarks/subjectivity.py [--sizes 10,20,50] [--seeds 0] [--test 500] [--steps 150] [--rationales 10]
                                    [--workers K]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import textwrap
import time
from pathlib import Path

from gfnlm.infra.metrics_log import read_metrics  # light: the heavy imports wait until the arguments are checked

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
DATA = ROOT.parent / "shared" / "data" / "reference" / "subj"
METHODS = ("zero_shot", "few_shot", "supervised", "gfn_e_step", "gfn_em")
NAMES = {"zero_shot": "zero-shot", "few_shot": "few-shot ICL (all N)", "supervised": "supervised LoRA",
         "gfn_e_step": "GFlowNet E-step only", "gfn_em": "GFlowNet + M-step"}


def method_seconds(run_dir: Path, evaluation: dict, methods: list[str]) -> dict[str, float]:
    """Seconds of the run's evaluated ``methods``: scoring, plus the run's training for the GFlowNet rows."""
    e_step = sum(r["seconds"] for r in read_metrics(run_dir / "metrics.jsonl"))
    m_step = sum(r["m_step_seconds"] for r in read_metrics(run_dir / "em.jsonl"))
    out = {m: evaluation[m]["seconds"] for m in methods}
    for m, training in (("gfn_e_step", e_step), ("gfn_em", e_step + m_step)):
        if m in out:
            out[m] += training
    return out


def train_and_evaluate(config: str, run_dir: Path, overrides: dict, methods: list[str]) -> tuple[dict, dict]:
    """One `gfnlm train subjectivity` run evaluating ``methods``: their results and seconds. A run of the same
    configuration already in run_dir is reused when evaluated, else continued."""
    from gfnlm.runs import holds_run_of, resolve, train

    overrides = {**overrides, "output_dir": str(run_dir),
                 "task": {**overrides["task"], "eval_methods": ",".join(methods)}}
    spec = resolve("subjectivity", config, overrides)
    saved = run_dir / "eval_classification.json"
    same = holds_run_of(run_dir, spec)
    if same and saved.is_file() and set(methods) <= set(json.loads(saved.read_text())["results"]):
        print(f"reusing {run_dir}", flush=True)
    else:
        if not same:
            shutil.rmtree(run_dir, ignore_errors=True)
        train(spec, resume=same)
    evaluation = json.loads(saved.read_text())
    return evaluation, method_seconds(run_dir, evaluation["results"], methods)


def train_and_evaluate_size(config: str, n: int, seed: int, overrides: dict, e_step_differs: bool) -> dict:
    """Every method's accuracy and seconds for N = n and one seed (a job of its own: --workers runs several
    at a time); "E-step only" from a run of its own when the EM run's E-step differs from it."""
    t = time.perf_counter()
    run_dir = OUT / f"subjectivity-n{n}-seed{seed}"
    separate = ["gfn_e_step"] if e_step_differs else []
    evaluation, seconds = train_and_evaluate(config, run_dir, overrides, [m for m in METHODS if m not in separate])
    measured = evaluation["results"]
    if separate:
        e_step_only = {**overrides, "task": {**overrides["task"], "em_rounds": "0"}}
        alone, alone_seconds = train_and_evaluate(config, OUT / f"subjectivity-n{n}-seed{seed}-estep",
                                                  e_step_only, separate)
        measured = {**measured, **{m: alone["results"][m] for m in separate}}
        seconds.update(alone_seconds)
    return {"accuracy": {m: measured[m]["accuracy"] for m in METHODS},
            "accuracy_majority": {m: measured[m].get("accuracy_majority") for m in METHODS},
            "accuracy_greedy": {m: measured[m].get("accuracy_greedy") for m in METHODS},
            "seconds": seconds, "em": read_metrics(run_dir / "em.jsonl"),
            "e_step_run": "separate (task.em_rounds=0)" if separate else "the EM run's E-step (one round)",
            "test_sentences": evaluation["test_sentences"], "run_seconds": time.perf_counter() - t,
            "examples": evaluation["examples"][:4]}


def checked(em_round: dict) -> bool:
    """Whether the round's keep check ran: it needs held-out examples (task.m_validation > 0)."""
    judged = em_round.get("held_out_prediction")
    return bool(judged) and judged["old"]["log_prob"] is not None


def m_step_checks(results: dict) -> list[str]:
    """Per N and seed, what the M-step's keep check saw on the training labels, beside the test accuracies:
    the base judge's and the fitted likelihood's prediction of the held-out training examples (from
    rationales drawn by a q that did not see their labels), and which judge was kept. The base judge's
    column is the only estimate of the E-step's accuracy on unseen sentences that training itself can see."""
    rows = [(n, seed, r, r["em"][-1]) for n, per_n in results.items() for seed, r in per_n["seeds"].items()
            if r["em"] and checked(r["em"][-1])]
    if not rows:
        return []
    lines = ["", "| N | seed | held-out training labels: base judge -> fitted (log p / accuracy) | kept "
             "| test: E-step only / + M-step |", "|---|---|---|---|---|"]
    for n, seed, r, em in rows:
        old, fitted = em["held_out_prediction"]["old"], em["held_out_prediction"]["fitted"]
        lines.append(f"| {n} | {seed} | {old['log_prob']:.3f} / {old['accuracy']:.2f} -> {fitted['log_prob']:.3f} / "
                     f"{fitted['accuracy']:.2f} | {em['kept']} | {r['accuracy']['gfn_e_step']:.3f} / "
                     f"{r['accuracy']['gfn_em']:.3f} |")
    return lines


def spread(values: list[float]) -> str:
    """The mean, and the range when there is more than one value."""
    mean = f"{statistics.mean(values):.3f}"
    return mean if len(values) == 1 else f"{mean} ({min(values):.3f}-{max(values):.3f})"


def plot(results: dict, path: Path, test: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(int(n) for n in results)
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, method in enumerate(METHODS):  # the mean over seeds, bars from the lowest to the highest seed
        per_seed = [[r["accuracy"][method] for r in results[str(n)]["seeds"].values()] for n in sizes]
        means = [statistics.mean(v) for v in per_seed]
        x = [n * 1.03 ** (i - 2) for n in sizes]  # side by side, so the bars do not hide each other
        ax.errorbar(x, means, yerr=[[m - min(v) for m, v in zip(means, per_seed)],
                                    [max(v) - m for m, v in zip(means, per_seed)]],
                    marker="o", capsize=3, label=NAMES[method])
    ax.set_xscale("log")
    ax.set_xlim(min(sizes) / 1.15, max(sizes) * 1.15)  # the methods' offsets stay small beside one N too
    ax.minorticks_off()
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_xlabel("training examples N")
    ax.set_ylabel(f"accuracy on {test} SUBJ test sentences")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=8)
    seeds = len(next(iter(results.values()))["seeds"])
    what = f"mean of {seeds} seeds, bars from the lowest to the highest" if seeds > 1 else "one seed"
    ax.set_title(textwrap.fill(f"Subjectivity, SmolLM2-135M-Instruct (CPU): {what}", 70), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "subjectivity-cpu.yaml"))
    parser.add_argument("--data", default=str(DATA), help="folder with train.10/20/50.jsonl and test.jsonl")
    parser.add_argument("--sizes", default="10,20,50")
    parser.add_argument("--seeds", default="0", help="seeds per N (rows are their mean)")
    parser.add_argument("--test", type=int, default=500, help="test sentences (the first of test.jsonl)")
    parser.add_argument("--steps", type=int, default=None, help="E-step steps (default: the preset's)")
    parser.add_argument("--rationales", type=int, default=10, help="K rationales per test sentence")
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides, e.g. task.m_epochs=5")
    parser.add_argument("--workers", type=int, default=1,
                        help="(N, seed) runs at a time, each with its share of the cores")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data = Path(args.data)
    sizes = [int(n) for n in args.sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not seeds:
        parser.error("--seeds needs at least one seed")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    missing = [p for p in [data / "test.jsonl"] + [data / f"train.{n}.jsonl" for n in sizes] if not p.is_file()]
    if missing:
        parser.error(f"missing data file(s): {', '.join(map(str, missing))}")

    from gfnlm.core.config import parse_overrides
    from gfnlm.runs import resolve

    extra = parse_overrides([f"--{kv.split('=', 1)[0]}={kv.split('=', 1)[1]}" for kv in args.set])
    extra_task = extra.pop("task", {})
    if args.steps is not None:
        extra["steps"] = str(args.steps)

    def overrides_for(n: int, seed: int = 0) -> dict:
        return {**extra, "seed": str(seed),
                "task": {"data": str(data / f"train.{n}.jsonl"), "test_data": str(data / "test.jsonl"),
                         "eval_size": str(args.test), "eval_rationales": str(args.rationales), "seed": str(seed),
                         **extra_task}}

    task_config = resolve("subjectivity", args.config, overrides_for(sizes[0])).task.config  # checks it all
    if task_config.em_rounds < 1:
        parser.error("the benchmark compares EM with the E-step alone: task.em_rounds must be at least 1")
    e_step_differs = task_config.em_rounds > 1 or task_config.m_validation > 0
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    from job_pool import run_jobs  # benchmarks/job_pool.py, beside this script

    cases = [(n, seed) for n in sizes for seed in seeds]
    jobs = [(args.config, n, seed, overrides_for(n, seed), e_step_differs) for n, seed in cases]
    results: dict[str, dict] = {str(n): {"seeds": {}} for n in sizes}
    for (n, seed), result in zip(cases, run_jobs(train_and_evaluate_size, jobs, args.workers)):
        results[str(n)]["seeds"][str(seed)] = result
        (OUT / "subjectivity.json").write_text(json.dumps(results, indent=1))  # a crash keeps the runs done
        print(f"N={n}, seed {seed}: " + ", ".join(f"{m} {result['accuracy'][m]:.3f}" for m in METHODS), flush=True)

    what = "mean accuracy over the seeds (range)" if len(seeds) > 1 else "accuracy"
    header = "| method | " + " | ".join(f"N={n}: {what} [majority, greedy] | s" for n in sizes) + " |"
    lines = [header, "|---|" + "---|---|" * len(sizes)]
    for m in METHODS:
        cells = []
        for n in sizes:
            runs = list(results[str(n)]["seeds"].values())
            more = [[r[k][m] for r in runs] for k in ("accuracy_majority", "accuracy_greedy") if runs[0][k][m] is not None]
            cells.append(spread([r["accuracy"][m] for r in runs])
                         + (f" [{', '.join(f'{statistics.mean(v):.3f}' for v in more)}]" if more else "")
                         + f" | {statistics.mean(r['seconds'][m] for r in runs):.0f}")
        lines.append(f"| {NAMES[m]} | " + " | ".join(cells) + " |")
    if len(seeds) > 1:  # every seed's accuracy
        lines += ["", "| method | " + " | ".join(f"N={n}: seeds {', '.join(map(str, seeds))}" for n in sizes) + " |",
                  "|---|" + "---|" * len(sizes)]
        lines += [f"| {NAMES[m]} | " + " | ".join(" / ".join(f"{r['accuracy'][m]:.3f}" for r in
                                                           results[str(n)]["seeds"].values()) for n in sizes) + " |"
                  for m in METHODS]
    lines += m_step_checks(results)
    table = "\n".join(lines)
    total = time.perf_counter() - started
    (OUT / "subjectivity.md").write_text(f"{table}\n\nTotal {total:.0f} s.\n")
    print(table)
    print(f"plot: {plot(results, OUT / 'subjectivity_accuracy.png', args.test)}")
    print(f"total {total:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
