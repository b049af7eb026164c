"""One study runner per study on a tracking store: a lock held as a tag of the study's parent run.

A lock file in ``--output-dir`` only stops a second runner on the same folder; runners started from
another folder or machine against one shared MLflow server (the README's team setup) would each mark
the other's live child runs KILLED and run them again. MLflow has no lock and no compare-and-set, so
this writes one on its tags:

- the parent run's tag ``medaug.study_lock`` holds a JSON record: owner id (host, pid, a random
  token), where it runs from, when it took the lock and its last heartbeat (Unix time);
- a background thread rewrites the heartbeat every ``heartbeat`` seconds while the runner runs;
- a record is stale, and may be taken over, when its heartbeat is older than ``stale_after``
  seconds, or at once when its owner ran on this machine (same host name and PID namespace) and
  that process is gone (a runner killed with SIGKILL and started again right away);
- acquiring writes the record, waits ``settle`` seconds and reads it back: of two runners that
  wrote at about the same time, only the one whose record stayed proceeds;
- release deletes the tag if it still names this owner (at the end, also on SIGINT/SIGTERM).

Residual races, all narrower than ``settle``: a runner that pauses for longer than ``settle``
between reading a free (or stale) lock and writing its own can overwrite a record that another
runner has just confirmed; both then run until the next ownership check of one of them (before
every child launch and every status change of child runs, and every heartbeat) sees the other's
record and stops. Staleness compares the owner's clock with the reader's: machines sharing a server
need clocks in step (NTP) to well within ``stale_after``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from medaug.pipelines.tracking.tags import LOCK_TAG

logger = logging.getLogger("medaug.study")


class StudyLocked(RuntimeError):
    """Another runner holds the study's lock (the message names it and how to take over)."""


class StudyLockLost(StudyLocked):
    """This runner's lock was taken over while it ran; it stops without touching the study's runs."""


