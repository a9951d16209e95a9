"""The three posterior examples of examples/ on the embedded model, one after the other, each timed from the
command line as a user runs it (training + evaluation); writes docs/results/posteriors.md and the plots.

  python benchmarks/posteriors.py [--only keyword,infilling,word_count] [--fresh]

Each finished example is kept in benchmarks/out/posteriors/<name>/ (its run folder and wall time) and reused
unless --fresh: the command can be finished over several invocations.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput_saved import code_commit, cpu_info, describe_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out" / "posteriors"
PAGE = ROOT / "docs" / "results" / "posteriors.md"
IMAGES = ROOT / "docs" / "images"
EXAMPLES = {
    "keyword": ["gfnlm", "train", "posterior", "--config", "examples/keyword/keyword.yaml"],
    "infilling": ["gfnlm", "train", "posterior", "--config", "examples/infilling/infilling.yaml"],
    "word_count": [sys.executable, "examples/word_count/word_count.py"],
}
COLUMNS = ["method", "rate", "mean_loglik", "nonzero_reward", "diversity", "distinct_2", "mean_length",
           "tokens_per_output", "kl_q_p", "ess_fraction"]
HEADERS = {"rate": "constraint rate", "mean_loglik": "mean log R", "nonzero_reward": "R > 0",
           "diversity": "embedding diversity", "distinct_2": "distinct-2", "mean_length": "tokens",
           "tokens_per_output": "generated tokens / output", "kl_q_p": "KL(q ‖ p) (IS)", "ess_fraction": "ESS / N"}


def run_example(name: str, fresh: bool) -> dict:
    folder = OUT / name
    record = folder / "timing.json"
    if record.is_file() and not fresh:
        print(f"{name}: reusing {folder}", flush=True)
        return json.loads(record.read_text())
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    command = EXAMPLES[name] + ["--output_dir", str(folder / "run")]
    print(f"{name}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    shown = ["python" if part == sys.executable else part for part in EXAMPLES[name]]
    timing = {"command": " ".join(shown), "seconds": time.perf_counter() - started,
              "commit": code_commit()[:12], "cpu": describe_cpu(cpu_info()),
              "threads": os.environ.get("OMP_NUM_THREADS", "all cores")}
    record.write_text(json.dumps(timing, indent=1))
    return timing


def table(name: str) -> str:
    summary = json.loads((OUT / name / "run" / "eval_posterior_summary.json").read_text())
    rows = []
    for method, row in summary.items():
        rates = [v for k, v in row.items() if k.startswith("rate: ")]
        row = {**row, "rate": min(rates) if rates else None}
        rows.append(row)
    from gfnlm.evaluation.tables import markdown_table

    terms = [k for k in rows[0] if k.startswith("mean: ")]  # each LM / function term's mean value
    columns = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    columns[2:2] = terms
    if all(r.get("nonzero_reward", 1) == 1 for r in rows):
        columns.remove("nonzero_reward")
    return markdown_table(rows, columns, HEADERS)


def summary(names: list[str], timings: dict) -> str:
    """The opening table: per example, the policy against the base model's plain and budgeted samplers."""
    rows = []
    for name in names:
        methods = json.loads((OUT / name / "run" / "eval_posterior_summary.json").read_text())
        for method in ("gfn", "sampling", "base_rejection", "base_smc", "base_is"):
            if method in methods:
                row = methods[method]
                rates = [v for k, v in row.items() if k.startswith("rate: ")]
                rows.append({**row, "example": name, "seconds": f"{timings[name]['seconds']:.0f}",
                             "rate": min(rates) if rates else None})
    from gfnlm.evaluation.tables import markdown_table

    columns = ["example", "seconds", "method", "rate", "mean_loglik", "diversity", "tokens_per_output"]
    return markdown_table(rows, columns, {**HEADERS, "seconds": "wall time (s)"})


def samples(name: str, methods=("gfn", "sampling"), per_method: int = 3) -> str:
    lines = []
    first = None
    for line in (OUT / name / "run" / "eval_posterior_samples.jsonl").read_text().splitlines():
        record = json.loads(line)
        first = first or record["prompt"]
        if record["prompt"] == first and record["method"] in methods:
            shown = "; ".join(repr(t) for t in record["completions"][:per_method])
            lines.append(f"- {record['method']}: {shown}")
    return f"Input: {first!r}\n\n" + "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(EXAMPLES))
    parser.add_argument("--fresh", action="store_true", help="run again even when a finished run is saved")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    for name in names:
        run_example(name, args.fresh)
    done = [n for n in EXAMPLES if (OUT / n / "timing.json").is_file()]
    timings = {n: json.loads((OUT / n / "timing.json").read_text()) for n in done}
    sections = []
    for name in done:
        t = timings[name]
        plot = IMAGES / f"posterior_{name}_frontier.png"
        shutil.copyfile(OUT / name / "run" / "eval_posterior_frontier.png", plot)
        sections.append("\n".join([
            f"## {name}", "", f"`{t['command']}`: {t['seconds']:.0f} s for training and evaluation (torch threads: "
            f"{t['threads']}), commit {t['commit']}, {t['cpu']}, one seed.",
            "", table(name), "", samples(name), "", f"![{name}](../images/{plot.name})"]))
    notes = PAGE.read_text().partition(NOTES)[2] if PAGE.is_file() else ""  # the hand-written reading, kept
    PAGE.write_text(PAGE_HEAD + summary(done, timings) + "\n\n" + "\n\n".join(sections) + f"\n\n{NOTES}"
                    + (notes or "\n"))
    print(f"Wrote {PAGE}")
    return 0


PAGE_HEAD = """# Posteriors of your own: the three examples

Regenerate: `python benchmarks/posteriors.py` (each example as a user runs it, one after the other; finished
ones are reused). The tables are each run's evaluation on its held-out inputs, N = 8 samples per input and
method; "constraint rate" is the fraction of outputs that satisfy every constraint term, "mean log R" the mean
log-reward of the outputs with R > 0. Base-model methods with a budget (base_rejection, base_smc, base_is)
and the policy's corrected methods spend 8 policy samples' worth of generated tokens per output. One seed:
a gap smaller than the spread over seeds (not measured here) is not a finding.

"""
NOTES = "<!-- reading: kept when the page is regenerated -->"

if __name__ == "__main__":
    raise SystemExit(main())
