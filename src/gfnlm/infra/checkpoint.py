"""Atomic checkpoints with checksums, and the run-folder lock.

A checkpoint is a folder ``checkpoints/step-NNNNNNN`` written under a temporary name, every file
fsynced, a ``manifest.json`` of SHA-256 sums written last, then renamed into place. Loading picks
the newest checkpoint whose files match their manifest, so a run killed at any moment (even during
a write) resumes from the last complete one. Nothing here is ever unpickled: tensors are read with
``torch.load(weights_only=True)`` or safetensors, everything else is JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

from gfnlm.infra.errors import GfnlmError

MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then fsync and rename over ``path``: readers see the old file or the whole new one."""
    tmp = Path(f"{path}.tmp")
    write(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1), encoding="utf-8"))


class CheckpointStore:
    def __init__(self, run_dir: Path, keep: int = 2):
        self.root = Path(run_dir) / "checkpoints"
        self.keep = keep

    def save(self, step: int, writers: dict[str, Callable[[Path], None]]) -> Path:
        """Write each file through its writer into a new checkpoint folder, atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"step-{step:07d}"
        tmp = self.root / f".step-{step:07d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        sums = {}
        for name, write in writers.items():
            path = tmp / name
            write(path)
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
            sums[name] = sha256(path)
        write_json_atomic(tmp / MANIFEST, {"step": step, "files": sums})
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(self.root)
        self._prune()
        return final

    def _prune(self) -> None:
        for old in self.list()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def list(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("step-"))

    @staticmethod
    def verify(path: Path) -> str | None:
        """None if the checkpoint is complete and intact, else what is wrong."""
        manifest = path / MANIFEST
        if not manifest.is_file():
            return "no manifest (the write did not finish)"
        try:
            files = json.loads(manifest.read_text())["files"]
        except (ValueError, KeyError) as exc:
            return f"unreadable manifest ({exc})"
        for name, digest in files.items():
            if not (path / name).is_file():
                return f"missing {name}"
            if sha256(path / name) != digest:
                return f"{name} does not match its checksum (truncated or corrupted)"
        return None

    def latest(self) -> Path | None:
        """The newest intact checkpoint; damaged ones are reported and skipped."""
        for path in reversed(self.list()):
            problem = self.verify(path)
            if problem is None:
                return path
            warnings.warn(f"Skipping checkpoint {path}: {problem}.", stacklevel=2)
        return None


class RunLock:
    """Refuse two runs in one folder; a lock left by a dead process is taken over."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "run.lock"

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or "0")
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _alive(pid):
                    raise GfnlmError(
                        f"Another run (process {pid}) is using {self.path.parent}; wait for it, stop it, "
                        "or choose another --output_dir."
                    ) from None
                self.path.unlink(missing_ok=True)  # stale lock of a dead process
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            return

    def release(self) -> None:
        try:
            if self.path.read_text().strip() == str(os.getpid()):
                self.path.unlink()
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