def _pid_namespace() -> str:
    """Tells two containers with one host name apart: a PID is only comparable within its namespace."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass
class LockRecord:
    """What the tag holds."""

    owner: str
    host: str
    pid: int
    pid_namespace: str
    since: float
    heartbeat: float
    where: str = ""

    @classmethod
    def parse(cls, text: str) -> LockRecord | None:
        try:
            data = json.loads(text)
            return cls(
                owner=str(data["owner"]),
                host=str(data["host"]),
                pid=int(data["pid"]),
                pid_namespace=str(data.get("pid_namespace", "")),
                since=float(data["since"]),
                heartbeat=float(data["heartbeat"]),
                where=str(data.get("where", "")),
            )
        except (ValueError, TypeError, KeyError):
            return None

    def describe(self, now: float) -> str:
        where = f", running from {self.where}" if self.where else ""
        return (
            f"host {self.host}, pid {self.pid}, since {_when(self.since)}, last heartbeat "
            f"{max(0.0, now - self.heartbeat):.0f} s ago{where}"
        )


class StudyLock:
    """The lock of one study (its parent run) on one tracking store.

    Args:
        tracking_uri: the store (a server or a database) the parent run lives in.
        run_id: the study's parent run.
        heartbeat: seconds between heartbeats.
        stale_after: a record whose heartbeat is older than this may be taken over (a few heartbeats).
        settle: seconds between writing the record and reading it back.
        take_over: take the lock even from a live owner (for an owner known to be gone whose
            heartbeat is not stale yet; the owner, should it still run, stops at its next check).
        where: shown to a refused runner, e.g. the output folder.
        label: what is locked, for messages (e.g. the study key).
    """

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        heartbeat: float = 30.0,
        stale_after: float = 180.0,
        settle: float = 2.0,
        take_over: bool = False,
        where: str = "",
        label: str = "",
    ) -> None:
        if heartbeat <= 0 or stale_after <= heartbeat:
            raise ValueError(
                f"study lock: stale_after ({stale_after} s) must exceed the heartbeat interval "
                f"({heartbeat} s), which must be positive"
            )
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.heartbeat, self.stale_after, self.settle = heartbeat, stale_after, settle
        self.take_over, self.where, self.label = take_over, where, label
        self.host, self.pid, self.pid_namespace = socket.gethostname(), os.getpid(), _pid_namespace()
        self.owner = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:12]}"
        self.lost: LockRecord | None = None  # the record that replaced ours, seen by the heartbeat
        self._since = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = self._new_client()

    def _new_client(self):
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.tracking_uri)

    # ---------------------------------------------------------------- the tag
    def read(self, client=None) -> LockRecord | None:
        """The current record, ``None`` when the study is not locked."""
        text = (client or self._client).get_run(self.run_id).data.tags.get(LOCK_TAG)
        if not text:
            return None
        record = LockRecord.parse(text)
        if record is None:  # not written by a runner: nothing to wait for
            logger.warning(
                "study lock: unreadable %s tag on run %s (%r); treating it as stale", LOCK_TAG, self.run_id, text[:200]
            )
            return LockRecord(owner="?", host="?", pid=0, pid_namespace="", since=0.0, heartbeat=0.0)
        return record

    def _write(self, client=None) -> None:
        record = LockRecord(self.owner, self.host, self.pid, self.pid_namespace, self._since, time.time(), self.where)
        (client or self._client).set_tag(self.run_id, LOCK_TAG, json.dumps(asdict(record)))

    def stale_reason(self, record: LockRecord, now: float | None = None) -> str | None:
        """Why ``record`` no longer holds the lock, or ``None`` while its owner looks alive."""
        now = time.time() if now is None else now
        if now - record.heartbeat > self.stale_after:
            return f"its heartbeat is {now - record.heartbeat:.0f} s old (stale after {self.stale_after:.0f} s)"
        same_machine = record.host == self.host and record.pid_namespace == self.pid_namespace
        if same_machine and record.pid != self.pid and not _process_alive(record.pid):
            return f"its process {record.pid} on this machine is gone"
        return None

    def _refusal(self, record: LockRecord, now: float, raced: bool = False) -> str:
        wait = max(0.0, self.stale_after - (now - record.heartbeat))
        what = f"study {self.label} " if self.label else "the study "
        head = (
            "another runner took the lock of " + what + "at the same moment"
            if raced
            else what + "is being run by another runner"
        )
        return (
            f"{head} (parent run {self.run_id} on {self.tracking_uri}): {record.describe(now)}. A second "
            f"runner would mark its running child runs KILLED and run them again. If that runner is really "
            f"gone (machine down, process killed), run the same command again once its heartbeat is older "
            f"than {self.stale_after:.0f} s (in about {wait:.0f} s), or pass --take-over to take the lock "
            f"now."
        )

    # ---------------------------------------------------------------- protocol
    def acquire(self) -> None:
        """Take the lock or raise :class:`StudyLocked` naming its holder; starts the heartbeat."""
        now = time.time()
        current = self.read()
        if current is not None and current.owner != self.owner:
            reason = "--take-over" if self.take_over else self.stale_reason(current, now)
            if reason is None:
                raise StudyLocked(self._refusal(current, now))
            logger.warning("study lock: taking over from %s (%s)", current.describe(now), reason)
        self._since = now
        self._write()
        try:
            self._settle()
            confirmed = self.read()
        except BaseException:  # interrupted while settling: leave no record behind
            self._delete_if_ours()
            raise
        if confirmed is None or confirmed.owner != self.owner:
            raise StudyLocked(self._refusal(confirmed or current, time.time(), raced=True))
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="medaug-study-lock", daemon=True)
        self._thread.start()

    def _settle(self) -> None:
        """Give a runner that read the lock free at the same time a chance to write its record."""
        time.sleep(self.settle)

    def _beat(self) -> None:
        client = self._new_client()
        while not self._stop.wait(self.heartbeat):
            try:
                record = self.read(client)
                if record is None or record.owner != self.owner:
                    self.lost = record or LockRecord("?", "?", 0, "", 0.0, 0.0)
                    logger.error(
                        "study lock: taken over by %s; this runner stops before its next child",
                        self.lost.describe(time.time()),
                    )
                    return
                self._write(client)
            except Exception as err:  # a server hiccup: try again at the next beat
                logger.warning("study lock: heartbeat failed (%s: %s)", type(err).__name__, err)

    def held(self) -> bool:
        """Whether the tag still names this runner (read afresh)."""
        if self.lost is not None or self._thread is None:
            return False
        record = self.read()
        return record is not None and record.owner == self.owner

    def check(self) -> None:
        """Raise :class:`StudyLockLost` unless this runner still holds the lock."""
        if not self.held():
            now = time.time()
            record = self.lost or self.read()
            holder = record.describe(now) if record is not None else "nobody (the tag was removed)"
            raise StudyLockLost(
                f"the lock of study {self.label} (parent run {self.run_id}) was taken over by "
                f"{holder}; stopping without touching its runs"
            )

    def stop_heartbeat(self) -> None:
        """No more heartbeats; the record stays (and goes stale). ``release`` also removes it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat + 30)
            self._thread = None

    def release(self) -> None:
        """Stop the heartbeat and remove the tag if it is still ours."""
        self.stop_heartbeat()
        self._delete_if_ours()

    def _delete_if_ours(self) -> None:
        try:
            record = self.read()
            if record is not None and record.owner == self.owner:
                self._client.delete_tag(self.run_id, LOCK_TAG)
        except Exception as err:
            logger.warning(
                "study lock: could not release it (%s: %s); it goes stale after %.0f s",
                type(err).__name__,
                err,
                self.stale_after,
            )

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["LOCK_TAG", "LockRecord", "StudyLock", "StudyLocked", "StudyLockLost"]
