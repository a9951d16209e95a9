"""Labelled text for classification: JSON lines ``{"text": ..., "label": ...}``.

A label is a label name (one of the configured names) or its index in that list (as in the SUBJ files,
where 0 = objective, 1 = subjective). Other fields (e.g. ``label_text``) are ignored. Every malformed
row is reported with its line number and what is wrong, before any model is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gfnlm.infra.errors import GfnlmError
from gfnlm.infra.text_files import read_user_text


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: int  # index into the label names


def parse_labels(spec: str | Sequence[str]) -> list[str]:
    """'objective,subjective' or a list -> label names (at least two, distinct, non-empty)."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    if len(names) < 2 or not all(names):
        raise GfnlmError(f"labels {spec!r}: give at least two non-empty label names, like 'objective,subjective'.")
    if len(set(names)) != len(names):
        raise GfnlmError(f"labels {spec!r}: the label names must be distinct.")
    return names


def load_labelled_jsonl(path: str | Path, labels: Sequence[str]) -> list[LabelledText]:
    lines = read_user_text(path, "Data file").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise GfnlmError(f"{where}: not a JSON object ({exc}).") from exc
        if not isinstance(row, dict):
            raise GfnlmError(f"{where}: expected an object with \"text\" and \"label\", got {type(row).__name__}.")
        text, label = row.get("text"), row.get("label")
        if not isinstance(text, str) or not text.strip():
            raise GfnlmError(f"{where}: \"text\" must be a non-empty string.")
        rows.append(LabelledText(" ".join(text.split()), label_index(label, labels, where)))
    if not rows:
        raise GfnlmError(f"{path} holds no rows.")
    return rows


def label_index(label, labels: Sequence[str], where: str) -> int:
    if isinstance(label, bool) or label is None:
        raise GfnlmError(f"{where}: \"label\" must be a label name ({', '.join(labels)}) or its index.")
    if isinstance(label, int):
        if not 0 <= label < len(labels):
            raise GfnlmError(f"{where}: label index {label} is out of range for labels {', '.join(labels)}.")
        return label
    if isinstance(label, str) and label.strip() in labels:
        return list(labels).index(label.strip())
    raise GfnlmError(f"{where}: label {label!r} is not one of {', '.join(labels)} (or their indices 0.."
                     f"{len(labels) - 1}).")
