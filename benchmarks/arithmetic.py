"""Arithmetic with a calculator: GFlowNet fine-tuning against GRPO (TRL) at equal budget, each on two rewards,
with SFT and few-shot CoT prompting as baselines; measured by vote accuracy, unbiased pass@k and distinct
correct chains on 3- and 4-operand questions and out of distribution on 5 and 6 operands.

Methods (configs/arithmetic-cpu.yaml with the settings in COMPARISON):
  cot            the base model after 3 worked examples (no training);
  sft            TRL SFTTrainer (LoRA) on the 10 gold rationales; one adapter per seed;
  gfn-verifier   GFlowNet fine-tuning on R = p_LM(Z | X)^(1/T), times exp(floor) for a wrong final result;
  gfn-joint      GFlowNet fine-tuning on the paper's R = p_LM(X Z Y)^(1/T) with the correct answer Y;
  grpo-verifier  TRL's GRPOTrainer on log R of the verifier target;
  grpo-joint     TRL's GRPOTrainer on log R of the joint target.
Both learners start from the SFT adapter of their seed and take the same number of optimizer steps and
sampled trajectories (GFlowNet replay is off, so every step samples its 8 trajectories as GRPO's does).
Tuning: each learner x reward trains at every learning rate of LR_GRID (GRPO also at every temperature of
GRPO_TEMPERATURES, at its best learning rate) from the seed-0 SFT adapter, and is scored on a validation
split drawn like the training questions (mean pass@k, k = 1..16); the best setting is then trained at every
seed and evaluated on the test splits. The test splits are never used to choose anything.

Every unit (an SFT adapter, a tuning run, a final evaluation) is saved in benchmarks/out/arithmetic/ the
moment it finishes and skipped when the command runs again, so the table can be finished over several runs;
a GFlowNet run cut short continues from its last checkpoint. `--table` writes the table from what is saved.

Sizes (docs/results/arithmetic.md says why): 100 optimizer steps x 8 trajectories per learner run, 100 test
questions per split, 16 chains each, 50 validation questions.

  python benchmarks/arithmetic.py [--workers 2] [--seeds 3] [--steps 100] [--questions 100] [--table]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from throughput_saved import code_commit, cpu_info, describe_cpu

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out" / "arithmetic"
CONFIG = ROOT / "configs" / "arithmetic-cpu.yaml"
LEARNERS = ("gfn", "grpo")
REWARDS = ("verifier", "joint")
LR_GRID = (3e-5, 1e-4, 3e-4)
GRPO_TEMPERATURES = (1.0, 0.7)
TEST_SPLITS = ("simple", "hard", "ood-5", "ood-6")
KS = (1, 2, 4, 8, 16)
# Every unit's run options: equal budgets (no replay), room for 6-operand chains (53 tokens), the splits.
COMPARISON = {"replay_prob": "0", "trajectories_per_prompt": "8", "progress": "false",
              "evaluate": "false", "task": {"ood_operands": "5,6", "max_len": "56", "test_size": "200",
                                            "validation_size": "100", "eval_chains": "16", "eval_temperature": "0.5"}}
SFT = {"epochs": 30.0, "lr": 5e-4, "batch_size": 5}


def unit_path(name: str, out: Path | None = None) -> Path:
    return (out or OUT) / f"{name}.json"


def adapter_path(name: str, out: Path | None = None) -> Path:
    return (out or OUT) / "adapters" / f"{name}.safetensors"


def overrides(unit: dict) -> dict:
    task = dict(COMPARISON["task"])
    if unit.get("splits"):
        validation = unit["splits"] == ["validation"]
        task.update(eval_splits=",".join(unit["splits"]), eval_questions=str(unit["questions"]),
                    eval_vote_by_likelihood=str(not validation).lower())  # tuning reads pass@k only
    if unit.get("reward"):
        task["reward"] = unit["reward"]
    out = {**COMPARISON, "task": task, "seed": str(unit["seed"]), "steps": str(unit["steps"])}
    if unit["kind"] == "gfn":
        folder = Path(unit["out"])
        out.update(lr=str(unit["lr"]), output_dir=str(folder / "runs" / unit["name"]),
                   init_adapter=str(adapter_path(f"sft-s{unit['seed']}", folder)))
    return out


def run_unit(unit: dict) -> dict:
    """Train (sft, gfn, grpo) and/or evaluate (every kind with splits) one unit; saves and returns its result."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gfnlm.baselines.grpo import GrpoSettings
    from gfnlm.baselines.sft import SupervisedSettings
    from gfnlm.runs import fit_baseline, holds_run_of, prepare_model, resolve, train

    started = time.perf_counter()
    spec = resolve("arithmetic", str(CONFIG), overrides(unit))
    kind, seed, train_stats, out = unit["kind"], unit["seed"], {}, Path(unit["out"])
    if kind == "gfn":
        run_dir = Path(spec.config.output_dir)
        if run_dir.exists() and not holds_run_of(run_dir, spec):
            shutil.rmtree(run_dir)
        train(spec, resume=holds_run_of(run_dir, spec))
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        train_stats = {"steps": len(rows), "sampled_trajectories": 8 * sum(int(r["on_policy"]) + int(r["tempered"])
                                                                            for r in rows)}
    policy = prepare_model(spec)
    if kind == "gfn":
        policy.load_adapter(run_dir / "adapter" / "adapter_model.safetensors")
    elif kind == "sft":
        stats = fit_baseline("sft", policy, spec.task, SupervisedSettings(**SFT, seed=seed, progress=False))
        train_stats = {"loss": stats["loss"], "steps": stats["steps"]}
    elif kind == "grpo":
        policy.load_adapter(adapter_path(f"sft-s{seed}", out))
        rows = fit_baseline("grpo", policy, spec.task, GrpoSettings(
            steps=unit["steps"], trajectories_per_prompt=8, lr=unit["lr"], temperature=unit["temperature"],
            reward="target", seed=seed, progress=False))["steps"]
        train_stats = {"steps": len(rows), "sampled_trajectories": sum(r["reward_calls"] for r in rows),
                       "final_reward": statistics.fmean(r["reward"] for r in rows[-20:])}
    elif unit.get("adapter"):
        policy.load_adapter(adapter_path(unit["adapter"], out))
    if kind in ("sft", "gfn", "grpo"):
        adapter_path(unit["name"], out).parent.mkdir(parents=True, exist_ok=True)
        policy.save_adapter(adapter_path(unit["name"], out))
    trained = time.perf_counter()
    metrics = None
    if unit.get("splits"):
        metrics, _ = spec.task.accuracy(policy, spec.config, few_shot=kind == "cot", label=unit["name"])
    result = {"unit": unit, "train": train_stats, "metrics": metrics, "train_seconds": trained - started,
              "eval_seconds": time.perf_counter() - trained, "commit": code_commit(), "cpu": cpu_info(),
              "threads": os.environ.get("OMP_NUM_THREADS", "unset")}
    unit_path(unit["name"], out).write_text(json.dumps(result, indent=1))
    return result


