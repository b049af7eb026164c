"""One MLflow run per bundle run.

The run is opened before training so that MONAI's ``MLFlowHandler`` instances on the trainer and
the evaluator (given the same ``run_name``) log their per-epoch values into it, and it is closed by
the test evaluation, which adds the final metrics and artifacts. Where it lives:
``MLFLOW_TRACKING_URI`` when set (a server, or any database URI), else an embedded SQLite store
``<output_dir>/mlflow.db`` with artifacts in ``<output_dir>/mlruns`` (MONAI's layout for SQLite).

A study runner (``medaug study run``) makes each bundle run a child of its study's parent run without
touching the bundle's config: it sets ``MEDAUG_PARENT_RUN_ID`` (becomes the ``mlflow.parentRunId``
tag) and ``MEDAUG_RUN_TAGS`` (a JSON object of extra tags, e.g. the child's config hash) in the
environment of every child it launches.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import re
import time
import weakref
from collections.abc import Mapping
from pathlib import Path

import mlflow
from ignite.engine import Events
from mlflow.entities import Metric, Param, RunStatus, RunTag

from medaug.bundle_errors import on_uncaught_error
from medaug.io.atomic import write_json_atomic
from medaug.pipelines.distributed import on_rank0_and_share, rank0_first_context
from medaug.pipelines.tracking.tags import DATA_LEAK_TAG, ERROR_TAG, PARENT_RUN_ENV, PARENT_TAG, RUN_TAGS_ENV

logger = logging.getLogger("medaug.tracking")
MAX_PARAM_VALUE = 6000  # MLflow's limit on a parameter value
MAX_TAG_VALUE = 5000  # MLflow's limit on a tag value
_OPEN_TRACKERS: weakref.WeakSet = weakref.WeakSet()  # started and not yet ended


def fail_open_runs(error: BaseException) -> list[Path]:
    """End every run this process started and did not end FAILED, with ``error`` as its tag; their
    run folders. Called by :mod:`medaug.bundle_errors` on an error no code caught, so a run that fails
    in its setup (after :meth:`RunTracker.start`) does not stay RUNNING."""
    folders = []
    for tracker in list(_OPEN_TRACKERS):
        tracker.fail(error)
        folders.append(tracker.run_dir)
    return folders


on_uncaught_error(fail_open_runs)


def environment_tags() -> dict[str, str]:
    """Tags a launcher asked for through ``MEDAUG_PARENT_RUN_ID`` and ``MEDAUG_RUN_TAGS``."""
    tags = {}
    text = os.environ.get(RUN_TAGS_ENV, "").strip()
    if text:
        try:
            extra = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{RUN_TAGS_ENV} must be a JSON object of tags, got {text[:80]!r} ({err})") from None
        if not isinstance(extra, dict):
            raise ValueError(f"{RUN_TAGS_ENV} must be a JSON object of tags, got {type(extra).__name__}")
        tags.update({str(k): str(v) for k, v in extra.items()})
    if os.environ.get(PARENT_RUN_ENV, "").strip():
        tags[PARENT_TAG] = os.environ[PARENT_RUN_ENV].strip()
    return tags


def timestamp() -> str:
    """``YYYYmmdd-HHMMSS`` for run names; under DDP rank 0's clock, sent to every rank (a
    collective: every rank must call it), so that all ranks agree on the run name and folder."""
    return on_rank0_and_share(time.strftime, "%Y%m%d-%H%M%S")


def default_tracking_uri(output_dir: str | os.PathLike) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<output_dir>/mlflow.db``."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def artifact_location_for(uri: str) -> str | None:
    """Artifacts of a local SQLite store go in ``mlruns`` beside the database (never into the
    current folder); a server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlruns").resolve().as_uri()
    return None


def search_all_runs(client, experiment_id: str, filter_string: str = "") -> list:
    """Every run of an experiment that matches ``filter_string``, all pages of MLflow's search
    (one page holds at most 1000 runs; a study grid with its reports can hold more)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def safe_key(name: str) -> str:
    """MLflow accepts letters, digits, ``_ - . space /`` in names; bundle ids use ``#``."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", str(name).replace("#", "."))


def flatten(config, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"train.trainer.max_epochs": "40", ...}`` (values as text, truncated to
    MLflow's limit)."""
    items = {}
    if isinstance(config, Mapping):
        for key, value in config.items():
            items.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(config, (list, tuple)) and any(isinstance(v, (Mapping, list, tuple)) for v in config):
        for i, value in enumerate(config):
            items.update(flatten(value, f"{prefix}.{i}"))
    else:
        text = json.dumps(config, default=str) if not isinstance(config, str) else config
        items[safe_key(prefix)] = text[:MAX_PARAM_VALUE]
    return items


def current_bundle_parser():
    """The ``ConfigParser`` of the ``monai.bundle`` workflow running this code, or None outside one.

    Bundle expressions have no reference to their own parser, so this finds the ``ConfigWorkflow``
    in the call stack; it is the only way to log every key a user set, including command-line
    overrides, and the values they resolved to.
    """
    from monai.bundle import ConfigWorkflow

    frame = inspect.currentframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, ConfigWorkflow):
            return candidate.parser
        frame = frame.f_back
    return None


