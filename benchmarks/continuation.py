"""Next-sentence sampling at T = 0.8 on the embedded model: likelihood vs diversity of the GFlowNet
policy against decoding baselines, on the held-out built-in prompts.

1. `gfnlm train continuation --config configs/continuation-cpu.yaml` (training + the harness: every
   method, N samples per test prompt);
2. a sweep of token-level tempered sampling over several temperatures on the same prompts, which
   traces the curve the policy is compared with "at equal diversity" (the log-likelihood of that curve
   interpolated at the policy's diversity) and "at equal log-likelihood";
3. checks and prints the claims, saves benchmarks/out/continuation.json and a frontier plot.

  python benchmarks/continuation.py [--config configs/continuation-cpu.yaml] [--sweep 0.5,0.6,0.7,0.9,1.0]
  python benchmarks/continuation.py --replot   # checks and plot again from the saved figures
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """y at x on the piecewise-linear curve through ``points`` (sorted by x); None outside its range."""
    points = sorted(points)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "continuation-cpu.yaml"))
    parser.add_argument("--sweep", default="0.5,0.6,0.7,0.9,1.0", help="token temperatures of the tempered curve")
    parser.add_argument("--reuse", action="store_true", help="reuse a finished training run in benchmarks/out")
    parser.add_argument("--replot", action="store_true",
                        help="only redo the checks and the plot from benchmarks/out/continuation.json")
    args = parser.parse_args()
    sweep = [float(t) for t in args.sweep.split(",") if t.strip()]
    run_dir = OUT / "continuation"
    started = time.perf_counter()
    from gfnlm.evaluation.plots import plot_frontier

    if args.replot:
        saved = json.loads((OUT / "continuation.json").read_text())
        summary, T, steps = saved["methods"], saved["T"], saved["steps"]
        n_prompts, n_samples = saved["test_prompts"], saved["samples_per_prompt"]
        curve = {float(t): r for t, r in saved["tempered_curve"].items()}
        train_and_eval_seconds = saved["train_and_eval_seconds"]
        started -= saved["total_seconds"]
    else:
        if not (args.reuse and (run_dir / "eval_continuation_summary.json").is_file()):
            shutil.rmtree(run_dir, ignore_errors=True)
            command = [sys.executable, "-m", "gfnlm.cli", "train", "continuation", "--config", args.config,
                       "--output_dir", str(run_dir)]
            print("$ " + " ".join(command), flush=True)
            if subprocess.run(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode != 0:
                print("training failed", file=sys.stderr)
                return 1
        train_and_eval_seconds = time.perf_counter() - started

        from gfnlm.evaluation.harness import evaluate_methods
        from gfnlm.runs import load_run, load_trained_policy

        spec = load_run(run_dir)
        summary = json.loads((run_dir / "eval_continuation_summary.json").read_text())
        T, steps = spec.config.reward_temp_end, spec.config.steps
        policy = load_trained_policy(spec, run_dir)
        task = spec.task
        prompts = task.test_set[: task.config.eval_prompts or None]
        n_prompts, n_samples = len(prompts), task.config.eval_samples
        curve = {}
        sweep_dir = OUT / "continuation-sweep"
        sweep_dir.mkdir(parents=True, exist_ok=True)
        for tau in sweep:
            print(f"token-tempered sampling at tau = {tau:g} ...", flush=True)
            rows, _, _ = evaluate_methods(policy, task.action_space(), task.target(policy), prompts, ["tempered"],
                                          n_samples, tau, spec.config.seed, sweep_dir, f"tempered-{tau:g}",
                                          f"tau {tau:g}", progress=True)
            curve[tau] = rows[0]
        curve[T] = summary["tempered"]
    points = [(r["diversity"], r["mean_loglik"]) for r in curve.values()]
    gfn = summary["gfn"]
    at_equal_diversity = interpolate(points, gfn["diversity"])
    diversity_at_equal_loglik = interpolate([(y, x) for x, y in points], gfn["mean_loglik"])
    dominated_by_gfn = [t for t, r in curve.items()
                        if r["diversity"] <= gfn["diversity"] and r["mean_loglik"] <= gfn["mean_loglik"]]
    claims = {
        "gfn mean log-likelihood > plain sampling": gfn["mean_loglik"] > summary["sampling"]["mean_loglik"],
        "gfn mean log-likelihood > nucleus": gfn["mean_loglik"] > summary["nucleus"]["mean_loglik"],
        "gfn diversity > beam search": gfn["diversity"] > summary["beam"]["diversity"],
        "gfn diversity > diverse beam search": gfn["diversity"] > summary["diverse_beam"]["diversity"],
        "gfn log-likelihood > tempered curve at equal diversity":
            None if at_equal_diversity is None else gfn["mean_loglik"] > at_equal_diversity,
        "gfn diversity > tempered curve at equal log-likelihood (n/a: above the whole curve)":
            None if diversity_at_equal_loglik is None else gfn["diversity"] > diversity_at_equal_loglik,
        "KL(q || p_T) falls with training": gfn["kl_q_p"] < summary["sampling"]["kl_q_p"],
    }
    rows = [{**r, "method": m} for m, r in summary.items()]
    rows += [{**r, "method": f"tau={tau:g}"} for tau, r in sorted(curve.items()) if tau not in (T, 1.0)]
    plot = plot_frontier(OUT / "continuation_frontier.png", rows, "diversity", "mean_loglik",
                         "embedding diversity (1 - mean pairwise cosine)", "mean log p_LM(Z | X)",
                         f"next sentence, T = {T:g}: {n_prompts} held-out prompts x {n_samples} samples",
                         curve=points, curve_label="token-level tempered sampling, tau = 0.5 ... 1.0")
    result = {"config": args.config, "T": T, "steps": steps, "test_prompts": n_prompts,
              "samples_per_prompt": n_samples, "train_and_eval_seconds": train_and_eval_seconds,
              "total_seconds": time.perf_counter() - started, "methods": summary,
              "tempered_curve": {f"{t:g}": curve[t] for t in sorted(curve)},
              "tempered_loglik_at_gfn_diversity": at_equal_diversity,
              "tempered_diversity_at_gfn_loglik": diversity_at_equal_loglik,
              "tempered_taus_dominated_by_gfn": sorted(dominated_by_gfn), "claims": claims, "plot": str(plot)}
    (OUT / "continuation.json").write_text(json.dumps(result, indent=1))
    from gfnlm.evaluation.harness import COLUMNS, HEADERS
    from gfnlm.evaluation.tables import markdown_table

    print(markdown_table(rows, COLUMNS, HEADERS))
    print("tempered curve (tau: diversity, mean log-likelihood): " +
          ", ".join(f"{t:g}: {curve[t]['diversity']:.3f}, {curve[t]['mean_loglik']:.2f}" for t in sorted(curve)))
    for claim, ok in claims.items():
        print(f"  [{'yes' if ok else 'no ' if ok is not None else 'n/a'}] {claim}")
    print(f"tempered temperatures with both lower log-likelihood and lower diversity than gfn: {sorted(dominated_by_gfn)}")
    print(f"KL(q || p_T) estimate: {summary['sampling']['kl_q_p']:.3f} before training -> {gfn['kl_q_p']:.3f} after")
    print(f"Total {result['total_seconds']:.0f} s. Plot: {plot}\nSaved {OUT / 'continuation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