def saved(name: str) -> dict | None:
    path = unit_path(name)
    return json.loads(path.read_text()) if path.is_file() else None


def done(name: str) -> bool:
    return unit_path(name).is_file()


def validation_score(result: dict) -> float:
    """Mean pass@k over k = 1, 2, 4, 8, 16 on the validation split: accuracy and coverage weigh alike."""
    split = result["metrics"]["validation"]
    return statistics.fmean(split[f"pass@{k}"] for k in KS)


def setting_name(learner: str, reward: str, lr: float, temperature: float | None) -> str:
    return f"tune-{learner}-{reward}-lr{lr:g}" + ("" if temperature is None else f"-t{temperature:g}")


def tuning_units(learner: str, reward: str, validation: int) -> list[dict]:
    """The grid of one learner x reward still to run: learning rates first; then, for GRPO, the other
    temperatures at the best learning rate (once every learning rate is saved)."""
    base = {"kind": learner, "reward": reward, "seed": 0, "splits": ["validation"], "questions": validation}
    first_t = GRPO_TEMPERATURES[0] if learner == "grpo" else None
    units = [{**base, "name": setting_name(learner, reward, lr, first_t), "lr": lr, "temperature": first_t}
             for lr in LR_GRID]
    if learner == "grpo" and all(done(u["name"]) for u in units):
        best = max(units, key=lambda u: validation_score(saved(u["name"])))["lr"]
        units += [{**base, "name": setting_name(learner, reward, best, t), "lr": best, "temperature": t}
                  for t in GRPO_TEMPERATURES[1:]]
    return units