def _is_plain(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def resolved_config(parser) -> dict:
    """The bundle config with every reference or expression that has already been evaluated to a
    plain value (a path, a number, a name) replaced by that value; objects and not-yet-evaluated
    expressions stay as written. Nothing is evaluated here."""
    resolved = parser.ref_resolver.resolved_content

    def walk(node, ids):
        if isinstance(node, dict):
            return {k: walk(v, ids + [str(k)]) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, ids + [str(i)]) for i, v in enumerate(node)]
        if isinstance(node, str) and node[:1] in ("$", "@"):
            key = "::".join(ids)
            if key in resolved and _is_plain(resolved[key]):
                return resolved[key]
        return node

    return walk(parser.get(), [])


class RunTracker:
    """Opens, feeds and closes the MLflow run of one bundle run.

    Args:
        experiment_name: usually the bundle name.
        output_dir: where the embedded store lives when ``MLFLOW_TRACKING_URI`` is unset.
        run_dir: this run's own folder (its reports, then logged as artifacts).
        run_name: unique name; MONAI's ``MLFlowHandler`` finds the run by it.
        tags: e.g. ``{"strategy": "class_weight", "seed": 0}``; the tags of
            :func:`environment_tags` are added on top.
        params: extra parameters besides the flattened bundle config.
        parent_run_id: make this run a child of that run (default: ``MEDAUG_PARENT_RUN_ID``).
    """

    rank0_only = True  # one MLflow run: under DDP only rank 0 keeps it in its handler lists

    def __init__(
        self,
        experiment_name: str,
        output_dir: str | os.PathLike,
        run_name: str,
        run_dir: str | os.PathLike | None = None,
        tags: Mapping | None = None,
        params: Mapping | None = None,
        parent_run_id: str | None = None,
    ) -> None:
        self.experiment_name = experiment_name
        self.output_dir = Path(output_dir)
        self.run_dir = Path(run_dir) if run_dir else self.output_dir / run_name
        self.run_name = run_name
        self.tags = {k: str(v) for k, v in (tags or {}).items()} | environment_tags()
        if parent_run_id:
            self.tags[PARENT_TAG] = str(parent_run_id)
        self.params = dict(params or {})
        self.tracking_uri = default_tracking_uri(output_dir)
        # The first client of a new SQLite store creates its tables; under DDP every rank builds a
        # tracker (and MONAI's MLflow handlers), and two creating the tables at once collide.
        with rank0_first_context():
            self.client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        self.run_id: str | None = None

    def _experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(self.experiment_name, artifact_location_for(self.tracking_uri))
        except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel run
            return self.client.get_experiment_by_name(self.experiment_name).experiment_id

    def start(self, study_data=None) -> str:
        """Open the run; log the bundle config, extra params, the dataset fingerprint and its reports."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        run = self.client.create_run(
            self._experiment_id(), run_name=self.run_name, tags={"mlflow.runName": self.run_name, **self.tags}
        )
        self.run_id = run.info.run_id
        _OPEN_TRACKERS.add(self)
        parser = current_bundle_parser()
        config = resolved_config(parser) if parser is not None else {}
        # Bundle metadata is a file of its own; only its version matters for comparing runs.
        meta = config.pop("_meta_", {}) if isinstance(config, dict) else {}
        params = flatten(config)
        params["bundle_version"] = str(meta.get("version", "unknown"))
        if parser is not None:
            self.log_artifact(write_json_atomic(self.run_dir / "config.json", parser.get()))
        params.update(flatten(self.params))
        if study_data is not None:
            fingerprint = study_data.fingerprint()
            params.update(flatten(fingerprint, "data"))
            self.log_metrics(
                {"data_skipped_files": len(study_data.skipped), "data_cross_split_duplicates": len(study_data.leaks)}
            )
            # Reports already written by build_study_data are logged as they are, not written again.
            reports = study_data.report_paths or study_data.write_reports(self.run_dir)
            for path in reports.values():
                self.log_artifact(path)
            if study_data.leaks:
                self.client.set_tag(
                    self.run_id, DATA_LEAK_TAG, f"{len(study_data.leaks)} duplicate image(s) across splits"
                )
        self.log_params(params)
        logger.info(
            "MLflow run %s (%s) in experiment %r at %s",
            self.run_name,
            self.run_id,
            self.experiment_name,
            self.tracking_uri,
        )
        return self.run_id

    def log_params(self, params: Mapping[str, str]) -> None:
        items = [Param(safe_key(k), str(v)[:MAX_PARAM_VALUE]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [
            Metric(safe_key(k), float(v), now, step)
            for k, v in metrics.items()
            if v is not None and not (isinstance(v, float) and math.isnan(v))
        ]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(safe_key(k), str(v)) for k, v in tags.items()])

    def metric_history(self, *names: str) -> dict[str, list[tuple[int, float]]]:
        """``{name: [(step, value), ...]}`` as logged so far (for training-curve plots)."""
        return {n: [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, n)] for n in names}

    def end(self, status: str = "FINISHED") -> None:
        _OPEN_TRACKERS.discard(self)
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)

    def fail(self, error: BaseException) -> None:
        """End the run FAILED, with the error (``Type: message``) as the :data:`ERROR_TAG` tag."""
        if self.run_id is not None:
            text = f"{type(error).__name__}: {error}"
            self.client.set_tag(self.run_id, ERROR_TAG, text[:MAX_TAG_VALUE])
        self.end(RunStatus.to_string(RunStatus.FAILED))

    def fail_on_exception(self, engine) -> None:
        """Attach to an engine: an exception marks the run FAILED instead of leaving it RUNNING."""

        def _failed(_engine, exc):
            self.fail(exc)
            raise exc

        engine.add_event_handler(Events.EXCEPTION_RAISED, _failed)

    def attach(self, engine) -> None:
        """So the tracker can sit in a bundle's handler list."""
        self.fail_on_exception(engine)
