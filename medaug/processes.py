"""Child processes that do not outlive their parent, however the parent dies (SIGKILL included)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _load_libc():
    with contextlib.suppress(OSError):
        return ctypes.CDLL(None, use_errno=True)  # the process's own libc: glibc or musl
    return None


# Loaded in the parent, at import: loading a library in a child forked while other threads run
# (a study's lock heartbeat, decode threads) could deadlock on a lock one of them held.
_LIBC = _load_libc()


def arm_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Linux ``prctl(PR_SET_PDEATHSIG, sig)`` for the calling process; False where unavailable. Safe
    in a ``preexec_fn`` (no allocation, no thread): the signal arrives when the parent dies."""
    if _LIBC is None:
        return False
    with contextlib.suppress(Exception):
        return _LIBC.prctl(PR_SET_PDEATHSIG, int(sig)) == 0
    return False


def die_with_parent(sig: int = signal.SIGTERM, *, parent_pid: int | None = None, poll_s: float = 1.0) -> None:
    """Call in a child process (a pool worker's initializer, a ``preexec_fn``): the child gets ``sig``
    when its parent dies.

    Linux: ``prctl(PR_SET_PDEATHSIG)``, then a check that the parent is still the one that started us
    (it may have died before the prctl; pass ``parent_pid`` when known, e.g.
    ``multiprocessing.parent_process().pid`` in a pool worker; default: the parent now). Elsewhere, or
    if the prctl fails: a daemon thread that polls ``os.getppid()`` every ``poll_s`` seconds. Linux
    sends the signal when the parent *thread* that forked the child ends: start pools from a thread
    that lives as long as they do.
    """
    expected = parent_pid if parent_pid is not None else os.getppid()
    armed = arm_parent_death_signal(sig)
    if os.getppid() != expected:  # the parent died before we could ask; we are an orphan already
        os.kill(os.getpid(), sig)
        return
    if not armed:
        threading.Thread(
            target=_watch_parent, args=(expected, sig, poll_s), name="medaug-parent-watch", daemon=True
        ).start()


def _watch_parent(expected: int, sig: int, poll_s: float) -> None:
    stop = threading.Event()
    while not stop.wait(poll_s):
        if os.getppid() != expected:
            os.kill(os.getpid(), sig)
            return
