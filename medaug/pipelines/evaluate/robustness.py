"""Robustness under acquisition shift: the test split scored through every corruption x severity.

The clean test evaluation (:mod:`.test_split`) measures a model on the scans it was split from; a
deployed model meets lower doses, other probes, blurrier and compressed images. This module scores
the same checkpoint, with the same test-time inferer (TTA included), on the test split passed
through the graded corruptions of the bundle's modality suite (:mod:`medaug.transforms.corruptions`),
and summarises what a user choosing an augmentation chain compares:

- per cell (corruption x severity): balanced accuracy, AUC and sensitivity (``robust_<metric>_<corruption>_s<k>``);
- per corruption: the mean over severities (``robust_<metric>_<corruption>_mean``);
- overall: the mean over every cell (``robust_mean_<metric>``, for balanced accuracy with a 95%
  stratified bootstrap CI over test images, the same resamples for every cell), the relative drop
  from clean (``robust_relative_drop_<metric>`` = (clean - mean) / clean) and the worst corruption
  (``robust_worst_<metric>``; its name in ``metrics.json`` and the run's ``robust_worst_corruption`` tag).

Only the test split is ever corrupted, in memory: the images on disk and the clean metrics are
untouched, and the train/val pipelines never see a corruption. The images are the preprocessed test
images of the evaluator's dataset (cached once); each cell is one pass of the network over them in
batches, a plain loop rather than one ignite engine per cell (there are ~50 cells and nothing to
attach to them).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from monai.networks import eval_mode

from medaug.io.atomic import write_csv_atomic
from medaug.pipelines.evaluate import metrics as M
from medaug.pipelines.evaluate.plots import new_figure, save_figure
from medaug.settings import SettingsError, did_you_mean
from medaug.transforms.base import plain
from medaug.transforms.corruptions import SEVERITIES, Corrupt, image_seed, reference_of, suite_for

logger = logging.getLogger("medaug.evaluate")

SETTINGS = ("enabled", "suite", "corruptions", "severities", "seed", "metrics", "batch_size", "progress")
ROBUST_METRICS = ("balanced_accuracy", "auc", "sensitivity")


def robust_key(metric: str, corruption: str, severity: int) -> str:
    """The MLflow name of one cell, e.g. ``robust_balanced_accuracy_jpeg_s3``."""
    return f"robust_{metric}_{corruption}_s{severity}"


class RobustnessEvaluation:
    """Settings of ``evaluate#robustness`` and the scoring they describe.

    Args:
        enabled: score the corruptions at all (smoke overlays switch it off).
        suite: a modality preset name or YAML whose ``corruptions`` list is the suite (``generic``,
            ``none`` and presets without one: the acquisition-pipeline corruptions).
        corruptions: names to score instead of the suite's (None: the whole suite).
        severities: which of 1..5 to score.
        seed: the suite's seed; with the image's own reference it fixes each image's corruption.
        metrics: metrics scored per cell (of ``balanced_accuracy``, ``auc``, ``sensitivity``, or any
            of :func:`medaug.pipelines.evaluate.compute_metrics`).
        batch_size: images per network call.
        progress: show a progress bar over the cells.
    """

    def __init__(
        self,
        enabled: bool = True,
        suite: str = "generic",
        corruptions: Sequence[str] | None = None,
        severities: Sequence[int] = SEVERITIES,
        seed: int = 0,
        metrics: Sequence[str] = ROBUST_METRICS,
        batch_size: int = 64,
        progress: bool = True,
    ) -> None:
        self.enabled = bool(enabled)
        self.suite_name = str(suite)
        try:
            self.suite = suite_for(self.suite_name, corruptions)
        except ValueError as err:
            key = "corruptions" if corruptions is not None else "suite"
            raise SettingsError(f"evaluate#robustness#{key}", str(err)) from err
        severities = [int(s) for s in ([severities] if isinstance(severities, int) else severities)]
        if not severities or any(not 1 <= s <= len(SEVERITIES) for s in severities):
            raise SettingsError(
                "evaluate#robustness#severities", f"give severities within 1..{len(SEVERITIES)}", value=severities
            )
        self.severities = sorted(set(severities))
        self.seed = int(seed)
        unknown = [m for m in metrics if m not in M.METRIC_NAMES]
        if unknown:
            raise SettingsError(
                "evaluate#robustness#metrics", f"unknown metric(s) {unknown}; known: {list(M.METRIC_NAMES)}"
            )
        self.metrics = list(dict.fromkeys(["balanced_accuracy", *metrics]))
        self.batch_size = int(batch_size)
        self.progress = bool(progress)

    @classmethod
    def from_config(cls, config) -> RobustnessEvaluation | None:
        """From the bundle's ``evaluate#robustness`` mapping (unknown keys are an error with a
        did-you-mean); None or ``enabled: false`` -> None."""
        if config is None or isinstance(config, cls):
            return config if config is None or config.enabled else None
        if not isinstance(config, Mapping):
            raise SettingsError("evaluate#robustness", "must be a mapping of settings", value=config)
        for key in config:
            if key not in SETTINGS:
                guess = did_you_mean(key, list(SETTINGS))
                raise SettingsError(
                    f"evaluate#robustness#{key}",
                    f"not a setting (settings: {', '.join(SETTINGS)})",
                    f"did you mean {guess!r}?" if guess else None,
                )
        settings = cls(**dict(config))
        return settings if settings.enabled else None

    # -- scoring -------------------------------------------------------------------------------

    @staticmethod
    def test_images(dataset) -> tuple[list[torch.Tensor], np.ndarray]:
        """The preprocessed test images (each a (C, H, W) MetaTensor) and labels of a dataset."""
        images, labels = [], []
        for i in range(len(dataset)):
            item = dataset[i]
            images.append(item["image"])
            labels.append(int(torch.as_tensor(item["label"]).reshape(())))
        return images, np.asarray(labels, dtype=np.int64)

    def corrupted(self, images: Sequence[torch.Tensor], corruption: str, severity: int) -> torch.Tensor:
        """The batch of ``images`` under one corruption: each image seeded by its own reference."""
        transform = Corrupt(corruption, severity)
        out = []
        for image in images:
            transform.set_random_state(image_seed(reference_of(image), corruption, self.seed))
            out.append(transform(plain(image)))  # no meta: MetaTensor bookkeeping would cost more than the corruption
        return torch.stack(out)

    def _probabilities(self, network, inferer, batch: torch.Tensor, device, amp: bool) -> np.ndarray:
        probs = []
        with eval_mode(network), torch.no_grad():
            for start in range(0, len(batch), self.batch_size):
                inputs = batch[start : start + self.batch_size].to(device)
                with torch.autocast(device_type=torch.device(device).type, enabled=amp):
                    logits = inferer(inputs, network)
                probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(probs)

    def score(
        self,
        network,
        inferer,
        dataset,
        *,
        clean: Mapping[str, float],
        class_names: Sequence[str],
        positive_class: int | None,
        device="cpu",
        amp: bool = False,
        n_bootstrap: int = 1000,
        seed: int = 0,
    ) -> dict:
        """Score ``network`` on ``dataset`` (the test split) under every cell; ``clean`` holds the clean
        test metrics the relative drops are taken from."""
        from tqdm.auto import tqdm

        images, y_true = self.test_images(dataset)
        references = [reference_of(image) for image in images]
        kw = {"num_classes": len(class_names), "positive_class": positive_class, "class_names": list(class_names)}
        rng = np.random.default_rng(seed)
        idx = M.draw_indices(y_true, n_bootstrap, rng, stratified=True) if n_bootstrap > 0 else None
        cells, resampled_ba = [], []
        grid = [(c, s) for c in self.suite for s in self.severities]
        bar = tqdm(grid, desc="robustness", unit="cell", disable=not self.progress, leave=False)
        for corruption, severity in bar:
            bar.set_postfix_str(f"{corruption.name} s{severity}")
            y_prob = self._probabilities(
                network, inferer, self.corrupted(images, corruption.name, severity), device, amp
            )
            scores = M.compute_metrics(y_true, y_prob, **kw)
            cell = {
                "corruption": corruption.name,
                "severity": severity,
                "parameter": corruption.parameter,
                "value": corruption.levels[severity - 1],
            }
            cell.update({m: float(scores[m]) for m in self.metrics})
            cells.append(cell)
            if idx is not None:
                cm = M.confusion_matrices(y_true, y_prob.argmax(1), idx, len(class_names))
                resampled_ba.append(M.confusion_metrics(cm)["balanced_accuracy"])
        summary = self.summarise(cells, clean)
        if resampled_ba:
            mean_ba = np.nanmean(np.stack(resampled_ba), axis=0)
            low, high = np.nanpercentile(mean_ba, [2.5, 97.5])
            summary["mean_balanced_accuracy_ci95"] = [float(low), float(high)]
        return {
            "suite": self.suite_name,
            "seed": self.seed,
            "severities": self.severities,
            "corruptions": {
                c.name: {"family": c.family, "parameter": c.parameter, "levels": list(c.levels), "grows": c.grows}
                for c in self.suite
            },
            "n_images": int(len(y_true)),
            "images": references,  # what was corrupted: the test split's images, never train or val
            "cells": cells,
            "summary": summary,
        }

    def summarise(self, cells: Sequence[Mapping], clean: Mapping[str, float]) -> dict:
        """Mean over cells, relative drop from clean, per-corruption means and the worst corruption."""
        summary: dict = {"clean": {m: float(clean.get(m, np.nan)) for m in self.metrics}, "per_corruption": {}}
        names = list(dict.fromkeys(c["corruption"] for c in cells))
        for metric in self.metrics:
            values = np.array([c[metric] for c in cells], dtype=float)
            mean = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
            summary[f"mean_{metric}"] = mean
            base = summary["clean"][metric]
            summary[f"relative_drop_{metric}"] = (base - mean) / base if base and np.isfinite(base) else float("nan")
            per = {n: float(np.nanmean([c[metric] for c in cells if c["corruption"] == n])) for n in names}
            summary["per_corruption"][metric] = per
            if per:
                worst = min(per, key=lambda n: per[n] if np.isfinite(per[n]) else np.inf)
                summary[f"worst_{metric}"] = per[worst]
                summary[f"worst_corruption_{metric}"] = worst
        summary["worst_corruption"] = summary.get("worst_corruption_balanced_accuracy")
        return summary


def robustness_metrics(result: Mapping) -> dict[str, float]:
    """The MLflow metrics of a robustness result (see the module docstring for the names)."""
    out: dict[str, float] = {}
    summary = result["summary"]
    metrics = list(summary["clean"])
    for cell in result["cells"]:
        for metric in metrics:
            out[robust_key(metric, cell["corruption"], cell["severity"])] = cell[metric]
    for metric in metrics:
        out[f"robust_mean_{metric}"] = summary[f"mean_{metric}"]
        out[f"robust_relative_drop_{metric}"] = summary[f"relative_drop_{metric}"]
        if f"worst_{metric}" in summary:
            out[f"robust_worst_{metric}"] = summary[f"worst_{metric}"]
        for name, value in summary["per_corruption"][metric].items():
            out[f"robust_{metric}_{name}_mean"] = value
    if "mean_balanced_accuracy_ci95" in summary:
        out["robust_mean_balanced_accuracy_ci_low"], out["robust_mean_balanced_accuracy_ci_high"] = summary[
            "mean_balanced_accuracy_ci95"
        ]
    return {k: float(v) for k, v in out.items() if v is not None and np.isfinite(v)}


def write_robustness_csv(result: Mapping, path: str | os.PathLike) -> Path:
    """One row per cell (and the clean row, severity 0): corruption, severity, parameter, metrics."""
    metrics = list(result["summary"]["clean"])
    rows = [{"corruption": "clean", "severity": 0, "parameter": "", "value": "", **result["summary"]["clean"]}]
    rows += [dict(cell) for cell in result["cells"]]
    return write_csv_atomic(Path(path), rows, ["corruption", "severity", "parameter", "value", *metrics])


def plot_robustness_curves(result: Mapping, path: str | os.PathLike, metric: str = "balanced_accuracy") -> Path:
    """``metric`` vs severity, one line per corruption, the clean value at severity 0 and dashed."""
    clean = result["summary"]["clean"][metric]
    names = list(result["corruptions"])
    fig = new_figure(7.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    cmap = colormaps["tab10"]
    for i, name in enumerate(names):
        cells = sorted((c for c in result["cells"] if c["corruption"] == name), key=lambda c: c["severity"])
        xs = [0] + [c["severity"] for c in cells]
        ys = [clean] + [c[metric] for c in cells]
        style = "-" if result["corruptions"][name]["family"] == "physics" else "--"
        ax.plot(xs, ys, style, marker="o", markersize=3, label=name, color=cmap(i % 10))
    ax.axhline(clean, color="black", linewidth=0.8, linestyle=":", label=f"clean {clean:.3f}")
    mean = result["summary"][f"mean_{metric}"]
    ax.set_title(f"test {metric.replace('_', ' ')} under corruption ({result['suite']} suite; mean {mean:.3f})")
    ax.set_xlabel("severity (0 = clean); solid: physics, dashed: acquisition pipeline")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_xticks(range(0, max(result["severities"]) + 1))
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def describe(result: Mapping) -> str:
    """Console summary: balanced accuracy per corruption (mean over severities, then the worst
    severity), the mean over every cell with its CI, and the relative drop from clean."""
    summary = result["summary"]
    per = summary["per_corruption"]["balanced_accuracy"]
    worst_cell = {}
    for cell in result["cells"]:
        name = cell["corruption"]
        worst_cell[name] = min(worst_cell.get(name, np.inf), cell["balanced_accuracy"])
    lines = [
        f"robustness ({result['suite']} suite, severities {', '.join(map(str, result['severities']))}; "
        f"balanced accuracy, clean {summary['clean']['balanced_accuracy']:.3f}):"
    ]
    width = max(len(n) for n in per) if per else 10
    for name, value in per.items():
        lines.append(f"  {name:<{width}}  mean {value:.3f}  worst {worst_cell[name]:.3f}")
    ci = summary.get("mean_balanced_accuracy_ci95")
    ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    lines.append(
        f"  mean corruption balanced accuracy {summary['mean_balanced_accuracy']:.3f}{ci_text}, "
        f"relative drop {summary['relative_drop_balanced_accuracy']:.1%}, worst: {summary['worst_corruption']}"
    )
    return "\n".join(lines)
