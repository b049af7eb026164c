"""The study lock on a tracking store (a tag on the parent run with a heartbeat): who gets it, when a
holder counts as gone, and what a runner that lost it may still do."""

import subprocess
import sys
import time

import mlflow
import pytest

from medaug.pipelines.study import lock as study_lock
from medaug.pipelines.study.lock import LOCK_TAG, StudyLock, StudyLocked, StudyLockLost


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"  # one database for the module: creating one takes seconds
    return uri, mlflow.MlflowClient(uri).create_experiment("locks", (root / "mlruns").as_uri())


@pytest.fixture
def parent(store):
    """A fresh parent run (uri, run id)."""
    uri, experiment = store
    return uri, mlflow.MlflowClient(uri).create_run(experiment).info.run_id


def _until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _lock(parent, **kwargs):
    uri, run_id = parent
    return StudyLock(uri, run_id, **{"heartbeat": 0.05, "stale_after": 60.0, "settle": 0.0, **kwargs})


def test_a_held_lock_is_refused_naming_its_owner_and_released_at_the_end(parent):
    first = _lock(parent, where="/home/alice/runs", label="abc123")
    with first:
        assert first.held()
        with pytest.raises(
            StudyLocked,
            match=r"study abc123 is being run by another runner .*host \S+, pid \d+, "
            r"since \d{4}-\d\d-\d\d .*running from /home/alice/runs.*--take-over",
        ):
            _lock(parent, label="abc123").acquire()
        assert first.held(), "a refused runner leaves the owner's record alone"
    assert first.read() is None
    with _lock(parent) as second:  # free again
        assert second.held()


def test_the_heartbeat_keeps_a_lock_alive_and_a_silent_one_goes_stale(parent):
    first = _lock(parent, heartbeat=0.05)
    first.acquire()
    written = first.read().heartbeat
    _until(lambda: first.read().heartbeat != written, "the heartbeat thread rewrites the record")
    first.stop_heartbeat()  # its machine goes silent, the record stays
    last = first.read()
    later = _lock(parent, stale_after=0.5)
    assert later.stale_reason(last, now=last.heartbeat + 0.4) is None
    assert "heartbeat is 1 s old" in later.stale_reason(last, now=last.heartbeat + 1.0)
    _until(lambda: later.stale_reason(first.read()) is not None, "a silent lock goes stale")
    later.acquire()
    assert later.held() and not first.held()
    first.release()
    assert later.held(), "the old owner's release does not remove the new owner's record"
    later.release()


def test_a_lock_left_by_a_dead_process_on_this_machine_is_taken_over_at_once(parent, monkeypatch):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with monkeypatch.context() as patched:
        patched.setattr(study_lock.os, "getpid", lambda: dead.pid)
        killed = _lock(parent)
    killed.acquire()
    killed.stop_heartbeat()  # SIGKILL: no release
    with _lock(parent, stale_after=60.0) as again:
        assert again.held()


def test_take_over_replaces_a_live_owner_who_then_stops_at_its_next_check(parent):
    first = _lock(parent)
    first.acquire()
    second = _lock(parent, take_over=True)
    second.acquire()
    with pytest.raises(StudyLockLost, match=r"taken over by host \S+, pid \d+"):
        first.check()
    first.release()
    assert second.held()
    second.release()
    assert second.read() is None


def test_of_two_runners_that_both_found_the_lock_free_only_the_last_writer_proceeds(parent):
    first, second = _lock(parent), _lock(parent)
    # second looked while the lock was still free, and writes its record while first waits to read back
    free_at_first = iter(["free"])
    second.read = lambda client=None, real=second.read: None if next(free_at_first, "") else real(client)
    first._settle = second.acquire
    with pytest.raises(StudyLocked, match="took the lock of the study at the same moment"):
        first.acquire()
    assert second.held() and not first.held()
    second.release()


def test_an_unreadable_tag_does_not_block_the_study(parent):
    uri, run_id = parent
    mlflow.MlflowClient(uri).set_tag(run_id, LOCK_TAG, "locked by bob")
    with _lock(parent) as lock:
        assert lock.held()


def test_stale_after_must_exceed_the_heartbeat(parent):
    with pytest.raises(ValueError, match="must exceed the heartbeat interval"):
        _lock(parent, heartbeat=30.0, stale_after=10.0)
