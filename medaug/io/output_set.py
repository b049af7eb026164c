"""A set of output files that one run replaces as a whole: an exclusive lock on the output folder,
a fresh temporary folder for the new files and a swap at the end, so that a second run into the same
folder is refused, and a run that fails or is killed leaves the previous complete set (or, killed
during the few renames of the swap, a set without its marker file), never a mix that looks current.

Layout, in the output folder itself (which may be a mount point, e.g. Docker's ``/output``, so it is
never renamed or replaced):

- ``.<tool>.lock``: held with ``fcntl.flock`` for the whole run; the kernel releases it when the
  process dies, however it dies, so a stale file never blocks. It names the holder (pid, host, run
  id, start time) for the refusal message, and is removed at the end of a run.
- ``.<tool>-<run id>.tmp/``: the new files are written there (same filesystem, so the swap is a
  rename), flushed to disk, then renamed into place one by one: the old marker file (``summary.json``)
  is removed FIRST and the new one renamed LAST. Hence a reader that finds the marker finds the
  complete set of the run the marker names; no marker means no complete set (a run is writing, or one
  was killed during its swap). The marker lists the sha256 of every other file of the set, for a
  reader that wants to check. Temporary folders of dead runs are removed by the next run.

Standard-library only: ``tempfile``/``shutil`` give no lock with a holder or a set swap.
"""

from __future__ import annotations

import csv
import datetime
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from medaug.io.atomic import new_file_mode

# OWASP "CSV injection": a spreadsheet runs a cell that starts with one of these as a formula
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value):
    """``value`` with a leading ``'`` when it is text a spreadsheet would take for a formula (starts with
    ``= + - @``, tab or carriage return); numbers and other text unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def utc_now() -> str:
    """The current time, UTC, ISO 8601 to the second: ``2026-11-26T10:04:05Z``."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class OutputFolderError(Exception):
    """The output folder cannot be created or written (found before any work is done)."""


class OutputFolderBusy(OutputFolderError):
    """Another live run holds the output folder's lock."""


class OutputSet:
    """The files ``names`` in ``folder``, replaced together by one run at a time.

    Use as a context manager (or :meth:`open` / :meth:`close`): :meth:`open` creates the folder, takes
    the lock and creates the temporary folder, so an unwritable folder or a busy one fails there,
    before any work; :meth:`write_csv` / :meth:`write_json` write into the temporary folder;
    :meth:`commit` swaps the set in, ``marker`` last. Closing without a commit discards the new files
    and leaves the previous set as it was.
    """

    def __init__(self, folder: str | os.PathLike, names: Sequence[str], *, marker: str, tool: str = "predict") -> None:
        if marker not in names:
            raise ValueError(f"the marker {marker!r} must be one of the set's files {list(names)}")
        self.folder = Path(folder)
        self.names = list(names)
        self.marker = marker
        self.tool = tool
        self.run_id = str(uuid.uuid4())
        self.started_at = utc_now()
        self.lock_path = self.folder / f".{tool}.lock"
        self.tmp_dir = self.folder / f".{tool}-{self.run_id}.tmp"
        self._lock_fd: int | None = None
        self._written: dict[str, dict] = {}
        self.committed = False

    # ------------------------------------------------------------------------------------ lifetime

    def open(self) -> OutputSet:
        if self._lock_fd is not None:
            raise RuntimeError("the output set is open already")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not self.folder.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder")
            self._lock()
        except OutputFolderError:
            raise
        except OSError as err:
            raise OutputFolderError(f"{str(self.folder)!r} cannot be written ({_reason(err)})") from None
        try:
            for name in self.names:
                target = self.folder / name
                if target.is_dir() and not target.is_symlink():
                    raise OutputFolderError(f"{str(target)!r} is a folder; it would be replaced by an output file")
            self._remove_stale_tmp_dirs()
            self.tmp_dir.mkdir()
        except OSError as err:
            self.close()
            raise OutputFolderError(f"{str(self.folder)!r} cannot be written ({_reason(err)})") from None
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Discard uncommitted files and release the lock (removing its file while still holding it)."""
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        if self._lock_fd is not None:
            try:
                self.lock_path.unlink(missing_ok=True)
            except OSError:
                pass  # a lock file left behind blocks nobody: flock is released below
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> OutputSet:
        return self if self._lock_fd is not None else self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _lock(self) -> None:
        """``flock`` the lock file, retrying when the file was replaced meanwhile (a finishing run
        removes it while holding the lock; a lock on the removed file would exclude nobody)."""
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise OutputFolderBusy(
                    f"another 'medaug {self.tool}' is writing to {str(self.folder)!r} ({holder}); wait for it to "
                    f"finish or choose another folder"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "run_id": self.run_id,
            "started_at": self.started_at,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._lock_fd = fd

    def _remove_stale_tmp_dirs(self) -> None:
        """Temporary folders of runs killed before their swap: we hold the lock, so their runs are dead."""
        for path in self.folder.glob(f".{self.tool}-*.tmp"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)

    # ------------------------------------------------------------------------------------- writing

    def _path(self, name: str) -> Path:
        if name not in self.names:
            raise ValueError(f"{name!r} is not one of the set's files {self.names}")
        if self._lock_fd is None:
            raise RuntimeError("the output set is not open")
        return self.tmp_dir / name

    def write_csv(
        self, name: str, rows: Sequence[Mapping], fieldnames: Sequence[str], *, escape_formulas: bool = True
    ) -> Path:
        """A CSV file of the set; text cells a spreadsheet would run as formulas get a leading ``'``
        (:func:`spreadsheet_safe`) unless ``escape_formulas`` is False."""
        path = self._path(name)
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(fieldnames), extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: spreadsheet_safe(v) for k, v in row.items()} if escape_formulas else row)
            _flush(handle)
        return self._record(name, path)

    def write_json(self, name: str, obj) -> Path:
        path = self._path(name)
        with open(path, "w") as handle:
            json.dump(obj, handle, indent=2, default=str)
            _flush(handle)
        return self._record(name, path)

    def _record(self, name: str, path: Path) -> Path:
        os.chmod(path, new_file_mode())  # as open() would create it in the folder itself
        self._written[name] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size}
        return path

    def digests(self) -> dict[str, dict]:
        """``{name: {"sha256", "bytes"}}`` of the files written so far (for the marker to list)."""
        return {name: dict(info) for name, info in self._written.items()}

    def commit(self) -> None:
        """Swap the new set in: the old marker removed first, every other file renamed over its old
        version, the new marker renamed last. Old files the new set lacks are removed."""
        missing = [n for n in self.names if n not in self._written]
        if missing:
            raise RuntimeError(f"output files not written: {missing}")
        (self.folder / self.marker).unlink(missing_ok=True)
        _fsync_dir(self.folder)
        for name in [n for n in self.names if n != self.marker] + [self.marker]:
            os.replace(self.tmp_dir / name, self.folder / name)
        _fsync_dir(self.folder)
        self.committed = True


def _flush(handle) -> None:
    """To disk before the rename: a crash of the machine must not leave a renamed but empty file."""
    handle.flush()
    os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the renames are still atomic
    finally:
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, run {info['run_id']}, since {info['started_at']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__
