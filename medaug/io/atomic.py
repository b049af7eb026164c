"""Atomic writes: a temporary file in the target folder, then a rename, so a killed run never
leaves a half-written CSV or JSON behind."""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path


def new_file_mode() -> int:
    """The mode ``open()`` would give a new file (0o666 minus the umask): ``mkstemp`` creates 0o600,
    which would leave reports readable by their owner only."""
    try:  # Linux reports the umask without changing it (os.umask would, briefly, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)
    os.umask(current)
    return 0o666 & ~current


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_csv_atomic(path: str | os.PathLike, rows: Sequence[Mapping], fieldnames: Sequence[str]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fieldnames), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        json.dump(obj, handle, indent=2, default=str)
    return Path(path)


def publish_folder(staged: str | os.PathLike, folder: str | os.PathLike) -> None:
    """Rename a finished ``staged`` folder (written beside ``folder``) into place in one step, so a
    reader sees the whole cache entry or none. When a parallel run published the same key first, its
    entry is kept (same key, same content) and ``staged`` is removed."""
    try:
        os.replace(staged, folder)
    except OSError:
        shutil.rmtree(staged, ignore_errors=True)
