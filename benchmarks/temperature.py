"""One policy for every temperature: a temperature-conditional continuation policy (trained once over a
range of reward temperatures) against policies trained separately at one temperature each.

Runs (in benchmarks/out/temperature/, each trained with `gfnlm train continuation` and the CPU preset
unless it is already there):
- single-T<T>-seed<S>: reward_temp_end T, seeds --single-seeds (0 and 1), for each T in --temperatures,
  with the preset's learned log Z(X); with --single-log-z batch they estimate log Z from each batch as the
  conditional run must (single-T<T>-batchlogz-seed<S>);
- conditional-<input>-<steps>steps-seed<s>: --conditional_temperatures <range> --log_z batch, reading T as a
  learned embedding (--input embedding, the default; its learning rate x --embedding-lr-scale, named
  -elr<x> in the run dir when not 1; with --logit-scale also a learned factor on its logits, -lscale, with
  --stop-offset a learned offset b + x(T) w on its stop token's logit, -stop (-stopw with --stop-slope-only:
  w alone, b = 0), both at learning rate
  x --logit-scale-lr-scale, -lslr<x>; one run per seed in --conditional-seeds) or
  a prompt tag (--input text), with as many steps as the
  single-temperature runs it replaces together (--conditional-steps, default 2 x the preset's).
Each policy is evaluated (once: a run's saved evaluation is reused) by the shared harness ("gfn" only) on
the held-out prompts at each T: mean log p_LM(Z | X), embedding diversity, and the importance estimates
of KL(q || p_T) and ESS / N. The check, for each conditional seed: at each T the conditional policy's
(log-likelihood, diversity) point lies within the spread (min..max) of the single-temperature policies (two
seeds unless --single-seeds); also shown, whether its KL(q || p_T) estimate is no larger than the largest
single-temperature one (no further from the target than a policy trained for that T alone).

  python benchmarks/temperature.py [--temperatures 0.8,0.95] [--range 0.8:1.0] [--input embedding|text]
                                   [--conditional-steps N] [--embedding-lr-scale X]
                                   [--single-log-z learned|batch] [--logit-scale] [--stop-offset [--stop-slope-only]]
                                   [--logit-scale-lr-scale X] [--conditional-seeds 0,1] [--single-seeds 0,1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"


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


def within(value: float, points: list[float]) -> bool:
    return min(points) <= value <= max(points)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--temperatures", default="0.8,0.95", help="temperatures compared")
    parser.add_argument("--range", default="0.8:1.0", help="the conditional policy's training range")
    parser.add_argument("--input", default="embedding", choices=["embedding", "text"], help="how it reads T")
    parser.add_argument("--conditional-steps", type=int, default=None,
                        help="its training steps (default: 2 x the preset's, the compute of two single-T runs)")
    parser.add_argument("--single-log-z", default="learned", choices=["learned", "batch"],
                        help="log Z of the single-temperature runs (the conditional run always uses batch)")
    parser.add_argument("--embedding-lr-scale", type=float, default=1.0,
                        help="its temperature embedding's learning rate as a multiple of lr (run dir gains -elr<x>)")
    parser.add_argument("--logit-scale", action="store_true",
                        help="the conditional policy also learns a factor exp(c(T)) on its logits (run dir gains -lscale)")
    parser.add_argument("--stop-offset", action="store_true",
                        help="the conditional policy also learns an offset b + x(T) w on its stop token's logit "
                             "(run dir gains -stop)")
    parser.add_argument("--stop-slope-only", action="store_true",
                        help="with --stop-offset: learn only w, b stays 0 (run dir gains -stopw instead of -stop)")
    parser.add_argument("--logit-scale-lr-scale", type=float, default=1.0,
                        help="with --logit-scale / --stop-offset: their scalars' learning rate as a multiple of lr "
                             "(run dir gains -lslr<x>)")
    parser.add_argument("--conditional-seeds", "--conditional-seed", dest="conditional_seeds", default="0",
                        help="the conditional runs' seeds (one run each; each is checked on its own)")
    parser.add_argument("--single-seeds", default="0,1", help="seeds of the single-temperature runs per T")
    args = parser.parse_args()
    single_seeds = [int(s) for s in args.single_seeds.split(",") if s.strip()]
    conditional_seeds = [int(s) for s in args.conditional_seeds.split(",") if s.strip()]
    if not conditional_seeds:
        parser.error("--conditional-seeds needs at least one seed")
    if args.stop_slope_only and not args.stop_offset:
        parser.error("--stop-slope-only needs --stop-offset")
    if len(single_seeds) < 2:
        parser.error("--single-seeds needs at least two seeds: the check is against their spread")
    temperatures = [float(t) for t in args.temperatures.split(",") if t.strip()]
    out_dir = OUT / "temperature"
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_seconds = {}
    runs = {}
    log_z = "-batchlogz" if args.single_log_z == "batch" else ""
    for t in temperatures:
        for seed in single_seeds:
            name = f"single-T{t:g}{log_z}-seed{seed}"
            runs[name] = out_dir / name
            train_seconds[name] = train(runs[name], ["--reward_temp_end", str(t), "--log_z", args.single_log_z,
                                                     "--seed", str(seed)])
    preset = yaml.safe_load((ROOT / "configs" / "continuation-cpu.yaml").read_text())
    steps = args.conditional_steps or 2 * preset["steps"]
    scaled = f"-elr{args.embedding_lr_scale:g}" if args.embedding_lr_scale != 1 else ""
    scaled += "-lscale" if args.logit_scale else ""
    scaled += ("-stopw" if args.stop_slope_only else "-stop") if args.stop_offset else ""
    logit_scale_lr_scaled = (args.logit_scale or args.stop_offset) and args.logit_scale_lr_scale != 1
    scaled += f"-lslr{args.logit_scale_lr_scale:g}" if logit_scale_lr_scaled else ""
    conditional = {seed: out_dir / f"conditional-{args.input}-{steps}steps{scaled}-seed{seed}"
                   for seed in conditional_seeds}
    for seed, run_dir in conditional.items():
        train_seconds[f"conditional-seed{seed}"] = train(
            run_dir, ["--conditional_temperatures", args.range, "--log_z", "batch", "--temperature_input", args.input,
                      "--steps", str(steps), "--temperature_embedding_lr_scale", str(args.embedding_lr_scale),
                      "--seed", str(seed), "--temperature_logit_scale", str(args.logit_scale).lower(),
                      "--temperature_stop_offset", str(args.stop_offset).lower(),
                      "--temperature_stop_offset_bias", str(not args.stop_slope_only).lower(),
                      "--temperature_logit_scale_lr_scale", str(args.logit_scale_lr_scale)])

    from gfnlm.evaluation.plots import plot_frontier
    from gfnlm.evaluation.tables import markdown_table
    from gfnlm.runs import load_run, load_trained_policy

    def evaluate(run_dir: Path, temperature: float) -> dict:
        spec = load_run(run_dir)
        task = spec.task
        saved = run_dir / f"eval_T{temperature:g}.json"
        if saved.is_file():  # evaluated by an earlier run of this script: the same harness, prompts and samples
            earlier = json.loads(saved.read_text())
            if earlier["n"] == task.config.eval_samples and earlier["temperature"] == temperature:
                print(f"  reusing {saved}", flush=True)
                return {**earlier["methods"][0], "steps": spec.config.steps, "prompts": earlier["prompts"],
                        "samples": earlier["n"]}
        policy = load_trained_policy(spec, run_dir)
        t0 = time.perf_counter()
        result = task.evaluate_at(policy, run_dir, spec.config, temperature, methods=["gfn"],
                                  stem=f"eval_T{temperature:g}")
        return {**result.metrics["gfn"], "seconds": time.perf_counter() - t0, "steps": spec.config.steps,
                "prompts": len(task.test_set), "samples": task.config.eval_samples}

    results = []
    lr_note = f", e(T) lr x{args.embedding_lr_scale:g}" if args.embedding_lr_scale != 1 else ""
    lr_note += ", logit scale" if args.logit_scale else ""
    lr_note += (", stop offset (w only)" if args.stop_slope_only else ", stop offset") if args.stop_offset else ""
    lr_note += f" lr x{args.logit_scale_lr_scale:g}" if logit_scale_lr_scaled else ""
    for t in temperatures:
        for seed in single_seeds:
            name = f"single-T{t:g}{log_z}-seed{seed}"
            print(f"evaluating {name} at T = {t:g}", flush=True)
            results.append({"T": t, "policy": f"trained at T = {t:g} (log Z {args.single_log_z}), seed {seed}",
                            "label": f"T={t:g} single, seed {seed}",
                            "kind": "single",
                            **evaluate(runs[name], t)})
        for seed, run_dir in conditional.items():
            print(f"evaluating the conditional policy, seed {seed}, at T = {t:g}", flush=True)
            results.append({"T": t, "policy": f"conditional ({args.range}, {args.input}{lr_note}, {steps} steps), "
                                              f"seed {seed}",
                            "label": f"T={t:g} conditional, seed {seed}", "kind": "conditional", "seed": seed,
                            **evaluate(run_dir, t)})
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
    columns = ["T", "policy", "mean_loglik", "diversity", "mean_length", "kl_q_p", "ess_fraction", "seconds"]
    headers = {"mean_loglik": "mean log p(Z ∣ X)", "diversity": "embedding diversity", "mean_length": "tokens",
               "kl_q_p": "KL(q ‖ p_T) (IS)", "ess_fraction": "ESS / N", "seconds": "eval s"}
    table = markdown_table(results, columns, headers)
    plot = plot_frontier(OUT / "temperature_frontier.png",
                         [{**r, "method": r["label"]} for r in results],
                         "diversity", "mean_loglik", "embedding diversity (1 - mean pairwise cosine)",
                         "mean log p_LM(Z | X)", f"conditional policies ({args.range}, stars) vs single-temperature ones",
                         highlight=lambda r: r["kind"] == "conditional")
    summary = {"temperatures": temperatures, "range": args.range, "input": args.input, "conditional_steps": steps,
               "embedding_lr_scale": args.embedding_lr_scale, "logit_scale": args.logit_scale,
               "stop_offset": args.stop_offset, "stop_slope_only": args.stop_slope_only,
               "logit_scale_lr_scale": args.logit_scale_lr_scale,
               "single_log_z": args.single_log_z, "single_seeds": single_seeds,
               "conditional_seeds": conditional_seeds, "results": results, "claims": claims,
               "closeness": closeness, "seeds_passing": passing,
               "train_seconds": train_seconds, "total_seconds": time.perf_counter() - started, "plot": str(plot)}
    (OUT / "temperature.json").write_text(json.dumps(summary, indent=1))
    print("\n" + table)
    for claim, ok in {**claims, **closeness}.items():
        print(f"  [{'yes' if ok else 'no '}] {claim}")
    print(f"conditional seeds inside the single-T spread on both axes at every T: {len(passing)} of "
          f"{len(conditional_seeds)} ({', '.join(map(str, passing)) or 'none'})")
    print("training seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in train_seconds.items()))
    print(f"Total {summary['total_seconds']:.0f} s. Plot: {plot}\nSaved {OUT / 'temperature.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
