"""Five-sentence stories in the ROCStories CSV layout: storyid, storytitle, sentence1 .. sentence5.

For infilling, the beginning X is sentences 1-3, the middle Z sentence 4 and the ending Y sentence 5.
Every malformed row is reported with its line number before any model is loaded.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gfnlm.infra.errors import GfnlmError
from gfnlm.infra.text_files import read_user_text

COLUMNS = ("storyid", "storytitle", "sentence1", "sentence2", "sentence3", "sentence4", "sentence5")
BUILTIN = "stories.csv"  # the project's own 160 stories: the first 110 train, the last 50 test


@dataclass(frozen=True)
class Story:
    id: str
    title: str
    sentences: tuple[str, str, str, str, str]

    @property
    def beginning(self) -> str:
        return " ".join(self.sentences[:3])

    @property
    def middle(self) -> str:
        return self.sentences[3]

    @property
    def ending(self) -> str:
        return self.sentences[4]

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


def builtin_stories() -> list[Story]:
    path = resources.files("gfnlm.data").joinpath(BUILTIN)
    return parse_stories(path.read_text(encoding="utf-8"), BUILTIN)


def load_stories_csv(path: str | Path) -> list[Story]:
    return parse_stories(read_user_text(path, "Story file", encoding="utf-8-sig"), str(path))


def parse_stories(text: str, where: str) -> list[Story]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise GfnlmError(f"{where}: not a CSV file ({exc}).") from exc
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise GfnlmError(f"{where}: the header lacks {', '.join(missing)}; the ROCStories layout is "
                         f"{','.join(COLUMNS)}.")
    stories, seen = [], set()
    try:
        for row in reader:
            line = reader.line_num
            if None in row or any(row.get(c) is None for c in COLUMNS):
                raise GfnlmError(f"{where}, line {line}: expected {len(header)} fields.")
            sentences = tuple(" ".join(row[f"sentence{i}"].split()) for i in range(1, 6))
            empty = [f"sentence{i + 1}" for i, s in enumerate(sentences) if not s]
            if empty:
                raise GfnlmError(f"{where}, line {line}: {', '.join(empty)} is empty.")
            story_id = row["storyid"].strip() or f"line-{line}"
            if story_id in seen:
                raise GfnlmError(f"{where}, line {line}: story id {story_id!r} appears twice.")
            seen.add(story_id)
            stories.append(Story(story_id, row["storytitle"].strip(), sentences))  # type: ignore[arg-type]
    except csv.Error as exc:
        raise GfnlmError(f"{where}, line {reader.line_num}: malformed CSV ({exc}).") from exc
    if not stories:
        raise GfnlmError(f"{where} holds no stories.")
    return stories