def start_unit(validation: int) -> dict:
    """The learners' common start (the seed-0 SFT adapter) on the validation split: what tuning must beat."""
    return {"kind": "eval", "name": "val-sft-s0", "seed": 0, "adapter": "sft-s0", "splits": ["validation"],
            "questions": validation}


def chosen_setting(learner: str, reward: str, validation: int) -> dict | None:
    units = tuning_units(learner, reward, validation)
    if learner == "grpo" and len(units) == len(LR_GRID) or not all(done(u["name"]) for u in units):
        return None
    return max(units, key=lambda u: validation_score(saved(u["name"])))


def final_units(seeds: int, questions: int, validation: int) -> list[dict]:
    """The test evaluations whose inputs are ready: CoT and SFT at every seed, each tuned learner x reward at
    every seed (seed 0 evaluates the tuning run's adapter; the others train first)."""
    test = {"splits": list(TEST_SPLITS), "questions": questions}
    units = []
    for s in range(seeds):
        units.append({"kind": "cot", "name": f"test-cot-s{s}", "seed": s, **test})
        if done(f"sft-s{s}"):
            units.append({"kind": "eval", "name": f"test-sft-s{s}", "seed": s, "adapter": f"sft-s{s}", **test})
    for learner in LEARNERS:
        for reward in REWARDS:
            best = chosen_setting(learner, reward, validation)
            if best is None:
                continue
            for s in range(seeds):
                name = f"test-{learner}-{reward}-s{s}"
                if s == 0:
                    units.append({"kind": "eval", "name": name, "seed": 0, "adapter": best["name"],
                                  "reward": reward, "tuned": best["name"], **test})
                elif done(f"sft-s{s}"):
                    units.append({**best, "name": name, "seed": s, "tuned": best["name"], **test})
    return units


def pending(units: list[dict]) -> list[dict]:
    return [u for u in units if not done(u["name"])]


def run_round(units: list[dict], workers: int, steps: int) -> int:
    from job_pool import run_jobs

    todo = pending(units)
    for result in run_jobs(run_unit, [({**u, "steps": steps, "out": str(OUT)},) for u in todo], workers):
        u = result["unit"]
        print(f"{u['name']}: train {result['train_seconds']:.0f} s, eval {result['eval_seconds']:.0f} s", flush=True)
    return len(todo)


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {spread:.3f}"


METHODS = ("cot", "sft", *(f"{learner}-{reward}" for learner in LEARNERS for reward in REWARDS))


def test_runs(seeds: int) -> dict[str, list[dict]]:
    return {m: [r for s in range(seeds) if (r := saved(f"test-{m}-s{s}"))] for m in METHODS}


