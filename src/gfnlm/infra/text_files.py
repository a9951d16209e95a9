"""Files the user names: prompt files (one prompt per line, UTF-8; trailing spaces are kept: they change the
tokenization) and the missing-file / not-UTF-8 checks every loader shares."""

from __future__ import annotations

from pathlib import Path

from gfnlm.infra.errors import GfnlmError


def read_user_text(path: str | Path, kind: str, hint: str = "", encoding: str = "utf-8") -> str:
    """The text of a file the user named, or a clear error when it is missing or not UTF-8 (``kind`` names
    the file in the message, e.g. "Prompt file")."""
    path = Path(path)
    if not path.is_file():
        raise GfnlmError(f"{kind} {str(path)!r} does not exist{hint}.")
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise GfnlmError(f"{kind} {str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as "
                         "UTF-8.") from exc


def read_prompt_file(path: str | Path) -> list[str]:
    text = read_user_text(path, "Prompt file", "; give a text file with one prompt per line")
    prompts = [line.rstrip("\r\n") for line in text.split("\n")]
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise GfnlmError(f"Prompt file {str(path)!r} is empty; write one prompt per line.")
    return prompts
