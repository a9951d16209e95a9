"""Amortize, then correct: the trained continuation policy vs the base model as the proposal of
importance sampling and SMC for p_LM(Z | X)^(1/T), at an equal budget of generated tokens.

Needs a trained continuation run (default benchmarks/out/continuation, made by
benchmarks/continuation.py, which is run first if it is missing). The comparison is the shared
evaluation harness with the methods gfn (plain policy samples), gfn_is, gfn_smc, base_is, base_smc
and sampling (plain base-model samples): for each held-out prompt each method produces --groups
outputs, each corrected output one draw from its own group of particles. The policy proposal gets
--particles particles per output; the base model, which writes longer sentences, gets as many as
generate the same number of tokens on that prompt.

  python benchmarks/correction.py [--run DIR] [--prompts 10] [--groups 4] [--particles 16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
METHODS = ["gfn", "gfn_is", "gfn_smc", "base_is", "base_smc", "sampling"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=str(OUT / "continuation"), help="trained continuation run folder")
    parser.add_argument("--prompts", type=int, default=10, help="held-out prompts used")
    parser.add_argument("--groups", type=int, default=4, help="outputs per prompt and method")
    parser.add_argument("--particles", type=int, default=16, help="particles per output for the policy proposal")
    args = parser.parse_args()
    run_dir = Path(args.run)
    if not (run_dir / "adapter").is_dir():
        if run_dir != OUT / "continuation":
            print(f"{run_dir} holds no trained run", file=sys.stderr)
            return 1
        print("no continuation run yet: running benchmarks/continuation.py first", flush=True)
        if subprocess.run([sys.executable, str(ROOT / "benchmarks" / "continuation.py")]).returncode != 0:
            return 1

    from gfnlm.evaluation.harness import COLUMNS, HEADERS, evaluate_methods
    from gfnlm.evaluation.tables import markdown_table
    from gfnlm.runs import load_run, load_trained_policy

    started = time.perf_counter()
    spec = load_run(run_dir)
    policy = load_trained_policy(spec, run_dir)
    task, T = spec.task, spec.config.reward_temp_end
    prompts = task.test_set[: args.prompts]
    rows, _, plot = evaluate_methods(
        policy, task.action_space(), task.target(policy), prompts, METHODS, args.groups, T, spec.config.seed, OUT,
        "correction", f"amortize then correct, T = {T:g}, equal token budget", particles=args.particles)
    by = {r["method"]: r for r in rows}
    claims = {
        "policy ESS/N > base ESS/N (IS)": by["gfn_is"]["ess_fraction"] > by["base_is"]["ess_fraction"],
        "policy ESS/N > base ESS/N (SMC)": by["gfn_smc"]["ess_fraction"] > by["base_smc"]["ess_fraction"],
        "policy KL < base KL (IS)": by["gfn_is"]["kl_q_p"] < by["base_is"]["kl_q_p"],
    }
    columns = [c for c in COLUMNS if c not in ("max_loglik", "distinct_1", "unique", "mean_length")]
    table = markdown_table(rows, columns, HEADERS)
    result = {"run": str(run_dir), "T": T, "prompts": len(prompts), "groups": args.groups,
              "policy_particles": args.particles, "methods": rows, "claims": claims,
              "seconds": time.perf_counter() - started, "plot": str(plot)}
    (OUT / "correction_summary.json").write_text(json.dumps(result, indent=1))
    print("\n" + table)
    for claim, ok in claims.items():
        print(f"  [{'yes' if ok else 'no '}] {claim}")
    print(f"Total {result['seconds']:.0f} s. Plot: {plot}\nSaved {OUT / 'correction_summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