def plot(seeds: int, path: Path) -> Path | None:
    """pass@k against k per split (mean over seeds, bars = standard deviation), one line per method, and the
    distinct correct chains per question beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {m: r for m, r in test_runs(seeds).items() if r}
    if not runs:
        return None
    fig, axes = plt.subplots(1, len(TEST_SPLITS) + 1, figsize=(4 * (len(TEST_SPLITS) + 1), 3.6))
    for ax, split in zip(axes, TEST_SPLITS):
        for m, rs in runs.items():
            values = [[r["metrics"][split][f"pass@{k}"] for r in rs] for k in KS]
            spread = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            ax.errorbar(KS, [statistics.fmean(v) for v in values], yerr=spread, marker="o", ms=3, capsize=2, label=m)
        ax.set_xscale("log", base=2)
        ax.set_xticks(KS, [str(k) for k in KS])
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{split}: pass@k")
        ax.set_xlabel("k (of 16 chains)")
    ax = axes[-1]
    width = 0.8 / len(runs)
    for i, (m, rs) in enumerate(runs.items()):
        values = [[r["metrics"][split]["distinct_correct"] for r in rs] for split in TEST_SPLITS]
        ax.bar([j + i * width for j in range(len(TEST_SPLITS))], [statistics.fmean(v) for v in values], width,
               yerr=[statistics.stdev(v) if len(v) > 1 else 0.0 for v in values], label=m)
    ax.set_xticks([j + width * (len(runs) - 1) / 2 for j in range(len(TEST_SPLITS))], TEST_SPLITS)
    ax.set_title("distinct correct chains per question")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(seeds: int, validation: int) -> str:
    """The results page's tables from the saved units."""
    methods = METHODS
    runs = test_runs(seeds)
    lines = ["| method | seeds | " + " | ".join(f"{s}: majority / by p(Y∣X,Z)" for s in TEST_SPLITS) + " |",
             "|---|---|" + "---|" * len(TEST_SPLITS)]
    for m in methods:
        if runs[m]:
            cells = [f"{mean_std([r['metrics'][s]['accuracy_majority'] for r in runs[m]])} / "
                     f"{mean_std([r['metrics'][s]['accuracy_likelihood'] for r in runs[m]])}" for s in TEST_SPLITS]
            lines.append(f"| {m} | {len(runs[m])} | " + " | ".join(cells) + " |")
    for split in TEST_SPLITS:
        lines += ["", f"{split}: pass@k, distinct correct chains per question (of 16), mean length, calculator calls",
                  "",
                  "| method | " + " | ".join(f"pass@{k}" for k in KS) + " | distinct correct | length | calls |",
                  "|---|" + "---|" * (len(KS) + 3)]
        for m in methods:
            if runs[m]:
                keys = [f"pass@{k}" for k in KS] + ["distinct_correct", "mean_length", "calculator_calls"]
                lines.append(f"| {m} | " + " | ".join(mean_std([r["metrics"][split][key] for r in runs[m]])
                                                        for key in keys) + " |")
    lines += ["", "Tuning (validation split, seed 0, mean pass@k over k = 1..16):", "",
              "| learner x reward | setting | validation score | chosen |", "|---|---|---|---|"]
    start = saved(start_unit(validation)["name"])
    if start:
        lines.append(f"| (the start: sft-s0) | - | {validation_score(start):.3f} | |")
    for learner in LEARNERS:
        for reward in REWARDS:
            best = chosen_setting(learner, reward, validation)
            for u in tuning_units(learner, reward, validation):
                r = saved(u["name"])
                setting = f"lr {u['lr']:g}" + (f", T {u['temperature']:g}" if u["temperature"] else "")
                score = f"{validation_score(r):.3f}" if r else "(not run)"
                mark = "yes" if best and best["name"] == u["name"] else ""
                lines.append(f"| {learner}-{reward} | {setting} | {score} | {mark} |")
    units = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    commits = sorted({u["commit"][:7] for u in units})
    cpus = sorted({describe_cpu(u["cpu"]) for u in units})
    threads = ", ".join(sorted({u["threads"] for u in units}))
    lines += ["", f"Units saved: {len(units)}; commits: {', '.join(commits)}; CPU: {'; '.join(cpus)}; threads per "
              f"unit: {threads}."]
    return "\n".join(lines)


def main() -> int:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="units at a time (each with its share of the cores)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--questions", type=int, default=100, help="test questions per split")
    parser.add_argument("--validation", type=int, default=50, help="validation questions scored per tuning run")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps of every learner run")
    parser.add_argument("--out", default=str(OUT), help="folder of the saved units (one per step count)")
    parser.add_argument("--table", action="store_true", help="only write the table from the saved units")
    args = parser.parse_args()
    if args.seeds < 1 or args.questions < 1 or not 1 <= args.validation <= int(COMPARISON["task"]["validation_size"]):
        parser.error("--seeds and --questions must be positive, --validation between 1 and the validation split's size")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    OUT = Path(args.out).resolve()
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if not args.table:
        run_round([{"kind": "sft", "name": f"sft-s{s}", "seed": s} for s in range(args.seeds)], args.workers,
                  args.steps)
        while True:  # tuning (GRPO's temperatures wait for its learning rates), then the test units ready
            grid = [start_unit(args.validation)] + [u for learner in LEARNERS for reward in REWARDS
                                                    for u in tuning_units(learner, reward, args.validation)]
            if not run_round(grid + final_units(args.seeds, args.questions, args.validation), args.workers,
                             args.steps):
                break
    text = table(args.seeds, args.validation)
    (OUT / "table.md").write_text(text + "\n")
    image = plot(args.seeds, OUT / "arithmetic_pass_at_k.png")
    print(text + (f"\n\nplot: {image}" if image else ""))
    print(f"\n{time.perf_counter() - started:.0f} s; {OUT / 'table.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
