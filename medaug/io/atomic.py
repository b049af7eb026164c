"""Atomic writes: a temporary file in the target folder, then a rename, so a killed run never
leaves a half-written CSV or JSON behind."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
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
