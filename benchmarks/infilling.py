"""Story infilling on the embedded model: prompting (with and without solved examples), left-to-right
sampling from the beginning only, SFT of the policy on (beginning, ending) -> middle, and GFlowNet
fine-tuning, on the held-out stories of the project's story set (or --data / --test_data files in the
ROCStories layout).

Steps: (1) a prior p_LM: the embedded model fine-tuned on the complete training stories (`gfnlm prior`;
--no-prior skips it); (2) `gfnlm train infilling` from that prior (configs/infilling-cpu.yaml), whose
evaluation samples N middles per test story with every method and scores them (BLEU-4, GLEU-4,
BERTScore, coherence, diversity, log p(Z . Y | X)). Times: the prior is shared by all methods and
reported apart; gfn includes its training, sft its fine-tuning. Prints and saves
benchmarks/out/infilling.json, infilling.md and infilling_frontier.png.

  python benchmarks/infilling.py [--steps 120] [--samples 8] [--stories 50] [--no-prior] [--seed-gold]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "infilling-cpu.yaml"))
    parser.add_argument("--data", default="", help="stories CSV (default: the built-in set)")
    parser.add_argument("--test_data", default="", help="held-out stories CSV (default: the last 50 of --data)")
    parser.add_argument("--steps", type=int, default=None, help="GFlowNet steps (default: the preset's)")
    parser.add_argument("--samples", type=int, default=8, help="N samples per story and method")
    parser.add_argument("--stories", type=int, default=50, help="held-out stories evaluated")
    parser.add_argument("--prior_epochs", type=float, default=3.0)
    parser.add_argument("--no-prior", action="store_true", help="use the base model itself as p_LM")
    parser.add_argument("--seed-gold", action="store_true", help="seed the buffer with the gold training middles")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from gfnlm.baselines.sft import SupervisedSettings
    from gfnlm.runs import prepare_model, resolve, train
    from gfnlm.tasks.infilling.prior import finetune_prior

    OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    task = {"eval_stories": str(args.stories), "eval_samples": str(args.samples), "seed_gold": str(args.seed_gold)}
    task.update({k: v for k, v in (("data", args.data), ("test_data", args.test_data)) if v})
    prior_seconds, model = 0.0, None
    if not args.no_prior:
        prior = OUT / "story-prior"
        shutil.rmtree(prior, ignore_errors=True)
        t = time.perf_counter()
        prior_spec = resolve("infilling", args.config, {"task": dict(task)})
        finetune_prior(prior_spec, prepare_model(prior_spec), prior,
                       SupervisedSettings(epochs=args.prior_epochs, lr=5e-4, batch_size=8))
        prior_seconds, model = time.perf_counter() - t, str(prior)
    run_dir = OUT / "infilling-gfn"
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = {"output_dir": str(run_dir), "task": task}
    if model:
        overrides["model"] = model
    if args.steps is not None:
        overrides["steps"] = str(args.steps)
    t = time.perf_counter()
    train(resolve("infilling", args.config, overrides))
    train_seconds = sum(json.loads(line)["seconds"] for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    evaluation = json.loads((run_dir / "eval_infilling.json").read_text())
    rows = evaluation["rows"]
    for r in rows:
        if r["method"] == "gfn":
            r["seconds"] += train_seconds
    columns = ["bleu4", "gleu4", "bertscore", "bertscore_rescaled", "coherence", "coherence_win", "diversity",
               "log_p_zy", "seconds"]
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += ["| " + r["method"] + " | " + " | ".join(f"{r[c]:.3f}" if c != "seconds" else f"{r[c]:.0f}" for c in columns)
              + " |" for r in rows]
    table = "\n".join(lines)
    total = time.perf_counter() - started
    result = {"rows": rows, "prior_seconds": prior_seconds, "gfn_train_seconds": train_seconds,
              "bertscore_baseline": evaluation["bertscore_baseline"], "prior": model is not None,
              "seed_gold": args.seed_gold, "stories": args.stories, "samples": args.samples, "total_seconds": total,
              "examples": evaluation["examples"][:5]}
    (OUT / "infilling.json").write_text(json.dumps(result, indent=1))
    (OUT / "infilling.md").write_text(f"{table}\n\nprior {prior_seconds:.0f} s, total {total:.0f} s\n")
    shutil.copy(run_dir / "infilling_frontier.png", OUT / "infilling_frontier.png")
    print(table)
    print(f"prior {prior_seconds:.0f} s, GFlowNet training {train_seconds:.0f} s, total {total:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
