"""Prompt files: one prompt per line (UTF-8). Trailing spaces are kept: they change the tokenization."""

from __future__ import annotations

from pathlib import Path

from gfnlm.errors import GfnlmError


def read_prompt_file(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise GfnlmError(f"Prompt file {str(path)!r} does not exist; give a text file with one prompt per line.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise GfnlmError(f"Prompt file {str(path)!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8.") from exc
    prompts = [line.rstrip("\r\n") for line in text.split("\n")]
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise GfnlmError(f"Prompt file {str(path)!r} is empty; write one prompt per line.")
    return prompts
