"""Per-step metrics to JSON lines and CSV (and TensorBoard when asked), safe to resume."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path


class MetricsLog:
    """``metrics.jsonl`` is the record; ``metrics.csv`` has the same rows for spreadsheets.
    On resume, rows after the resumed step are dropped so the files match the restored state."""

    def __init__(self, run_dir: Path, columns: list[str], resume_step: int | None = None, tensorboard: bool = False):
        self.jsonl = Path(run_dir) / "metrics.jsonl"
        self.csv = Path(run_dir) / "metrics.csv"
        self.columns = columns
        rows = read_metrics(self.jsonl) if resume_step is not None else []
        rows = [r for r in rows if r.get("step", 0) <= (resume_step or 0)]
        with open(self.jsonl, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
        with open(self.csv, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=(resume_step or 0) + 1)

    def append(self, row: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with open(self.jsonl, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(clean) + "\n")
        with open(self.csv, "a", newline="", encoding="utf-8") as fh:
            csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore").writerow(clean)
        if self.writer is not None:
            for key, value in clean.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: Path) -> list[dict]:
    rows = []
    if Path(path).is_file():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                break  # a line cut by a crash ends the record
    return rows
