"""A study grid: a bundle run once per combination of strategies x axes x seeds, resumably.

``configs/grid.yaml`` of a bundle (or ``--grid``) names config overrides in ``monai.bundle``'s
``#`` syntax::

    description: the three honest baselines
    strategy_key: rebalance#method        # which key is "the strategy" in the report
    baseline: none                        # the strategy the report tests the others against
    axes:                                 # every combination of these values is run
      rebalance#method: [none, class_weight, oversample]
      classifier: [resnet18]
    seeds: 3                              # seeds 0, 1, 2 (or a list: [0, 5, 7]); --seeds N overrides
    seed_key: seed                        # the config key the seed goes to (default: seed)
    amount_key: oversample#amount         # optional: the axis drawn as amount-sweep curves

or, with named strategies (a strategy is a set of overrides; ``strategy_key`` is then ``strategy``)::

    strategies:
      none: {oversample#method: none, oversample#amount: 0}
      gan:  {oversample#method: gan, oversample#target: multiplier}
    axes:
      oversample#amount: [0.5, 1.0, 2.0]
      classifier: [vgg16, inception_v3]

A key a strategy sets is fixed for that strategy (``none`` above runs once per classifier and
seed, not once per amount): the grid is the product of axes, strategies' overrides laid on top,
duplicates dropped.

:class:`StudyRunner` opens one MLflow parent run per study (found again by a key over the bundle's
configs and the grid without its seeds, so a restart or ``--seeds 5`` after ``--seeds 3`` continues
the same study), launches every child as ``python -m monai.bundle run`` in a subprocess (or any
``--launcher``, e.g. ``torchrun``), and makes it a child run through the environment
(:func:`medaug.pipelines.tracking.tracker.environment_tags`): ``mlflow.parentRunId`` and
``medaug.config_hash``, a hash of the configs' contents and the child's overrides. Children
already FINISHED with their hash are skipped, so a study killed half-way loses at most the child
it was running; children left RUNNING by a killed runner are marked KILLED and run again.

One runner per study: a lock file in the output folder, and a lock on the tracking store
(:mod:`medaug.pipelines.study.lock`: a tag on the parent run with a heartbeat), so that runners
started from other folders or machines against one shared server refuse to run the same study
instead of killing each other's children. Children are only marked KILLED or FAILED while the lock
is held.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medaug.io.atomic import write_json_atomic
from medaug.pipelines.study.grid import (
    SMOKE_OVERLAY,
    Child,
    Grid,
    GridError,
    canonical,
    config_hash,
    content_sha,
    expand_grid,
    load_grid,
    parse_grid,
    validate_grid_keys,
)
from medaug.pipelines.study.lock import StudyLock, StudyLocked, StudyLockLost
from medaug.pipelines.tracking.tags import (
    AMOUNT_KEY_TAG,
    AXES_TAG,
    CELL_TAG,
    HASH_TAG,
    OVERRIDES_TAG,
    PARENT_RUN_ENV,
    PARENT_TAG,
    ROLE_TAG,
    RUN_TAGS_ENV,
    SEED_TAG,
    STAGE_TAG,
    STRATEGY_TAG,
    STUDY_KEY_TAG,
)
from medaug.pipelines.tracking.tracker import (
    default_tracking_uri,
    ensure_experiment,
    safe_key,
    search_all_runs,
)
from medaug.processes import arm_parent_death_signal

logger = logging.getLogger("medaug.study")

DEFAULT_LAUNCHER = "{python} -m monai.bundle run"
CACHE_ENV = "MEDAUG_CACHE_DIR"


def _config_id(key: str) -> str:
    return key.replace("::", "#")  # monai.bundle accepts both separators


def smoke_settings_overridden(grid: Grid, smoke: Mapping) -> dict[str, list[str]]:
    """The keys of ``grid`` (axes and strategies) that override a setting of the smoke overlay
    ``smoke`` (its parsed content), each with the smoke keys it overrides: the same key, a key inside
    a smoke section (``oversample#gan#iterations`` under ``oversample#gan``) or a section holding
    smoke keys (``augment#grid`` over ``augment#grid#samples``). The grid wins over the overlay, so
    those children do not run at smoke size."""
    smoke_ids = {_config_id(str(k)): k for k in smoke if not str(k).startswith("_")}
    grid_keys = dict.fromkeys([*grid.axes, *(k for s in grid.strategies.values() for k in s)])
    found = {}
    for key in grid_keys:
        g = _config_id(key)
        hits = [k for i, k in smoke_ids.items() if g == i or g.startswith(i + "#") or i.startswith(g + "#")]
        if hits:
            found[key] = hits
    return found


def smoke_override_warning(grid: Grid, smoke: Mapping, smoke_path: str = SMOKE_OVERLAY) -> str | None:
    """One warning naming the grid keys that override the smoke overlay (None when there are none)."""
    found = smoke_settings_overridden(grid, smoke)
    if not found:
        return None

    def grid_values(key: str) -> list:
        values = list(grid.axes.get(key, []))
        values += [s[key] for s in grid.strategies.values() if key in s and s[key] not in values]
        return values

    def short(value) -> str:
        text = value if isinstance(value, str) else canonical(value)
        return text if len(text) <= 40 else text[:37] + "..."

    parts = []
    for key, hits in found.items():
        smoke_values = ", ".join(f"{k}={short(smoke[k])}" for k in hits)
        parts.append(f"{key} (smoke: {smoke_values}; grid: {', '.join(short(v) for v in grid_values(key))})")
    return (
        f"the grid {grid.source} overrides {len(found)} setting(s) of the smoke overlay {smoke_path}: "
        + "; ".join(parts)
        + ". The grid wins, so these children do not run at smoke size; for a small study, drop these axes "
        "(or strategy keys) from the grid."
    )


def _die_with_parent() -> None:
    """Children get SIGTERM when the runner dies, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG), so a
    killed study never leaves a training running unsupervised."""
    arm_parent_death_signal(signal.SIGTERM)


class StudyInterrupted(Exception):
    """SIGTERM/SIGINT reached the runner; the running child was stopped and marked KILLED."""


@dataclass
class StudySummary:
    parent_run_id: str
    experiment: str
    tracking_uri: str
    total: int
    skipped: int
    finished: int = 0
    failed: list[str] = field(default_factory=list)
    remaining: int = 0

    @property
    def complete(self) -> bool:
        return not self.failed and self.remaining == 0


class StudyRunner:
    """Run a bundle's grid as MLflow child runs of one parent run.

    Args:
        bundle: the bundle folder.
        grid: a :class:`Grid` (e.g. from :func:`load_grid`).
        overlays: config files merged after ``configs/train.json`` (e.g. ``configs/smoke.json``).
        output_dir: the children's ``output_dir`` (run folders; the embedded MLflow store when
            ``MLFLOW_TRACKING_URI`` is unset). Default ``<bundle>/runs``.
        launcher: the command before the bundle arguments; ``{python}`` is this interpreter.
            E.g. ``"torchrun --nproc_per_node=2 -m monai.bundle run"`` with a DDP overlay.
        cache_dir: shared by all children (``MEDAUG_CACHE_DIR``, and the ``cache_dir`` key when the
            bundle has one), so an oversampling stage fits each generator once. Default
            ``<output_dir>/cache``.
        max_children: stop after launching this many children (the rest on the next run).
        progress: show a progress bar with ETA.
        stream: show the children's output instead of writing it to log files only.
        take_over: take the study's lock on the tracking store even from a runner whose heartbeat
            is live (``--take-over``: for a runner known to be gone).
        lock_heartbeat, lock_stale_after, lock_settle: seconds between the lock's heartbeats, age
            of a heartbeat after which the lock may be taken over, and the wait between writing the
            lock and reading it back (see :class:`~medaug.pipelines.study.lock.StudyLock`).
    """

    def __init__(
        self,
        bundle: str | os.PathLike,
        grid: Grid,
        overlays: Sequence[str | os.PathLike] = (),
        output_dir: str | os.PathLike | None = None,
        launcher: str = DEFAULT_LAUNCHER,
        cache_dir: str | os.PathLike | None = None,
        max_children: int | None = None,
        progress: bool = True,
        stream: bool = False,
        take_over: bool = False,
        lock_heartbeat: float = 30.0,
        lock_stale_after: float = 180.0,
        lock_settle: float = 2.0,
    ) -> None:
        from monai.bundle import ConfigParser

        self.bundle = Path(bundle).resolve()
        self.config_files = [self.bundle / "configs" / "train.json", *(Path(p).resolve() for p in overlays)]
        for path in self.config_files:
            if not path.is_file():
                raise GridError(f"--config: file {str(path)!r} not found")
        self.grid = grid
        self.parser = ConfigParser()
        self.parser.read_config([str(p) for p in self.config_files])
        validate_grid_keys(grid, self.parser)
        self.contents = [ConfigParser.load_config_file(str(p)) for p in self.config_files]
        name = self.parser.get("bundle_name")
        self.experiment = name if isinstance(name, str) and name and name[0] not in "$@%" else self.bundle.name
        self.output_dir = Path(output_dir).resolve() if output_dir else self.bundle / "runs"
        self.cache_dir = Path(cache_dir).resolve() if cache_dir else self.output_dir / "cache"
        self.launcher = launcher
        self.launch_prefix = shlex.split(launcher.format(python=shlex.quote(sys.executable)))
        if not self.launch_prefix:
            raise GridError("--launcher: empty command")
        self.max_children = max_children
        self.progress = progress
        self.stream = stream
        self.tracking_uri = default_tracking_uri(self.output_dir)
        self.study_key = content_sha(
            {"experiment": self.experiment, "configs": self.contents, "grid": grid.without_seeds()}
        )[:16]
        self.children = expand_grid(grid)
        self.hashes = {c.name: config_hash(self.contents, c.overrides) for c in self.children}
        self.study_dir = self.output_dir / f"study-{self.study_key}"
        self._current: subprocess.Popen | None = None
        if lock_heartbeat <= 0 or lock_stale_after <= lock_heartbeat:
            raise ValueError(f"lock_stale_after ({lock_stale_after}) must exceed lock_heartbeat ({lock_heartbeat}) > 0")
        self.take_over = take_over
        self.lock_heartbeat, self.lock_stale_after, self.lock_settle = lock_heartbeat, lock_stale_after, lock_settle
        self.study_lock: StudyLock | None = None
        self.smoke_warnings = [
            warning
            for path, content in zip(self.config_files, self.contents)
            if path.name == SMOKE_OVERLAY
            and isinstance(content, Mapping)
            and (warning := smoke_override_warning(grid, content, str(path)))
        ]

    # ---------------------------------------------------------------- MLflow
    def _client(self):
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.tracking_uri)

    def _experiment_id(self, client) -> str:
        return ensure_experiment(client, self.experiment, self.tracking_uri)

    def _find_parent(self, client, experiment_id: str) -> str | None:
        found = search_all_runs(
            client, experiment_id, f"tags.`{STUDY_KEY_TAG}` = '{self.study_key}' and tags.`{ROLE_TAG}` = 'study'"
        )
        return min(found, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if found else None

    def _parent(self, client, experiment_id: str) -> str:
        """The study's parent run: found again by its study key, or created. Changes no status (the
        caller does, once it holds the lock). Two runners that both found none and created one each
        see both after ``lock_settle`` and keep the same (the earliest); the other is deleted."""
        found = self._find_parent(client, experiment_id)
        if found is not None:
            return found
        grid_name = Path(self.grid.source).stem
        run_name = f"study-{self.bundle.name}-{grid_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        tags = {
            "mlflow.runName": run_name,
            ROLE_TAG: "study",
            STUDY_KEY_TAG: self.study_key,
            "medaug.strategy_key": self.grid.strategy_key,
            "medaug.baseline": self.grid.baseline or "",
            AMOUNT_KEY_TAG: self.grid.amount_key or "",
            STAGE_TAG: "study",
        }
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        run_id = run.info.run_id
        from mlflow.entities import Param

        params = {
            "grid.source": self.grid.source,
            "grid.axes": canonical(self.grid.axes),
            "grid.strategies": canonical(self.grid.strategies),
            "grid.strategy_key": self.grid.strategy_key,
            "grid.baseline": str(self.grid.baseline),
            "grid.amount_key": str(self.grid.amount_key),
            "configs": canonical([str(p) for p in self.config_files]),
            "launcher": self.launcher,
        }
        client.log_batch(run_id, params=[Param(safe_key(k), str(v)[:6000]) for k, v in params.items()])
        time.sleep(self.lock_settle)
        kept = self._find_parent(client, experiment_id) or run_id
        if kept != run_id:
            logger.info(
                "study %s: another runner created its parent run %s at the same time; using it", self.study_key, kept
            )
            client.delete_run(run_id)
        return kept

    def _log_grid(self, client, run_id: str) -> None:
        """The grid as run (seeds included) and the children with their hashes, as artifacts."""
        grid = self.grid.as_dict() | {
            "children": [
                {
                    "name": c.name,
                    "strategy": c.strategy,
                    "cell": c.cell,
                    "seed": c.seed,
                    "axes": c.axes,
                    "overrides": c.overrides,
                    "config_hash": self.hashes[c.name],
                }
                for c in self.children
            ]
        }
        path = write_json_atomic(self.study_dir / "grid.json", grid)
        client.log_artifact(run_id, str(path))

    def _children_runs(self, client, experiment_id: str, parent: str) -> dict[str, list]:
        by_hash: dict[str, list] = {}
        for run in search_all_runs(client, experiment_id, f"tags.`{PARENT_TAG}` = '{parent}'"):
            by_hash.setdefault(run.data.tags.get(HASH_TAG, ""), []).append(run)
        return by_hash

    # ---------------------------------------------------------------- children
    def _command(self, child: Child) -> list[str]:
        override_file = self.study_dir / "children" / f"{child.name}.json"
        write_json_atomic(override_file, child.overrides)
        files = [str(p) for p in self.config_files] + [str(override_file)]
        cmd = [
            *self.launch_prefix,
            "--config_file",
            json.dumps(files),
            "--bundle_root",
            str(self.bundle),
            "--output_dir",
            str(self.output_dir),
        ]
        if "cache_dir" in self.parser:
            cmd += ["--cache_dir", str(self.cache_dir)]
        return cmd

    def _environment(self, child: Child, parent: str) -> dict[str, str]:
        tags = {
            HASH_TAG: self.hashes[child.name],
            STUDY_KEY_TAG: self.study_key,
            ROLE_TAG: "child",
            STRATEGY_TAG: child.strategy,
            CELL_TAG: child.cell,
            SEED_TAG: child.seed,
            AXES_TAG: canonical(child.axes),
            OVERRIDES_TAG: canonical({k: v for k, v in child.overrides.items() if k != self.grid.seed_key}),
        }
        return {
            **os.environ,
            PARENT_RUN_ENV: parent,
            RUN_TAGS_ENV: canonical(tags),
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            CACHE_ENV: str(self.cache_dir),
        }

    def _stop_current(self) -> None:
        proc = self._current
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _launch(self, child: Child, parent: str, log_path: Path) -> int:
        cmd = self._command(child)
        logger.info("child %s: %s", child.name, shlex.join(cmd))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as log:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            out = None if self.stream else log
            self._current = subprocess.Popen(
                cmd,
                env=self._environment(child, parent),
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
            try:
                return self._current.wait()
            finally:
                self._stop_current()
                self._current = None

    def _check_lock(self) -> None:
        """Raise :class:`StudyLockLost` unless this runner holds the study's lock (read afresh)."""
        if self.study_lock is None:
            raise StudyLockLost("the study's lock is not held")
        self.study_lock.check()

    def _mark(self, client, runs: Sequence, status: str, only_running: bool = True) -> None:
        """Set the status of child runs; only while holding the lock (they may be another runner's)."""
        runs = [r for r in runs if not only_running or r.info.status == "RUNNING"]
        if not runs:
            return
        self._check_lock()
        for run in runs:
            client.set_terminated(run.info.run_id, status)

    def run(self) -> StudySummary:
        from tqdm.auto import tqdm

        for warning in self.smoke_warnings:  # before any child starts: a "quick look" that is not quick
            logger.warning(warning)
        client = self._client()
        experiment_id = self._experiment_id(client)
        self.study_dir.mkdir(parents=True, exist_ok=True)
        with self._lock(client, experiment_id) as parent:
            client.update_run(parent, status="RUNNING")
            self._log_grid(client, parent)
            existing = self._children_runs(client, experiment_id, parent)
            # Children a killed runner left RUNNING will never finish: say so in MLflow, run them again.
            self._mark(client, [r for runs in existing.values() for r in runs], "KILLED")
            done = {h for h, runs in existing.items() if any(r.info.status == "FINISHED" for r in runs)}
            todo = [c for c in self.children if self.hashes[c.name] not in done]
            summary = StudySummary(
                parent,
                self.experiment,
                self.tracking_uri,
                total=len(self.children),
                skipped=len(self.children) - len(todo),
            )
            if summary.skipped:
                print(
                    f"study {self.experiment}: {summary.skipped} of {len(self.children)} child runs already "
                    f"finished with the same config hash; skipping them",
                    file=sys.stderr,
                )
            launch = todo if self.max_children is None else todo[: self.max_children]
            previous = signal.getsignal(signal.SIGTERM)
            with contextlib.suppress(ValueError):  # not the main thread: SIGTERM keeps its handler
                signal.signal(signal.SIGTERM, _raise_interrupted)
            bar = tqdm(
                total=len(self.children),
                initial=summary.skipped,
                unit="run",
                desc=self.experiment,
                disable=not self.progress,
                dynamic_ncols=True,
            )
            try:
                for child in launch:
                    self._check_lock()
                    bar.set_postfix_str(child.name[:40])
                    log_path = self.study_dir / "logs" / f"{child.name}.log"
                    code = self._launch(child, parent, log_path)
                    self._check_lock()
                    runs = self._children_runs(client, experiment_id, parent).get(self.hashes[child.name], [])
                    if code == 0 and any(r.info.status == "FINISHED" for r in runs):
                        summary.finished += 1
                    else:
                        self._mark(client, runs, "FAILED")
                        summary.failed.append(child.name)
                        tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
                        why = (
                            f"exit code {code}"
                            if code
                            else (
                                "exit code 0 but no FINISHED MLflow run tagged with its "
                                "config hash: does the bundle use medaug's RunTracker?"
                            )
                        )
                        bar.write(f"child {child.name} failed ({why}); log: {log_path}\n{tail}", file=sys.stderr)
                    bar.update(1)
            except (KeyboardInterrupt, StudyInterrupted):
                self._stop_current()
                if self.study_lock is not None and self.study_lock.held():  # else: the runs are another's
                    latest = self._children_runs(client, experiment_id, parent)
                    self._mark(client, [r for runs in latest.values() for r in runs], "KILLED")
                    client.set_terminated(parent, "KILLED")
                raise
            finally:
                bar.close()
                with contextlib.suppress(ValueError, TypeError):
                    signal.signal(signal.SIGTERM, previous)
            summary.remaining = len(todo) - len(launch)
            status = "FINISHED" if summary.complete else ("FAILED" if summary.failed else "KILLED")
            self._check_lock()
            client.log_batch(parent, metrics=_summary_metrics(summary))
            client.set_terminated(parent, status)
        return summary

    @contextlib.contextmanager
    def _lock(self, client, experiment_id: str):
        """One runner per study at a time (a second would mark the first one's children KILLED):
        a lock file in the output folder, then the study's lock on the tracking store, held as a tag
        of the parent run with a heartbeat; yields the parent run id. Released on the way out, also
        on an interruption; a runner killed outright leaves a lock that goes stale."""
        path = self.study_dir / ".lock"
        handle = open(path, "w")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StudyLocked(f"another 'medaug study run' is running this study (lock {path})") from None
            parent = self._parent(client, experiment_id)
            lock = StudyLock(
                self.tracking_uri,
                parent,
                heartbeat=self.lock_heartbeat,
                stale_after=self.lock_stale_after,
                settle=self.lock_settle,
                take_over=self.take_over,
                where=str(self.output_dir),
                label=self.study_key,
            )
            lock.acquire()
            self.study_lock = lock
            try:
                yield parent
            finally:
                self.study_lock = None
                lock.release()
        finally:
            handle.close()


def _raise_interrupted(signum, frame):
    raise StudyInterrupted(f"signal {signum}")


def _summary_metrics(summary: StudySummary) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    values = {
        "children_total": summary.total,
        "children_finished": summary.skipped + summary.finished,
        "children_failed": len(summary.failed),
        "children_remaining": summary.remaining,
    }
    return [Metric(k, float(v), now, 0) for k, v in values.items()]


__all__ = [
    "Grid",
    "GridError",
    "Child",
    "StudyRunner",
    "StudySummary",
    "StudyInterrupted",
    "StudyLocked",
    "StudyLockLost",
    "parse_grid",
    "load_grid",
    "validate_grid_keys",
    "expand_grid",
    "config_hash",
    "DEFAULT_LAUNCHER",
    "smoke_override_warning",
    "smoke_settings_overridden",
]
