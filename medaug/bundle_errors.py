"""How a ``monai.bundle run`` of a medaug bundle ends on an error.

MONAI's runner lets every exception reach the interpreter, which prints a traceback of 60 lines
(MONAI wraps a component's error in its own ``RuntimeError``) and exits 1; a user who misspelled a
setting has to find the one line that matters. :func:`install` sets a :data:`sys.excepthook` that:

* ends every MLflow run this process started and did not end as ``FAILED``, with the error in the
  ``medaug.error`` tag (any error: a run must never stay ``RUNNING``);
* for a user's mistake (:data:`USER_ERRORS`: a :class:`~medaug.settings.SettingsError` or another
  medaug error whose message names the setting, found also inside MONAI's wrapping), prints one
  short message to stderr, writes the full traceback to a log file (the run's folder when its
  MLflow run had started, else a temporary file) that the message names, and exits 2;
* leaves any other error to the previous hook (the usual traceback, exit 1).

``import medaug`` installs it only when the process is ``python -m monai.bundle`` (see
:func:`running_monai_bundle`), so medaug used as a library, pytest and medaug's own CLI (which has
its own exit codes) keep Python's handling.
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

__all__ = ["EXIT_SETTINGS", "error_hook", "install", "on_uncaught_error", "running_monai_bundle", "user_error"]

EXIT_SETTINGS = 2  # the CLI's code for a usage or data error
_CALLBACKS: list[Callable[[BaseException], list[Path]]] = []
_installed = False


def _user_error_types() -> tuple[type[BaseException], ...]:
    # imported when needed: installing the hook must not import medaug's stages
    from medaug.io.sources import LabelsError
    from medaug.io.study_data import TooFewImagesError
    from medaug.settings import SettingsError
    from medaug.transforms.presets.plan import PresetError

    return SettingsError, PresetError, LabelsError, TooFewImagesError


def error_in_chain(err: BaseException | None, kind: type | tuple[type, ...]) -> BaseException | None:
    """The first ``kind`` in ``err``'s chain of causes, or None: MONAI's ``Compose`` wraps transform errors
    in ``RuntimeError``, its ``ConfigParser`` what a component raises."""
    seen, current = set(), err
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def user_error(error: BaseException | None) -> BaseException | None:
    """The user's mistake behind ``error`` (itself, or what MONAI's ``RuntimeError("Failed to
    instantiate ...")`` was raised from), or None for any other error."""
    return error_in_chain(error, _user_error_types())


def on_uncaught_error(callback: Callable[[BaseException], list[Path]]) -> None:
    """Have ``callback(error)`` called by the hook before it reports any error; it returns the
    folders of what it closed (the tracker ends its open MLflow runs FAILED this way, so this module
    needs no import of the stages)."""
    _CALLBACKS.append(callback)


def _run_callbacks(error: BaseException) -> list[Path]:
    folders = []
    for callback in _CALLBACKS:
        try:
            folders += callback(error)
        except Exception as err:  # e.g. the MLflow store is what failed; the error itself still gets reported
            print(f"medaug: could not mark the MLflow run FAILED ({type(err).__name__}: {err})", file=sys.stderr)
    return folders


def _write_log(text: str, folders: list[Path]) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for folder in folders:
        try:
            path = Path(folder) / "error.log"
            path.write_text(text)
            return path
        except OSError:
            continue
    fd, name = tempfile.mkstemp(prefix=f"medaug-error-{stamp}-", suffix=".log")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return Path(name)


def error_hook(previous):
    """The :data:`sys.excepthook` :func:`install` sets, handing what it does not handle to ``previous``."""

    def hook(exc_type, exc, tb) -> None:
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: as Python does
            _run_callbacks(exc)
            return previous(exc_type, exc, tb)
        folders = _run_callbacks(exc)
        mistake = user_error(exc)
        if mistake is None:
            return previous(exc_type, exc, tb)
        log = _write_log("".join(traceback.format_exception(exc_type, exc, tb)), folders)
        sys.stdout.flush()  # the run's log lines first, the message last
        print(f"\nmedaug: {mistake}\n(full traceback in {log})", file=sys.stderr)
        sys.exit(EXIT_SETTINGS)

    return hook


def running_monai_bundle() -> bool:
    """Whether this process is ``python -m monai.bundle ...`` (also under ``torchrun -m``)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return getattr(spec, "name", None) in ("monai.bundle.__main__", "monai.bundle")


def install() -> None:
    """Set the hook (once; chaining the hook that was set before)."""
    global _installed
    if not _installed:
        sys.excepthook = error_hook(sys.excepthook)
        _installed = True
