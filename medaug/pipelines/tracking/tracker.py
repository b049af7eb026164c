"""One MLflow run per bundle run.

The run is opened before training so that MONAI's ``MLFlowHandler`` instances on the trainer and
the evaluator (given the same ``run_name``) log their per-epoch values into it, and it is closed by
the test evaluation, which adds the final metrics and artifacts. Where it lives:
``MLFLOW_TRACKING_URI`` when set (a server, or any database URI), else an embedded SQLite store
``<output_dir>/mlflow.db`` with artifacts in ``<output_dir>/mlruns`` (MONAI's layout for SQLite).

What a run holds: the bundle config as it resolved (plain values only, :func:`resolved_config`)
as parameters, the data as an MLflow dataset input (:func:`dataset_input`), per-epoch and test
metrics, the reports and the checkpoint as artifacts and, with ``log_model``, the network as an
MLflow model with its signature. The experiment is tagged as classic model development, so
MLflow 3's UI opens it on its runs.

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
import warnings
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

import mlflow
import numpy as np
import torch
from ignite.engine import Events
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from monai.bundle.utils import EXPR_KEY, ID_REF_KEY, ID_SEP_KEY

from medaug.bundle_errors import on_uncaught_error
from medaug.io.atomic import write_json_atomic
from medaug.pipelines.distributed import on_rank0_and_share, rank0_first_context
from medaug.pipelines.tracking.tags import (
    CLASSIC_ML_KIND,
    DATA_LEAK_TAG,
    ERROR_TAG,
    EXPERIMENT_KIND_TAG,
    PARENT_RUN_ENV,
    PARENT_TAG,
    RUN_DIR_TAG,
    RUN_TAGS_ENV,
)

logger = logging.getLogger("medaug.tracking")
MAX_PARAM_VALUE = 6000  # MLflow's limit on a parameter value
MAX_TAG_VALUE = 5000  # MLflow's limit on a tag value
# The workflow's code (MONAI's default ids), not settings: never parameters.
WORKFLOW_SECTIONS = ("imports", "initialize", "run", "finalize")
DATASET_DIGEST_LENGTH = 16  # of the content hash; MLflow stores at most 36 characters
_LEFT_OUT = object()  # resolved_config's mark for a value that is not logged
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


def ensure_experiment(client, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created when missing (artifacts beside a SQLite store),
    tagged as classic model development unless it already has a type (someone's choice kept)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        tags = {EXPERIMENT_KIND_TAG: CLASSIC_ML_KIND}
        try:
            return client.create_experiment(name, artifact_location_for(tracking_uri), tags=tags)
        except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel run
            experiment = client.get_experiment_by_name(name)
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # created before medaug set it, or by MONAI
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, CLASSIC_ML_KIND)
    return experiment.experiment_id


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


def _loggable(value):
    """``value`` if it is a plain value (text, number, bool, None, a list of them); a device or
    dtype as its name; anything else (a network, a dataset, a transform) ``_LEFT_OUT``."""
    if isinstance(value, (torch.device, torch.dtype)):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):  # a numpy scalar from an expression
        return value.item()
    if isinstance(value, (list, tuple)):
        items = [_loggable(v) for v in value]
        return _LEFT_OUT if any(v is _LEFT_OUT for v in items) else items
    return value if value is None or isinstance(value, (str, int, float, bool)) else _LEFT_OUT


def resolved_config(parser) -> dict:
    """The bundle config as MLflow parameters should show it: the values it set or resolved to.

    Literal values stay as written (command-line overrides included); an expression (``$...``)
    becomes the plain value it has evaluated to so far, and is left out while not evaluated yet or
    when it evaluated to an object; a reference (``@id``) is left out, since its value is logged
    under ``id`` itself; so are the workflow's code sections (``imports``, ``initialize``, ``run``,
    ``finalize``). Lists that hold sections keep their indices (``train.handlers.2.print_lr``).
    Nothing is evaluated here.
    """
    resolved = parser.ref_resolver.resolved_content

    def walk(node, ids):
        if isinstance(node, dict):
            items = {k: walk(v, ids + [str(k)]) for k, v in node.items()}
            return {k: v for k, v in items.items() if v is not _LEFT_OUT}
        if isinstance(node, list):
            items = [walk(v, ids + [str(i)]) for i, v in enumerate(node)]
            if any(isinstance(v, (dict, list)) for v in node):  # sections: named by index, as flatten does
                return {str(i): v for i, v in enumerate(items) if v is not _LEFT_OUT}
            return _LEFT_OUT if any(v is _LEFT_OUT for v in items) else items
        if isinstance(node, str) and node.startswith(ID_REF_KEY):
            return _LEFT_OUT
        if isinstance(node, str) and node.startswith(EXPR_KEY):
            key = ID_SEP_KEY.join(ids)
            return _loggable(resolved[key]) if key in resolved else _LEFT_OUT
        return node

    config = parser.get()
    return walk({k: v for k, v in config.items() if k not in WORKFLOW_SECTIONS}, [])


def monai_tracking_added(parser) -> bool:
    """Whether ``monai.bundle run --tracking`` patched MONAI's own MLflow handlers into this config
    (the patch always sets the top-level ``save_execute_config``, which no medaug config has)."""
    return parser is not None and "save_execute_config" in parser


def dataset_input(fingerprint: Mapping, context: str = "training") -> DatasetInput:
    """The run's data as an MLflow dataset input (the UI's Dataset column): named after the
    dataset folder or file, its source that path, its digest the start of medaug's content hash
    (pixels, labels and split assignment; the whole hash is the ``data.content_hash`` parameter),
    and the images per split and class, skipped files and cross-split duplicates as its profile.

    Built from MLflow's metadata-only dataset, since the images themselves are not a table MLflow
    could read; its ``to_dict`` has no profile, which is added to the entity here.
    """
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    source_path = str(fingerprint["source"])
    with warnings.catch_warnings():  # MLflow registers its local source twice and says so
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        source = resolve_dataset_source(source_path)
    counts = fingerprint.get("counts", {})
    profile = {
        "num_images": sum(sum(per_class.values()) for per_class in counts.values()),
        "split_sizes": {split: sum(per_class.values()) for split, per_class in counts.items()},
        "counts": counts,
        "classes": list(fingerprint.get("classes", [])),
        "format": fingerprint.get("format"),
        "skipped_files": fingerprint.get("skipped", 0),
        "cross_split_duplicates": fingerprint.get("cross_split_duplicates", 0),
    }
    name = Path(source_path).name or source_path
    meta = MetaDataset(source, name=name, digest=str(fingerprint["content_hash"])[:DATASET_DIGEST_LENGTH])
    dataset = Dataset(**meta.to_dict(), profile=json.dumps(profile))
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])


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
        log_model: also log the trained network as an MLflow model with its signature
            (:meth:`log_trained_model`). Off by default: it stores a second, pickled copy of the
            weights in every run (the checkpoint is logged already) and takes seconds per run.
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
        log_model: bool = False,
    ) -> None:
        self.experiment_name = experiment_name
        self.output_dir = Path(output_dir)
        self.run_dir = Path(run_dir) if run_dir else self.output_dir / run_name
        self.run_name = run_name
        self.tags = {k: str(v) for k, v in (tags or {}).items()} | environment_tags()
        if parent_run_id:
            self.tags[PARENT_TAG] = str(parent_run_id)
        self.params = dict(params or {})
        self.log_model = bool(log_model)
        self.tracking_uri = default_tracking_uri(output_dir)
        # The first client of a new SQLite store creates its tables; under DDP every rank builds a
        # tracker (and MONAI's MLflow handlers), and two creating the tables at once collide.
        with rank0_first_context():
            self.client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        self.run_id: str | None = None
        self.logged_params: set[str] = set()
        self.logs_bundle_config = True  # False for a stage's own run (stage_run): not the bundle's settings

    def _experiment_id(self) -> str:
        return ensure_experiment(self.client, self.experiment_name, self.tracking_uri)

    def _names_this_run(self, value: str) -> bool:
        """The run's name or a path in its folder: differs in every run, so not a parameter."""
        run_dir = str(self.run_dir.resolve())
        return value == self.run_name or value == run_dir or value.startswith(run_dir + os.sep)

    def config_params(self, parser) -> dict[str, str]:
        """The bundle's settings as parameters (:func:`resolved_config`, flattened), less the run's
        own name and folder (the run name and the ``medaug.run_dir`` tag hold them)."""
        config = resolved_config(parser)
        # Bundle metadata is a file of its own; only its version matters for comparing runs.
        meta = config.pop("_meta_", {})
        params = {k: v for k, v in flatten(config).items() if not self._names_this_run(v)}
        params["bundle_version"] = str(meta.get("version", "unknown"))
        return params

    def start(self, study_data=None) -> str:
        """Open the run; log the bundle config, extra params, the data (fingerprint parameters and
        a dataset input) and its reports."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tags = {"mlflow.runName": self.run_name, RUN_DIR_TAG: str(self.run_dir.resolve()), **self.tags}
        run = self.client.create_run(self._experiment_id(), run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id
        _OPEN_TRACKERS.add(self)
        parser = current_bundle_parser()
        params = self.config_params(parser) if parser is not None else {"bundle_version": "unknown"}
        if parser is not None:
            self.log_artifact(write_json_atomic(self.run_dir / "config.json", parser.get()))
        params.update(flatten(self.params))
        if study_data is not None:
            fingerprint = study_data.fingerprint()
            params.update(flatten(fingerprint, "data"))
            context = {"train": "training", "evaluate": "evaluation"}.get(self.tags.get("stage", "train"), "training")
            self.client.log_inputs(self.run_id, datasets=[dataset_input(fingerprint, context)])
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
        if monai_tracking_added(parser):
            logger.warning(
                "`--tracking mlflow` added MONAI's own MLflow handlers: they log a second, partial copy of this "
                "training (experiment %r, store %s). medaug's run above has the config, data, test metrics and "
                "artifacts; leave out --tracking, medaug tracks every run.",
                parser.get("experiment_name"),
                os.environ.get("MLFLOW_TRACKING_URI") or "mlruns.db in output_dir",
            )
        return self.run_id

    def stage_run(self, run_name: str, run_dir: str | os.PathLike, tags: Mapping) -> RunTracker:
        """Open and return a run of its own for a stage whose result outlives this run (a cached
        pretraining that later runs reuse), in this run's experiment and store; end it with :meth:`end`.

        It nests under this run's parent (a study's), but takes none of the launcher's other tags
        (``MEDAUG_RUN_TAGS``): with a study child's config hash it would count as that child, done.
        The bundle's settings are not logged to it.
        """
        run = RunTracker(self.experiment_name, self.output_dir, run_name, run_dir)
        run.tags = {k: str(v) for k, v in tags.items()}
        if PARENT_TAG in self.tags:
            run.tags[PARENT_TAG] = self.tags[PARENT_TAG]
        run.tracking_uri, run.client, run.logs_bundle_config = self.tracking_uri, self.client, False
        all_tags = {"mlflow.runName": run_name, RUN_DIR_TAG: str(run.run_dir.resolve()), **run.tags}
        run.run_id = self.client.create_run(self._experiment_id(), run_name=run_name, tags=all_tags).info.run_id
        _OPEN_TRACKERS.add(run)
        return run

    def log_params(self, params: Mapping[str, str]) -> None:
        items = [Param(safe_key(k), str(v)[:MAX_PARAM_VALUE]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=items[i : i + 100])
        self.logged_params.update(p.key for p in items)

    def log_config_resolved_since_start(self) -> None:
        """Add the settings whose expressions were evaluated after :meth:`start` (``num_classes``,
        ``positive_index``, ``device``, ...); those logged already stay (MLflow parameters are
        written once)."""
        parser = current_bundle_parser()
        if parser is None or self.run_id is None or not self.logs_bundle_config:
            return
        params = {k: v for k, v in self.config_params(parser).items() if safe_key(k) not in self.logged_params}
        if params:
            self.log_params(params)

    def log_trained_model(self, network: torch.nn.Module, input_shape: Sequence[int]) -> str | None:
        """With ``log_model``: log ``network`` as an MLflow PyTorch model named ``model`` (the UI's
        Models column), its signature a float32 batch of ``input_shape`` (channels, height, width)
        in and one logit per class out. Returns the model's URI, or None when off.

        Saved with pickle, not MLflow's default ``pt2`` (``torch.export``): tracing needs an input
        example, which MLflow then validates by loading and running the model, and some networks do
        not export; pickle works for every classifier. Loading it back needs medaug importable (the
        network is pickled by reference to its classes), as inference does anyway. The requirements
        are given (torch, monai) rather than inferred, which would load the model again in a
        subprocess. A failure is a warning: the finished training and its metrics are kept.
        """
        if not self.log_model or self.run_id is None:
            return None
        import mlflow.pytorch
        import monai
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        network = getattr(network, "module", network)  # DDP's wrapper
        device = next(network.parameters()).device
        was_training = network.training
        network.eval()
        with torch.no_grad():
            out = network(torch.zeros((1, *input_shape), device=device))
        network.train(was_training)
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *input_shape))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *out.shape[1:]))]),
        )
        requirements = [f"torch=={torch.__version__.split('+')[0]}", f"monai=={monai.__version__}"]
        # Created here, in this run's experiment: left to itself, log_model would put the model in the
        # active experiment of MLflow's fluent API, which this client-driven run never sets.
        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        model = self.client.create_logged_model(experiment_id, name="model", source_run_id=self.run_id)
        previous_uri = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
        mlflow.set_tracking_uri(self.tracking_uri)  # MLflow's model logging talks to the global store
        try:
            info = mlflow.pytorch.log_model(
                network,
                name="model",
                signature=signature,
                pip_requirements=requirements,
                serialization_format="pickle",
                run_id=self.run_id,
                model_id=model.model_id,
            )
        except Exception as err:  # noqa: BLE001 - any failure of MLflow's saving: the run goes on
            logger.warning("the MLflow model was not logged (%s: %s); the checkpoint is", type(err).__name__, err)
            return None
        finally:
            mlflow.set_tracking_uri(previous_uri)
        return info.model_uri

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [
            Metric(safe_key(k), float(v), now, step)
            for k, v in metrics.items()
            if v is not None and not (isinstance(v, float) and math.isnan(v))
        ]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def log_metric_history(self, name: str, values: Sequence[tuple[int, float]]) -> None:
        """``(step, value)`` pairs of one metric in as few calls as MLflow allows (a loss per step)."""
        now = int(time.time() * 1000)
        items = [Metric(safe_key(name), float(v), now, int(step)) for step, v in values if not math.isnan(float(v))]
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
            try:
                self.log_config_resolved_since_start()
            except mlflow.exceptions.MlflowException as err:  # never keeps the run from ending
                logger.warning("could not log the settings resolved since the run started: %s", err)
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
