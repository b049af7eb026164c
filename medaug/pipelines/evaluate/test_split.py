"""Final evaluation on the real test split: metrics with bootstrap CIs, plots, predictions, MLflow.

The test split is scored once, with the checkpoint chosen on validation, by a MONAI
``SupervisedEvaluator`` from the bundle config; this module turns its predictions into what a study
reports: ``test_<metric>`` with ``_ci_low`` / ``_ci_high``, per-class values, ``metrics.json``,
``predictions.csv``, confusion-matrix, ROC and training-curve plots.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events

from medaug.io.atomic import write_csv_atomic, write_json_atomic
from medaug.io.leaks import describe_leaks
from medaug.pipelines.evaluate import metrics as M
from medaug.pipelines.evaluate import plots
from medaug.pipelines.evaluate import robustness as R
from medaug.settings import SettingsError, did_you_mean

logger = logging.getLogger("medaug.evaluate")


class PredictionCollector:
    """Ignite handler keeping every (reference, label, probabilities) an evaluator produces.

    MONAI's ``ClassificationSaver`` writes predictions to CSV but drops labels and keeps no arrays
    in memory, which the metrics and plots need.
    """

    def __init__(self) -> None:
        self.refs: list[str] = []
        self.frames: list = []
        self.labels: list[int] = []
        self.probs: list[np.ndarray] = []
        self.input_shape: tuple[int, ...] | None = None  # of one image, for the MLflow model's signature

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def reset(self) -> None:
        self.refs, self.frames, self.labels, self.probs = [], [], [], []
        self.input_shape = None

    def __call__(self, engine) -> None:
        for item in engine.state.output:
            image = item.get("image")
            meta = getattr(image, "meta", {}) or {}
            if self.input_shape is None and image is not None:
                self.input_shape = tuple(image.shape)
            self.refs.append(str(meta.get("filename_or_obj", "")))
            self.frames.append(meta.get("frame"))
            label = item.get("label")
            self.labels.append(int(torch.as_tensor(label).reshape(())) if label is not None else -1)
            self.probs.append(torch.as_tensor(item["pred"]).detach().float().cpu().reshape(-1).numpy())

    @property
    def y_true(self) -> np.ndarray:
        return np.asarray(self.labels, dtype=np.int64)

    @property
    def y_prob(self) -> np.ndarray:
        return np.stack(self.probs) if self.probs else np.zeros((0, 0), dtype=np.float32)


def resolve_positive_class(positive_class, class_names: Sequence[str]) -> int | None:
    """Index of the positive (disease) class of the binary metrics: a class name (exact spelling)
    or an index. None: with 2 classes the second (scikit-learn's convention); with more, None, the
    summary metrics being macro averages over all classes. Anything else is a
    :class:`~medaug.settings.SettingsError` listing the classes, a name differing only in case (or
    close) offered as "did you mean", never used in its place: scoring the wrong class as positive
    would be silent."""
    names = list(class_names)
    if positive_class is None:
        return (1 if len(names) > 1 else 0) if len(names) <= 2 else None
    if isinstance(positive_class, (int, np.integer)) and not isinstance(positive_class, bool):
        if 0 <= int(positive_class) < len(names):
            return int(positive_class)
        raise SettingsError(
            "positive_class", f"no class index of the {len(names)} classes {names}", value=int(positive_class)
        )
    if str(positive_class) in names:
        return names.index(str(positive_class))
    guess = did_you_mean(positive_class, names)
    macro = "; or null (macro metrics)" if len(names) > 2 else ""
    raise SettingsError(
        "positive_class",
        f"not a class of this data ({', '.join(names)})",
        f"did you mean {guess!r}?" if guess else f"set --positive_class to one of them{macro}",
        value=positive_class,
    )


def positive_class_label(positive_index: int | None, class_names: Sequence[str]) -> str:
    """How the console header names what the summary metrics score: the positive class of 2-class data,
    else the macro average (a positive class given for more classes only picks nothing there)."""
    if positive_index is None or len(class_names) > 2:
        return f"macro over {len(class_names)} classes"
    return f"positive class: {class_names[positive_index]}"


def leak_metrics(data_leaks: Mapping) -> dict[str, int]:
    """The MLflow metrics of a run's leaked test images (the study report reads them back)."""
    return {
        "data_leaked_test_images": int(data_leaks.get("leaked_test_images", 0)),
        "data_leaked_test_images_dropped": int(data_leaks.get("dropped_test_images", 0)),
    }


def test_metric_names(metrics: dict, cis: dict) -> dict[str, float]:
    """``{"test_auc": .., "test_auc_ci_low": .., "test_auc_ci_high": .., "test_f1_class_x": ..}``."""
    out = {}
    for name, value in metrics.items():
        if name == "n":
            continue
        out[f"test_{name}"] = value
        if name in cis:
            out[f"test_{name}_ci_low"], out[f"test_{name}_ci_high"] = cis[name]
    return out


class TestEvaluation:
    """Score the best checkpoint on the test split and close the MLflow run.

    Args:
        evaluator: a MONAI ``SupervisedEvaluator`` over the test data whose handlers load the checkpoint.
        class_names: names of the classes, in label order.
        output_dir: where metrics, predictions and plots are written (then logged to MLflow).
        tracker: the run's :class:`~medaug.pipelines.tracking.tracker.RunTracker` (None: no MLflow).
        positive_class: name or index of the positive class for binary metrics (see
            :func:`resolve_positive_class`; None with more than 2 classes: macro metrics).
        checkpoint: the checkpoint to log as an artifact.
        n_bootstrap: bootstrap resamples for the 95% CIs (>= 1000 for reports).
        seed: seeds the bootstrap.
        curves: metric names of the run to plot as training curves.
        data_leaks: the study data's ``leak_summary`` (:mod:`medaug.io.leaks`): written to
            ``metrics.json`` as ``data_leaks``, logged as ``data_leaked_test_images`` (found) and
            ``data_leaked_test_images_dropped`` (left out of scoring), and printed under the table.
        robustness: the bundle's ``evaluate#robustness`` settings (see
            :class:`~medaug.pipelines.evaluate.robustness.RobustnessEvaluation`): after the clean
            metrics, the same checkpoint and inferer score the test split under each corruption x
            severity; written to ``metrics.json`` (``robustness``), ``robustness.csv`` and
            ``robustness_curves.png`` and logged as ``robust_*`` metrics. None or disabled: skipped.
    """

    def __init__(
        self,
        evaluator,
        class_names: Sequence[str],
        output_dir: str | os.PathLike,
        tracker=None,
        positive_class=None,
        checkpoint: str | os.PathLike | None = None,
        n_bootstrap: int = 1000,
        seed: int = 0,
        curves: Sequence[str] = ("train_loss", "val_balanced_accuracy", "val_auc"),
        prefix: str = "test",
        data_leaks: Mapping | None = None,
        robustness: Mapping | R.RobustnessEvaluation | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.class_names = list(class_names)
        self.output_dir = Path(output_dir)
        self.tracker = tracker
        self.positive_class = resolve_positive_class(positive_class, self.class_names)
        self.checkpoint = checkpoint
        self.n_bootstrap = n_bootstrap
        self.seed = seed
        self.curves = tuple(curves)
        self.prefix = prefix
        self.data_leaks = dict(data_leaks) if data_leaks is not None else None
        self.robustness = R.RobustnessEvaluation.from_config(robustness)  # bad settings fail before training
        self.collector = PredictionCollector()
        self.collector.attach(evaluator)
        self.results: dict = {}

    def _write_predictions(self, y_prob: np.ndarray) -> Path:
        fields = ["image", "frame", "label", "predicted", *[f"prob_{n}" for n in self.class_names]]
        rows = []
        for ref, frame, label, prob in zip(self.collector.refs, self.collector.frames, self.collector.labels, y_prob):
            row = {
                "image": ref,
                "frame": "" if frame is None else frame,
                "label": self.class_names[label],
                "predicted": self.class_names[int(np.argmax(prob))],
            }
            row.update({f"prob_{n}": f"{p:.6f}" for n, p in zip(self.class_names, prob)})
            rows.append(row)
        return write_csv_atomic(self.output_dir / "predictions.csv", rows, fields)

    def run(self) -> dict:
        self.evaluator.run()
        y_true, y_prob = self.collector.y_true, self.collector.y_prob
        k = len(self.class_names)
        kw = {"num_classes": k, "positive_class": self.positive_class, "class_names": self.class_names}
        metrics = M.compute_metrics(y_true, y_prob, **kw)
        cis = M.bootstrap_ci(y_true, y_prob, n_resamples=self.n_bootstrap, seed=self.seed, **kw)
        logged = {name.replace("test_", f"{self.prefix}_", 1): v for name, v in test_metric_names(metrics, cis).items()}
        self.results = {
            "metrics": metrics,
            "ci95": {n: list(v) for n, v in cis.items()},
            "logged": logged,
            "positive_class": None if self.positive_class is None else self.class_names[self.positive_class],
            "n_bootstrap": self.n_bootstrap,
            "class_names": self.class_names,
        }
        if self.data_leaks is not None:
            self.results["data_leaks"] = self.data_leaks | {"summary": describe_leaks(self.data_leaks)}
        out = self.output_dir
        robust_artifacts, robust_logged = [], {}
        if self.robustness is not None:
            robust = self.robustness.score(
                self.evaluator.network,
                self.evaluator.inferer,
                self.evaluator.data_loader.dataset,
                clean=metrics,
                class_names=self.class_names,
                positive_class=self.positive_class,
                device=self.evaluator.state.device,
                amp=bool(getattr(self.evaluator, "amp", False)),
                n_bootstrap=self.n_bootstrap,
                seed=self.seed,
            )
            self.results["robustness"] = robust
            robust_logged = R.robustness_metrics(robust)
            robust_artifacts = [
                R.write_robustness_csv(robust, out / "robustness.csv"),
                R.plot_robustness_curves(robust, out / "robustness_curves.png"),
            ]
        artifacts = [
            write_json_atomic(out / "metrics.json", self.results),
            self._write_predictions(y_prob),
            plots.plot_confusion_matrix(
                y_true,
                y_prob.argmax(1),
                self.class_names,
                out / "confusion_matrix.png",
                title=f"{self.prefix} confusion matrix",
            ),
            plots.plot_roc_curves(
                y_true,
                y_prob,
                self.class_names,
                out / "roc.png",
                positive_class=self.positive_class,
                title=f"{self.prefix} ROC",
            ),
            *robust_artifacts,
        ]
        if self.tracker is not None and self.tracker.run_id:
            history = self.tracker.metric_history(*self.curves)
            if any(history.values()):
                artifacts.append(plots.plot_training_curves(history, out / "training_curves.png"))
            self.tracker.log_metrics(logged)
            if robust_logged:
                self.tracker.log_metrics(robust_logged)
                summary = self.results["robustness"]["summary"]
                self.tracker.set_tags(
                    {"robust_suite": self.robustness.suite_name, "robust_worst_corruption": summary["worst_corruption"]}
                )
            if self.data_leaks is not None:
                self.tracker.log_metrics(leak_metrics(self.data_leaks))
            if self.checkpoint and Path(self.checkpoint).is_file():
                self.tracker.log_artifact(self.checkpoint, "checkpoint")
            if self.collector.input_shape is not None:  # the best checkpoint's weights: loaded for the test
                self.tracker.log_trained_model(self.evaluator.network, self.collector.input_shape)
            for path in artifacts:
                self.tracker.log_artifact(path)
            self.tracker.end("FINISHED")
        table = M.format_metrics_table(metrics, cis)
        print(
            f"\n{self.prefix} metrics on {len(y_true)} real {self.prefix} images "
            f"({positive_class_label(self.positive_class, self.class_names)}; 95% stratified bootstrap CIs, "
            f"{self.n_bootstrap} resamples):\n{table}\n"
            + (f"{describe_leaks(self.data_leaks)}\n" if self.data_leaks is not None else "")
            + (f"{R.describe(self.results['robustness'])}\n" if "robustness" in self.results else "")
            + f"Outputs: {out}"
        )
        return self.results
