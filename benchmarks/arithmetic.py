"""Arithmetic with a calculator on the embedded model: accuracy of CoT prompting, SFT, RL and
GFlowNet fine-tuning on simple (3 operands), hard (4 operands) and OOD (5 operands) test questions.

All methods use the same model, the same 50 training questions and the same 10 gold rationales:
  cot_prompting  the base model after `cot_shots` worked examples (no training);
  sft            TRL SFTTrainer, LoRA, on the 10 gold rationales (calculator results are context only);
  gfn            GFlowNet fine-tuning (configs/arithmetic-cpu.yaml) from the SFT adapter;
  grpo           TRL's GRPOTrainer (LoRA) from the SFT adapter, rollouts from the project's sampler with
                 the calculator, reward 1 for a correct final answer, as many scored trajectories as the
                 GFlowNet run.
The SFT and GRPO adapters are trained as `gfnlm baseline sft|grpo arithmetic` trains them (gfnlm.runs.fit_baseline).
Every method samples K chains per question with the calculator at the same temperature; answers by
majority and by total p_LM(Y | X, Z) (the reward's model and context). Prints and saves the table
(benchmarks/out/arithmetic.json, arithmetic.md) and a bar chart (arithmetic_accuracy.png).

  python benchmarks/arithmetic.py [--steps 300] [--questions 200] [--chains 5] [--methods ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
SPLITS = ("simple", "hard", "ood")


def reward_calls_of_gfn_run(run_dir: Path, trajectories: int, seeds: int) -> int:
    """Trajectories whose reward was computed: sampled micro-batches (replays reuse stored rewards) and the seeds."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return seeds + trajectories * sum(int(r["on_policy"]) + int(r["tempered"]) for r in rows)


def plot(results: dict, path: Path, questions: int, chains: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4))
    width = 0.8 / len(results)
    for m, (method, r) in enumerate(results.items()):
        values = [r["accuracy"][s]["accuracy_likelihood"] for s in SPLITS]
        bars = ax.bar([i + m * width for i in range(len(SPLITS))], values, width, label=method)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(SPLITS))],
                  ["simple (3 operands)", "hard (4 operands)", "OOD (5 operands)"])
    ax.set_ylabel("accuracy (vote by p(Y | X, Z))")
    ax.set_title(f"arithmetic with a calculator: {questions} questions per split, {chains} chains each")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "arithmetic-cpu.yaml"))
    parser.add_argument("--steps", type=int, default=None, help="GFlowNet steps (default: the preset's)")
    parser.add_argument("--questions", type=int, default=200, help="test questions per split")
    parser.add_argument("--chains", type=int, default=5, help="chains per test question")
    parser.add_argument("--sft_epochs", type=float, default=30.0)
    parser.add_argument("--methods", default="cot_prompting,sft,gfn,grpo", help="of cot_prompting,sft,gfn,grpo")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - {"cot_prompting", "sft", "gfn", "grpo"})
    if unknown:
        parser.error(f"unknown method(s) {unknown}")
    started = time.perf_counter()

    from gfnlm.baselines.grpo import GrpoSettings
    from gfnlm.baselines.sft import SupervisedSettings
    from gfnlm.runs import fit_baseline, prepare_model, resolve, train

    OUT.mkdir(parents=True, exist_ok=True)
    overrides = {"task": {"eval_questions": str(args.questions), "eval_chains": str(args.chains)}}
    if args.steps is not None:
        overrides["steps"] = str(args.steps)
    spec = resolve("arithmetic", args.config, overrides)
    policy = prepare_model(spec)
    task, c = spec.task, spec.config
    sft_file = OUT / "arithmetic-sft.safetensors"
    results: dict[str, dict] = {}

    def evaluate(method: str, seconds: float, reward_calls: int, **extra) -> None:
        t = time.perf_counter()
        accuracy, examples = task.accuracy(policy, c, few_shot=method == "cot_prompting", label=method)
        results[method] = {"accuracy": accuracy, "train_seconds": seconds, "eval_seconds": time.perf_counter() - t,
                           "reward_calls": reward_calls, "examples": examples[:3], **extra}
        (OUT / "arithmetic-partial.json").write_text(json.dumps(results, indent=1))  # a crash keeps what is done
        print(f"{method}: " + ", ".join(f"{s} {accuracy[s]['accuracy_likelihood']:.3f} / "
                                        f"{accuracy[s]['accuracy_majority']:.3f}" for s in SPLITS), flush=True)

    if "cot_prompting" in methods:
        evaluate("cot_prompting", 0.0, 0)
    if {"sft", "gfn", "grpo"} & set(methods):
        stats = fit_baseline("sft", policy, task, SupervisedSettings(epochs=args.sft_epochs, lr=5e-4, batch_size=5,
                                                                     seed=c.seed))
        policy.save_adapter(sft_file)
        if "sft" in methods:
            evaluate("sft", stats["seconds"], 0, final_loss=stats["loss"])
    run_dir = OUT / "arithmetic-gfn"
    if "gfn" in methods:
        shutil.rmtree(run_dir, ignore_errors=True)
        gfn_spec = resolve("arithmetic", args.config, {**overrides, "output_dir": str(run_dir), "evaluate": "false",
                                                       "init_adapter": str(sft_file)})
        t = time.perf_counter()
        train(gfn_spec)
        seconds = time.perf_counter() - t
        policy.load_adapter(run_dir / "checkpoints" / sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))[-1]
                            / "adapter.safetensors")
    # The RL baseline scores as many trajectories as the GFlowNet run did (this one's, or the last saved one).
    budget = (reward_calls_of_gfn_run(run_dir, c.trajectories_per_prompt * c.prompts_per_batch,
                                      len(task.seed_trajectories()))
              if (run_dir / "metrics.jsonl").exists() else c.steps * c.trajectories_per_prompt)
    if "gfn" in methods:
        evaluate("gfn", seconds, budget, steps=c.steps)
    rl_steps = max(1, budget // c.trajectories_per_prompt)
    if "grpo" in methods:
        policy.load_adapter(sft_file)
        t = time.perf_counter()
        rows = fit_baseline("grpo", policy, task, GrpoSettings(
            steps=rl_steps, trajectories_per_prompt=c.trajectories_per_prompt, lr=c.lr, seed=c.seed))["steps"]
        evaluate("grpo", time.perf_counter() - t, sum(r["reward_calls"] for r in rows), steps=rl_steps,
                 final_train_reward=sum(r["reward"] for r in rows[-10:]) / min(10, len(rows)))

    lines = ["| method | simple in-dist | hard in-dist | OOD | train s | eval s | reward calls |", "|---|---|---|---|---|---|---|"]
    for method, r in results.items():
        acc = r["accuracy"]
        cells = [f"{acc[s]['accuracy_likelihood']:.3f} / {acc[s]['accuracy_majority']:.3f}" for s in SPLITS]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {r['train_seconds']:.0f} | {r['eval_seconds']:.0f} | "
                     f"{r['reward_calls']} |")
    table = "\n".join(lines)
    total = time.perf_counter() - started
    summary = {"config": args.config, "questions_per_split": args.questions, "chains": args.chains,
               "gfn_steps": c.steps, "total_seconds": total, "methods": results}
    (OUT / "arithmetic.json").write_text(json.dumps(summary, indent=1))
    (OUT / "arithmetic.md").write_text(table + "\n")
    image = plot(results, OUT / "arithmetic_accuracy.png", args.questions, args.chains)
    print("\naccuracy: vote by p(Y | X, Z) / majority\n" + table)
    print(f"\ntotal {total:.0f} s; {OUT / 'arithmetic.json'}; {image}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
