"""How much of a difference between two runs' evaluations is the evaluation's own noise.

A run evaluated with N samples per prompt (e.g. ``benchmarks/temperature.py --eval-samples 64``) holds K
disjoint sets of N / K samples per prompt. Scored apart, each set is one evaluation with N / K samples per
prompt (the same prompts, the same policy): the spread of their run-level figures, mean log p(Z | X) and
embedding diversity (per prompt, then averaged over prompts as the harness does), is the noise of such an
evaluation, to be set beside the spread between seeds or settings.

  python benchmarks/evaluation_noise.py RUN_DIR [RUN_DIR ...] --stem eval_T0.95-n64 --groups 4

Prints one row per run (the figures on all N samples, each group's, and the groups' standard deviation),
saves benchmarks/out/evaluation_noise.json and a plot benchmarks/out/evaluation_noise.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def read_samples(run_dir: Path, stem: str) -> list[dict]:
    """The harness's saved samples of the "gfn" method, one record per prompt."""
    path = run_dir / f"{stem}_samples.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: evaluate the run first (its stem is {stem!r}).")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if r["method"] == "gfn"]


def group_figures(records: list[dict], groups: int, encoder=None) -> dict:
    """Run-level mean log-likelihood and diversity on all samples and on each of ``groups`` disjoint
    consecutive sets of samples per prompt (each prompt's texts are encoded once)."""
    from gfnlm.evaluation.diversity import cosine_similarities, diversity_from_similarities

    n = len(records[0]["completions"])
    if any(len(r["completions"]) != n for r in records):
        raise SystemExit("the prompts hold different numbers of samples")
    if n % groups or n // groups < 2:
        raise SystemExit(f"{n} samples per prompt do not split into {groups} sets of two or more")
    size = n // groups
    parts = [slice(g * size, (g + 1) * size) for g in range(groups)]  # the same positions for every prompt
    per_prompt = []  # (all, [group 0, group 1, ...]) of (loglik, diversity) per prompt
    for record in records:
        sims = cosine_similarities(record["completions"], encoder)
        loglik = record["log_likelihoods"]
        per_prompt.append(((statistics.mean(loglik), diversity_from_similarities(sims)),
                           [(statistics.mean(loglik[p]), diversity_from_similarities(sims[p, p])) for p in parts]))
    mean = statistics.fmean
    by_group = [{"mean_loglik": mean(g[k][0] for _, g in per_prompt), "diversity": mean(g[k][1] for _, g in per_prompt)}
                for k in range(groups)]
    return {"samples": n, "group_samples": size, "prompts": len(records),
            "mean_loglik": mean(a[0] for a, _ in per_prompt), "diversity": mean(a[1] for a, _ in per_prompt),
            "groups": by_group,
            "group_sd": {key: statistics.stdev(g[key] for g in by_group) for key in ("mean_loglik", "diversity")}}


def plot_groups(path: Path, figures: dict[str, dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.6))
    for i, (name, f) in enumerate(figures.items()):
        color = f"C{i % 10}"
        ax.scatter([g["diversity"] for g in f["groups"]], [g["mean_loglik"] for g in f["groups"]], color=color,
                   alpha=0.5, s=20)
        ax.scatter([f["diversity"]], [f["mean_loglik"]], color=color, marker="*", s=120, label=name)
    ax.set_xlabel("embedding diversity")
    ax.set_ylabel("mean log p_LM(Z | X)")
    first = next(iter(figures.values()))
    ax.set_title(f"each run on all {first['samples']} samples per prompt (stars) and on disjoint sets of "
                 f"{first['group_samples']} (dots)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the points, never on them
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="evaluated run folders")
    parser.add_argument("--stem", required=True, help="the evaluation's file stem, e.g. eval_T0.95-n64")
    parser.add_argument("--groups", type=int, default=4, help="disjoint sets of samples per prompt")
    args = parser.parse_args()
    if args.groups < 2:
        parser.error("--groups must be at least 2 (a spread needs two sets)")
    runs = [Path(r) for r in args.runs]
    records = {run.name: read_samples(run, args.stem) for run in runs}  # every file read before any encoding
    from gfnlm.evaluation.diversity import sentence_encoder
    from gfnlm.evaluation.tables import markdown_table

    encoder = sentence_encoder()
    figures = {name: group_figures(r, args.groups, encoder) for name, r in records.items()}
    rows = [{"run": name, "loglik": f"{f['mean_loglik']:.2f}",
             "loglik_groups": " / ".join(f"{g['mean_loglik']:.2f}" for g in f["groups"]),
             "loglik_sd": f"{f['group_sd']['mean_loglik']:.2f}", "diversity": f"{f['diversity']:.3f}",
             "diversity_groups": " / ".join(f"{g['diversity']:.3f}" for g in f["groups"]),
             "diversity_sd": f"{f['group_sd']['diversity']:.4f}"} for name, f in figures.items()]
    first = next(iter(figures.values()))
    n, size = first["samples"], first["group_samples"]
    table = markdown_table(rows, list(rows[0]), {
        "loglik": f"mean log p(Z ∣ X), {n}", "loglik_groups": f"... each set of {size}",
        "loglik_sd": f"sd at {size}", "diversity": f"diversity, {n}", "diversity_groups": f"... each set of {size}",
        "diversity_sd": f"sd at {size}"})
    print(table)
    mean_sd = {key: statistics.fmean(f["group_sd"][key] for f in figures.values())
               for key in ("mean_loglik", "diversity")}
    print(f"\nmean over runs of the sd of one evaluation with {size} samples per prompt: log-likelihood "
          f"{mean_sd['mean_loglik']:.2f} nats, diversity {mean_sd['diversity']:.4f}")
    OUT.mkdir(parents=True, exist_ok=True)
    plot = plot_groups(OUT / "evaluation_noise.png", figures)
    (OUT / "evaluation_noise.json").write_text(json.dumps({"stem": args.stem, "groups": args.groups, "runs": figures,
                                                           "mean_group_sd": mean_sd}, indent=1))
    print(f"Saved {OUT / 'evaluation_noise.json'}, plot {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
