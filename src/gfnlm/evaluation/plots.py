"""PNG plots: training curves and the histogram of a discrete distribution against its target."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gfnlm.infra.metrics_log import read_metrics  # noqa: E402


def plot_training_curves(run_dir: Path, extra: tuple[str, ...] = ()) -> Path | None:
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    if not rows:
        return None
    panels = [("loss", True), ("log_reward", False), ("reward_temperature", False), ("log_z", False)]
    panels += [(name, False) for name in extra]
    panels = [(k, log) for k, log in panels if any(r.get(k) is not None for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    axes = [axes] if len(panels) == 1 else axes
    for ax, (key, log_scale) in zip(axes, panels):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], lw=1)
        if len(points) >= 20:  # a moving average makes noisy curves readable
            k = max(5, len(points) // 20)
            ys = [sum(p[1] for p in points[max(0, i - k + 1): i + 1]) / len(points[max(0, i - k + 1): i + 1])
                  for i in range(len(points))]
            ax.plot([p[0] for p in points], ys, lw=2)
        if log_scale and all(p[1] > 0 for p in points):
            ax.set_yscale("log")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(run_dir) / "training_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_histograms(path: Path, support: list, series: dict[str, dict], title: str) -> Path:
    """One bar per outcome for each series (``{"name": {"counts": {...}, "n": N, "label": str}}``)."""
    fig, axes = plt.subplots(len(series), 1, figsize=(14, 2.6 * len(series)), sharex=True, sharey=True)
    axes = [axes] if len(series) == 1 else axes
    target = 1.0 / len(support)
    for ax, (name, s) in zip(axes, series.items()):
        heights = [s["counts"].get(v, 0) / s["n"] for v in support]
        ax.bar(range(len(support)), heights, width=0.85, color="tab:blue")
        ax.axhline(target, color="tab:red", lw=1, ls="--", label="uniform target")
        ax.set_ylabel("frequency")
        ax.set_title(f"{name}: {s['label']}", fontsize=10)
        ax.legend(loc="upper right", fontsize=8)
    step = max(1, len(support) // 20)
    axes[-1].set_xticks(range(0, len(support), step))
    axes[-1].set_xticklabels([str(support[i]) for i in range(0, len(support), step)])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_frontier(path: Path, rows: list[dict], x: str, y: str, xlabel: str, ylabel: str, title: str,
                  label: str = "method", curve: list[tuple[float, float]] | None = None, curve_label: str = "",
                  highlight: Callable[[dict], bool] | None = None) -> Path:
    """One labelled point per method (e.g. diversity vs log-likelihood): up and right is better;
    optionally a curve (e.g. one method swept over a parameter) drawn as a line. ``highlight`` picks the
    rows drawn as red stars (default: labels starting with "gfn")."""
    highlight = highlight or (lambda r: str(r[label]).startswith("gfn"))
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    if curve:
        ax.plot(*zip(*sorted(curve)), color="tab:gray", lw=1, ls="--", marker=".", label=curve_label, zorder=2)
        ax.legend(loc="lower left", fontsize=8)
    for r in rows:
        if r.get(x) is None or r.get(y) is None:
            continue
        star = highlight(r)
        ax.scatter(r[x], r[y], s=70 if star else 40, marker="*" if star else "o",
                   color="tab:red" if star else "tab:blue", zorder=3)
        ax.annotate(str(r[label]), (r[x], r[y]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
