"""How training cost grows on the reference set-up (LoRA r=64, float32): s/step and training peak memory
against trajectories per step and against maximum length, and the prefix reward's cost against the length
of a multi-token answer Y. Each point is measured in a fresh process and saved as it comes (resumable);
one figure with three panels shows them all.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from throughput_measure import reward_in_fresh_process, train_in_fresh_process
from throughput_saved import SAVED, code_commit, file_digest, machine_settings, saved_or_measured

TRAJECTORIES = (8, 16, 32, 64)  # at max length 30
MAX_LENGTHS = (20, 30, 40, 80)  # at n = 8 (30 is shared with the first axis)
ANSWER_TOKENS = (1, 4, 16, 64)
REPEATS = 5
FIGURE = Path(__file__).resolve().parent.parent / "docs" / "results" / "throughput_scaling.png"


def training_points(reference: dict) -> dict[str, dict]:
    """name -> configuration: the reference set-up with n or max_len changed."""
    points = {f"n{n}-len30": {**reference, "n": n, "max_len": 30} for n in TRAJECTORIES}
    points.update({f"n8-len{length}": {**reference, "n": 8, "max_len": length} for length in MAX_LENGTHS})
    return points


def sweep(reference: dict, steps: int, prompts: Path, fresh: bool) -> tuple[dict, dict, list[str]]:
    """Measure (or reuse) every point; (training results by name, reward results by |Y|, failed points)."""
    common = {"prompts": str(prompts.resolve()), "prompts_sha256": file_digest(prompts), "git_commit": code_commit(),
              **machine_settings()}
    jobs = [(name, SAVED / "scaling" / f"{name}.json", {"config": spec, "steps": steps, **common},
             partial(train_in_fresh_process, name, spec, steps, prompts))
            for name, spec in training_points(reference).items()]
    jobs += [(f"reward-y{k}", SAVED / "scaling" / f"reward-y{k}.json",
              {"answer_tokens": k, "config": reference, "repeats": REPEATS, **common},
              partial(reward_in_fresh_process, k, reference, prompts, REPEATS))
             for k in ANSWER_TOKENS]
    training, rewards, failed = {}, {}, []
    for i, (name, path, settings, measure) in enumerate(jobs, 1):
        print(f"[{i}/{len(jobs)}] {name} ...", flush=True)
        result, how = saved_or_measured(path, settings, measure, fresh)
        if result is None:
            failed.append(name)
            print(f"[{i}/{len(jobs)}] {name}: FAILED", flush=True)
        elif name.startswith("reward-"):
            rewards[result["answer_tokens"]] = result
            print(f"[{i}/{len(jobs)}] {name}: {1000 * result['answer_s']:.0f} ms per call vs "
                  f"{1000 * result['one_token_s']:.0f} ms one-token ({how})", flush=True)
        else:
            training[name] = result
            print(f"[{i}/{len(jobs)}] {name}: {result['median_s_per_step']:.2f} s/step, training peak "
                  f"{result['training_peak_rss_gib']:.2f} GiB ({how})", flush=True)
    return training, rewards, failed


def print_tables(training: dict, rewards: dict) -> None:
    print("\n| n | max length | torch threads | median s/step | sequences/s | training peak RSS GiB | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in training.values():
        print(f"| {r['n']} | {r['max_len']} | {r['torch_threads']} | {r['median_s_per_step']:.2f} | "
              f"{r['sequences_per_s']:.2f} | {r['training_peak_rss_gib']:.2f} | {r['peak_rss_gib']:.2f} |")
    print("\n| answer tokens | PromptAnswerLikelihood ms | one-token LMLikelihood ms | ratio |")
    print("|---|---|---|---|")
    for k, r in sorted(rewards.items()):
        print(f"| {k} | {1000 * r['answer_s']:.0f} | {1000 * r['one_token_s']:.0f} | "
              f"{r['answer_over_one_token']:.2f} |")


def plot(training: dict, rewards: dict, title: str, path: Path = FIGURE) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [("n", "trajectories per step", "max_len", 30, "at max length 30"),
              ("max_len", "maximum length (tokens)", "n", 8, "at n = 8")]
    for ax, (axis, label, fixed, value, panel_title) in zip(axes[:2], panels, strict=True):
        rows = sorted((r for r in training.values() if r[fixed] == value), key=lambda r: r[axis])
        x = [r[axis] for r in rows]
        ax.plot(x, [r["median_s_per_step"] for r in rows], "o-", color="tab:blue")
        ax.set_xlabel(label)
        ax.set_ylabel("median s/step", color="tab:blue")
        memory = ax.twinx()
        memory.plot(x, [r["training_peak_rss_gib"] for r in rows], "s--", color="tab:red")
        memory.set_ylabel("training peak RSS (GiB)", color="tab:red")
        ax.set_title(panel_title)
    ax = axes[2]
    ks = sorted(rewards)
    ax.plot(ks, [1000 * rewards[k]["answer_s"] for k in ks], "o-", label="PromptAnswerLikelihood, |Y| tokens")
    ax.plot(ks, [1000 * rewards[k]["one_token_s"] for k in ks], "s--", label="one-token LMLikelihood")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("answer length |Y| (tokens)")
    ax.set_ylabel("ms per log_rewards call")
    ax.set_title("prefix reward: 8 trajectories of 30 tokens")
    ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
        if not any(len(line.get_ydata()) for line in ax.lines):
            ax.text(0.5, 0.5, "no points", transform=ax.transAxes, ha="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
