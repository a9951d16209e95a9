"""Replay buffer: per prompt, the best distinct trajectories seen so far, with untempered rewards.

- top-k per prompt by untempered terminal log-reward;
- exact duplicates are skipped; near duplicates (token edit distance below ``tolerance`` times the
  summed lengths) keep only the better of the two;
- rewards are stored untempered, so replayed samples are re-tempered with the current temperature;
- sampling is uniform or prioritized (probability proportional to exp(log R / priority_temperature)),
  always with replacement and always the requested number of rows;
- saved and loaded as JSON lines (no pickle).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from rapidfuzz.distance import Levenshtein

from gfnlm.infra.errors import GfnlmError
from gfnlm.infra.seeding import draw_indices


@dataclass
class BufferItem:
    tokens: tuple[int, ...]
    policy_mask: tuple[bool, ...]
    log_rewards: tuple[float, ...]  # untempered log R of each prefix s_0..s_n (NaN where not terminable)
    text: str = ""

    @property
    def score(self) -> float:
        return self.log_rewards[-1]


class ReplayBuffer:
    def __init__(self, capacity: int = 50, tolerance: float = 0.25, sampling: str = "uniform",
                 priority_temperature: float = 1.0):
        if capacity < 1:
            raise GfnlmError(f"buffer capacity must be at least 1 (got {capacity}).")
        if sampling not in ("uniform", "prioritized"):
            raise GfnlmError(f"buffer sampling must be 'uniform' or 'prioritized' (got {sampling!r}).")
        self.capacity = capacity
        self.tolerance = tolerance
        self.sampling = sampling
        self.priority_temperature = priority_temperature
        self.items: dict[str, list[BufferItem]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self.items.values())

    def count(self, key: str) -> int:
        return len(self.items.get(key, []))

    def add(self, key: str, item: BufferItem) -> bool:
        """Insert one trajectory; returns whether the buffer changed."""
        if not math.isfinite(item.score):
            return False
        entries = self.items.setdefault(key, [])
        for i, other in enumerate(entries):
            if other.tokens == item.tokens:
                return False
            limit = self.tolerance * (len(other.tokens) + len(item.tokens))
            if limit > 0 and Levenshtein.distance(other.tokens, item.tokens, score_cutoff=math.ceil(limit)) < limit:
                if item.score <= other.score:
                    return False
                entries[i] = item
                return True
        entries.append(item)
        if len(entries) > self.capacity:
            entries.sort(key=lambda e: e.score, reverse=True)
            dropped = entries.pop()
            return dropped is not item
        return True

    def sample(self, key: str, n: int, generator: torch.Generator | None = None) -> list[BufferItem]:
        entries = self.items.get(key, [])
        if not entries:
            raise KeyError(f"no buffered trajectories for prompt {key!r}")
        if self.sampling == "uniform":
            weights = torch.ones(len(entries), dtype=torch.float64)
        else:
            scores = torch.tensor([e.score for e in entries], dtype=torch.float64) / self.priority_temperature
            weights = torch.softmax(scores, 0)
        return [entries[int(i)] for i in draw_indices(weights, n, generator)]

    def to_text(self) -> str:
        """The buffer as JSON lines, one trajectory a line."""
        lines = []
        for key, entries in self.items.items():
            for e in entries:
                row = {"key": key, "tokens": list(e.tokens), "policy_mask": [int(b) for b in e.policy_mask],
                       "log_rewards": [None if math.isnan(r) else r for r in e.log_rewards], "text": e.text}
                lines.append(json.dumps(row) + "\n")
        return "".join(lines)

    def save(self, path: Path) -> None:
        """Write JSON lines atomically (temporary file, then rename)."""
        tmp = Path(f"{path}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(self.to_text())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def load(self, path: Path) -> None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise GfnlmError(f"{path}: not a replay-buffer file (not UTF-8 text: {exc.reason}).") from exc
        self.load_text(text, str(path))

    def load_text(self, text: str, path: str = "replay buffer") -> None:
        """Replace the contents with the JSON lines of ``to_text`` (``path`` names them in errors)."""
        self.items = {}
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = str(row["key"])
                tokens = tuple(int(t) for t in row["tokens"])
                item = BufferItem(
                    tokens=tokens,
                    policy_mask=tuple(bool(b) for b in row["policy_mask"]),
                    log_rewards=tuple(math.nan if r is None else float(r) for r in row["log_rewards"]),
                    text=str(row.get("text", "")),
                )
                if len(item.policy_mask) != len(tokens) or len(item.log_rewards) != len(tokens) + 1:
                    raise ValueError("lengths of tokens, policy_mask and log_rewards disagree")
            except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
                raise GfnlmError(f"{path}, line {lineno}: not a replay-buffer row ({exc}).") from exc
            self.items.setdefault(key, []).append(item)
