"""Random-number task on the embedded model with the committed CPU preset: does fine-tuning make the
LM's numbers uniform over 0..100?

Runs `gfnlm train rng --config configs/rng-cpu.yaml` into a fresh folder (training + the built-in
evaluation on 1,000 samples from the base model and from the policy), then prints the base and
policy figures side by side with the wall time, and saves them to benchmarks/out/rng.json.

  python benchmarks/rng.py [--config configs/rng-cpu.yaml] [--seed 0]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "rng-cpu.yaml"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run_dir = OUT / f"rng-seed{args.seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [sys.executable, "-m", "gfnlm.cli", "train", "rng", "--config", args.config,
               "--output_dir", str(run_dir), "--seed", str(args.seed)]
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    proc = subprocess.run(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        print(f"training failed with exit code {proc.returncode}", file=sys.stderr)
        return 1
    result = json.loads((run_dir / "eval_rng.json").read_text())
    base, policy = result["base"], result["policy"]
    summary = {
        "config": args.config, "seed": args.seed, "wall_seconds_total": wall,
        "base": {k: base[k] for k in ("valid_fraction", "distinct", "tv", "kl_valid", "exact_tv")},
        "policy": {k: policy[k] for k in ("valid_fraction", "distinct", "tv", "kl_valid", "exact_tv")},
        "tv_ratio_policy_over_base": policy["tv"] / base["tv"],
        "pass": policy["tv"] <= 0.5 * base["tv"] and policy["valid_fraction"] >= 0.95,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "rng.json").write_text(json.dumps(summary, indent=2))
    print("\n| model | valid | distinct | TV (1,000 samples) | KL(valid ‖ uniform) | exact TV |")
    print("|---|---|---|---|---|---|")
    for name in ("base", "policy"):
        r = summary[name]
        print(f"| {name} | {r['valid_fraction']:.3f} | {r['distinct']} | {r['tv']:.3f} | {r['kl_valid']:.3f} | "
              f"{r['exact_tv']:.3f} |")
    print(f"\nTV ratio policy/base {summary['tv_ratio_policy_over_base']:.3f} (goal <= 0.5), policy valid "
          f"{policy['valid_fraction']:.3f} (goal >= 0.95): {'PASS' if summary['pass'] else 'FAIL'}; "
          f"total wall time {wall:.0f} s (model load + training + evaluation)")
    print(f"Saved {OUT / 'rng.json'}")
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
