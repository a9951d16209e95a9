"""`gfnlm compare`: one table and one frontier plot from the evaluations of several runs.

Every run contributes its policy row ("gfn") labelled with the run folder and its temperature, and
its token-tempered row (which depends on T); the temperature-free baselines come from the first run.
A temperature-conditional run contributes its rows at each temperature it was evaluated at.
"""

from __future__ import annotations

from pathlib import Path

from gfnlm.evaluation.harness import COLUMNS, HEADERS
from gfnlm.evaluation.plots import plot_frontier
from gfnlm.evaluation.tables import evaluation_stem, read_table, write_table
from gfnlm.infra.errors import GfnlmError
from gfnlm.model.temperature import parse_temperatures

PER_RUN = ("gfn", "tempered")


def _tables(run_dir: Path, spec) -> list[tuple[float, Path]]:
    """(T, evaluation table) of a run: one, or one per temperature of a temperature-conditional run."""
    if spec.config.conditional_temperatures:
        found = [(t, run_dir / f"{evaluation_stem(spec.task_name, t)}.csv")
                 for t in parse_temperatures(spec.config.conditional_temperatures)[1]]
    else:
        found = [(spec.config.reward_temp_end, run_dir / f"{evaluation_stem(spec.task_name)}.csv")]
    missing = [path.name for _, path in found if not path.is_file()]
    if missing:
        raise GfnlmError(f"{run_dir} has no {', '.join(missing)}; run `gfnlm eval {spec.task_name} --run {run_dir}` "
                         "first.")
    return found


def compare_runs(runs: list[tuple[Path, object]], out_dir: Path) -> tuple[str, Path]:
    """``runs``: (run folder, its RunSpec as ``gfnlm.runs.load_run`` reads it)."""
    rows = []
    run_dirs = [run_dir for run_dir, _ in runs]
    for index, (run_dir, spec) in enumerate(runs):
        tables = _tables(run_dir, spec)
        for t_index, (temperature, table) in enumerate(tables):
            for row in read_table(table):
                if row["method"] in PER_RUN:
                    row["method"] = f"{row['method']} T={temperature:g} ({run_dir.name})"
                elif index > 0 or t_index > 0:
                    continue
                rows.append(row)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = write_table(rows, COLUMNS, out_dir / "compare", HEADERS)
    plot = plot_frontier(out_dir / "compare_frontier.png", rows, "diversity", "mean_loglik",
                         "embedding diversity (1 - mean pairwise cosine)", "mean log p_LM(Z | X)",
                         "likelihood vs diversity, " + ", ".join(d.name for d in run_dirs))
    return markdown, plot
