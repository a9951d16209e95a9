"""One writer for every task's result tables: the same rows go to CSV and to a markdown table."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path


def evaluation_stem(task_name: str, temperature: float | None = None) -> str:
    """A run's evaluation table: eval_<task>, or eval_<task>_T<T> for each temperature of a
    temperature-conditional run (written by the task, read by `gfnlm compare`)."""
    return f"eval_{task_name}" if temperature is None else f"eval_{task_name}_T{temperature:g}"


def format_value(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[str], headers: dict | None = None) -> str:
    headers = headers or {}
    lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_value(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_table(rows: Sequence[dict], columns: Sequence[str], stem: Path, headers: dict | None = None) -> str:
    """Write ``stem``.csv and ``stem``.md; return the markdown."""
    stem = Path(stem)  # names may hold dots ("eval_T0.95"): append, never replace, a suffix
    with open(stem.parent / f"{stem.name}.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    text = markdown_table(rows, columns, headers)
    (stem.parent / f"{stem.name}.md").write_text(text + "\n", encoding="utf-8")
    return text


def read_table(path: Path) -> list[dict]:
    """Rows of a CSV written by ``write_table``, with numbers parsed back."""
    def parse(v: str):
        try:
            return float(v) if v not in ("", None) else None
        except ValueError:
            return v

    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(fh)]
