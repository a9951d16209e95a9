"""The inputs X of a user's posterior: rows of named columns from a text file (one X per line: column X),
JSON lines or CSV (a header row names the columns)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from gfnlm.infra.errors import GfnlmError
from gfnlm.infra.seeding import python_rng
from gfnlm.infra.text_files import read_prompt_file, read_user_text

FORMATS = (".txt", ".jsonl", ".csv")


def read_inputs(path: str | Path) -> list[dict[str, str]]:
    """Every row of an inputs file as a dict of column -> text."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise GfnlmError(f"Inputs file {str(path)!r}: give a .txt (one X per line), .jsonl or .csv file.")
    if suffix == ".txt":
        return [{"X": line} for line in read_prompt_file(path)]
    text = read_user_text(path, "Inputs file")
    rows = _jsonl_rows(path, text) if suffix == ".jsonl" else _csv_rows(path, text)
    if not rows:
        raise GfnlmError(f"Inputs file {str(path)!r} has no rows.")
    columns = set(rows[0])
    for i, row in enumerate(rows[1:], start=2):
        if set(row) != columns:
            raise GfnlmError(f"Inputs file {str(path)!r}: row {i} has the columns {sorted(row)}, row 1 has "
                             f"{sorted(columns)}.")
    return rows


def _jsonl_rows(path: Path, text: str) -> list[dict[str, str]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GfnlmError(f"Inputs file {str(path)!r}, line {number}: not JSON ({exc.msg}).") from None
        if not isinstance(row, dict) or not all(isinstance(v, (str, int, float)) for v in row.values()):
            raise GfnlmError(f"Inputs file {str(path)!r}, line {number}: write one object of column: text per line.")
        rows.append({str(k): str(v) for k, v in row.items()})
    return rows


def _csv_rows(path: Path, text: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or any(not (name or "").strip() for name in reader.fieldnames):
        raise GfnlmError(f"Inputs file {str(path)!r}: the first row must name every column.")
    rows = []
    for number, row in enumerate(reader, start=2):
        if None in row or any(v is None for v in row.values()):
            raise GfnlmError(f"Inputs file {str(path)!r}, line {number}: not as many fields as the header names.")
        rows.append(dict(row))
    return rows


def split_rows(rows: list[dict], test_fraction: float) -> tuple[list[dict], list[dict]]:
    """A fixed random split (the same for every run): (training rows, held-out rows)."""
    if not test_fraction:
        return rows, []
    order = list(range(len(rows)))
    python_rng(0, "posterior split").shuffle(order)
    held = max(1, round(test_fraction * len(rows)))
    if held >= len(rows):
        raise GfnlmError(f"task.test_fraction {test_fraction} leaves no training rows out of {len(rows)}.")
    test = set(order[:held])
    return [r for i, r in enumerate(rows) if i not in test], [r for i, r in enumerate(rows) if i in test]
