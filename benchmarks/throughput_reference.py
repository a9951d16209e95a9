"""The reference side of the throughput ratio: the paper's code run by ../shared/reference-kit on this machine,
or, without it, the figures stored in ../shared/docs/reference-throughput.md for a CPU of this kind.

CPU speed differs between machines by 1.5x or more, so only a ratio against the kit run on this machine is
side by side; a stored figure is the fallback, taken from the CPU kind that matches this one.
"""

from __future__ import annotations

import hashlib
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from throughput_measure import run_streaming

# Median s/step (steps 3-39 of 40) and peak RSS (GiB) of the reference code, by whether the CPU has avx512_bf16.
STORED = {
    True: {"cpu": "a 2-vCPU AMD EPYC with AVX-512 and avx512_bf16", 8: (13.45, 7.00), 16: (17.37, 11.89)},
    False: {"cpu": "a 2-vCPU AMD EPYC with AVX2 only", 8: (20.74, 7.11)},
}
STORED_STEPS = (3, 39)
KIT_STATE = Path(os.environ.get("GFN_REF_STATE", "/tmp/gfn-ref-kit.env"))  # where setup.sh leaves its paths
RESULT_LINE = re.compile(r"reference n=(\d+) median_s_per_step=([\d.]+) steps=(\d+)-(\d+) peak_rss_gib=([\d.]+)")


class KitError(RuntimeError):
    pass


def stored_reference(n: int, has_avx512_bf16: bool) -> dict | None:
    """The stored figure for ``n`` from a CPU with the same avx512_bf16 flag, None when none was measured."""
    stored = STORED[has_avx512_bf16]
    if n not in stored:
        return None
    seconds, gib = stored[n]
    return {"n": n, "median_s_per_step": seconds, "peak_rss_gib": gib, "steps": STORED_STEPS, "torch_threads": 2,
            "cpu": stored["cpu"], "source": "stored"}


def parse_kit_output(lines: list[str]) -> dict:
    """The kit's result, from its last non-empty line
    ``reference n=8 median_s_per_step=13.45 steps=3-39 peak_rss_gib=7.00``, and its torch threads from the
    ``details: torch threads N;`` line when there is one."""
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    match = RESULT_LINE.fullmatch(last)
    if not match:
        raise KitError(f"the reference kit's output does not end with its result line "
                       f"'reference n=N median_s_per_step=S steps=A-B peak_rss_gib=G'; its last line: {last!r}")
    threads = next((m.group(1) for line in lines if (m := re.match(r"details: torch threads (\d+);", line))), None)
    n, seconds, first, last_step, gib = match.groups()
    return {"n": int(n), "median_s_per_step": float(seconds), "steps": (int(first), int(last_step)),
            "peak_rss_gib": float(gib), "torch_threads": int(threads) if threads else None}


def kit_settings(kit: Path, n: int, steps: int, threads: int | None) -> dict:
    """What a kit result depends on: n, steps, threads and the kit's own scripts (the reference code does not
    change)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in kit.iterdir() if p.is_file() and p.suffix in (".sh", ".py", ".txt", ".json")):
        digest.update(path.name.encode() + path.read_bytes())
    return {"n": n, "steps": steps, "threads": threads, "kit": str(kit.resolve()),
            "kit_scripts_sha256": digest.hexdigest()}


def run_kit(kit: Path, n: int, steps: int, threads: int | None, cpu: dict) -> dict | None:
    """setup.sh when it has not run on this machine, then ``run.sh n steps`` with ``threads`` torch threads (the
    kit's default when None); the parsed result, None if it failed."""
    if not KIT_STATE.is_file():
        print(f"reference kit: {KIT_STATE} missing, running {kit / 'setup.sh'} first (a few minutes) ...", flush=True)
        if subprocess.run(["bash", str(kit / "setup.sh")], check=False).returncode != 0:
            print("reference kit: setup.sh failed", file=sys.stderr, flush=True)
            return None
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    code, lines = run_streaming(["bash", str(kit / "run.sh"), str(n), str(steps)], env=env)
    if code != 0:
        print(f"reference kit: run.sh {n} {steps} failed (exit code {code})", file=sys.stderr, flush=True)
        return None
    try:
        result = parse_kit_output(lines)
    except KitError as error:
        print(f"reference kit: {error}", file=sys.stderr, flush=True)
        return None
    return {**result, "config": f"reference-n{n}", "cpu": cpu["model"], "cpu_flags": cpu, "source": "measured"}


def ours_over(result: dict, steps: tuple[int, int]) -> tuple[float, tuple[int, int]]:
    """Our median s/step over the reference's timed steps as far as our run has them (the same prompts, as
    step time follows prompt length), and the steps used; our own timed median when it has none of them."""
    walls = result.get("step_walls", [])
    first, last = steps[0], min(steps[1], len(walls) - 1)
    if first > last:
        return result["median_s_per_step"], (len(walls) - result["steps_timed"], len(walls) - 1)
    return statistics.median(walls[first: last + 1]), (first, last)


def ratios(ours: dict, reference: dict) -> dict:
    """Ours over the reference's s/step and peak memory (both peak RSS of the whole process), and "x faster"."""
    seconds, steps = ours_over(ours, tuple(reference["steps"]))
    return {"ours_s_per_step": seconds, "steps": steps, "s_per_step_ratio": seconds / reference["median_s_per_step"],
            "x_faster": reference["median_s_per_step"] / seconds,
            "peak_memory_ratio": ours["peak_rss_gib"] / reference["peak_rss_gib"]}
