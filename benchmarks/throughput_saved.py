"""Saved throughput results: one JSON per measured configuration, written the moment it finishes, and
reused by a later invocation when it was measured with the same settings on committed code.

A saved file holds {"settings": ..., "result": ...}. The settings name everything a figure depends on that
a later run could change: the configuration, steps, prompt file (path and content), the git commit of the
code, the CPU and the thread setting. Code with uncommitted changes under src/ or benchmarks/ has no
commit that names it, so what it measures is saved but never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAVED = ROOT / "benchmarks" / "out" / "throughput"


def cpu_info(cpuinfo: str | None = None) -> dict:
    """This CPU's model name and the two flags that decide float32 and bfloat16 speed (from /proc/cpuinfo)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first core's entry
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name", "unknown"), "avx512f": "avx512f" in flags,
            "avx512_bf16": "avx512_bf16" in flags}


def describe_cpu(cpu: dict) -> str:
    yes = {True: "yes", False: "no"}
    return f"{cpu['model']} (avx512f: {yes[cpu['avx512f']]}, avx512_bf16: {yes[cpu['avx512_bf16']]})"


def code_commit() -> str:
    """HEAD's hash, with "-dirty" when src/ or benchmarks/ has uncommitted changes; "unknown" without git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--", "src", "benchmarks")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if changed else "")


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def machine_settings() -> dict:
    """What ties a figure to this machine and thread setting (torch reads OMP_NUM_THREADS at start)."""
    return {"cpu": cpu_info()["model"], "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset")}


def reusable(saved: dict, settings: dict) -> bool:
    """A saved result stands for a new measurement when every setting matches and, for a measurement of our
    code (settings with a git_commit), that code is committed. The reference kit's runs do not depend on it."""
    commit = settings.get("git_commit")
    committed = commit is None or (commit not in ("", "unknown") and not commit.endswith("-dirty"))
    return saved.get("settings") == settings and committed


def saved_or_measured(path: Path, settings: dict, measure: Callable[[], dict | None],
                      fresh: bool = False) -> tuple[dict | None, str]:
    """(result, "saved" | "measured" | "failed"): the result saved at ``path`` when ``reusable`` (and not
    ``fresh``), else ``measure()``, written to ``path`` at once; None when the measurement failed."""
    if not fresh and path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:  # a file cut short by an interrupted write: measure again
            saved = {}
        if reusable(saved, settings):
            return saved["result"], "saved"
    result = measure()
    if result is None:
        return None, "failed"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.part")  # never leave a half-written file under the real name
    partial.write_text(json.dumps({"settings": settings, "result": result}, indent=2), encoding="utf-8")
    partial.replace(path)
    return result, "measured"
