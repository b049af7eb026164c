"""Quality and memorization of synthetic images: one call, one report.

:func:`assess_synthetic` compares synthetic images with the real train images they were made from:

* **fidelity**: FID (MONAI ``FIDMetric``) in the features of a domain network, overall and per class;
* **coverage**: k-NN precision (realism) and recall (variety covered), Kynkäänniemi et al. 2019;
* **diversity**: mean MS-SSIM between pairs of synthetic images of a class (MONAI
  ``MultiScaleSSIMMetric``), beside the same measure on the real images of that class;
* **memorization**: each synthetic image's nearest real train image in pixel space; those closer
  than a threshold set from real-to-real nearest-neighbour distances are near copies.

The :class:`QualityReport` holds the flat ``synthetic_*`` metrics (for MLflow), the near-copy ids
(for dropping them), one memorization row per synthetic image, and writes quality.json,
memorization.csv and a real-vs-synthetic grid per class. See the bundle's docs/README.md,
"Synthetic image quality", for what each number means.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from medaug.io.atomic import atomic_path, write_csv_atomic, write_json_atomic
from medaug.pipelines.oversample.batches import as_image_batch, resize_batch
from medaug.pipelines.oversample.feature_network import (
    FeatureNetwork,
    PenultimateFeatures,
    fit_feature_network,
    load_feature_network,
)
from medaug.pipelines.oversample.quality_metrics import (
    frechet_distance,
    knn_precision_recall,
    ms_ssim_diversity,
    ms_ssim_settings,
    near_copy_threshold_from_real,
    nearest_real,
)

__all__ = [
    "FeatureNetwork",
    "PenultimateFeatures",
    "QualityReport",
    "assess_synthetic",
    "fit_feature_network",
    "frechet_distance",
    "knn_precision_recall",
    "load_feature_network",
    "ms_ssim_diversity",
    "ms_ssim_settings",
    "near_copy_threshold_from_real",
    "nearest_real",
]

logger = logging.getLogger("medaug.synthetic_quality")

MEMORIZATION_FIELDS = (
    "synthetic_id",
    "nearest_real_id",
    "distance",
    "near_copy",
    "synthetic_class",
    "nearest_real_class",
)
GRID_COLUMNS = 8


def metric_key(name: str) -> str:
    """A class name as it appears in metric and file names (letters, digits, ``_ - .``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(name))


@dataclass
class _ClassGrid:
    """The images one class's grid shows (kept instead of the whole sets)."""

    real: torch.Tensor
    synthetic: torch.Tensor
    nearest: torch.Tensor
    distances: list[float]
    near_copy: list[bool]


@dataclass
class QualityReport:
    """Result of :func:`assess_synthetic`.

    Attributes:
        metrics: flat ``{name: float}``, every name starting with ``synthetic_``; NaN where a
            metric is undefined (e.g. FID of a class with one synthetic image).
        near_copy_ids: ids of synthetic images closer than ``near_copy_threshold`` to a real image.
        memorization: one row per synthetic image: synthetic_id, nearest_real_id, distance (RMSE in
            [0, 1] intensity units), near_copy, synthetic_class, nearest_real_class.
        near_copy_threshold: the RMSE threshold used, and ``settings`` how it and the rest were set.
    """

    metrics: dict[str, float]
    near_copy_ids: list[str]
    memorization: list[dict]
    near_copy_threshold: float
    class_names: list[str]
    settings: dict = field(default_factory=dict)
    grids: dict[str, _ClassGrid] = field(default_factory=dict, repr=False)

    def save(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write quality.json, memorization.csv and real_vs_synthetic_<class>.png per class
        (atomically) into ``out_dir``; returns the paths written."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = {
            "metrics": {k: (None if math.isnan(v) else v) for k, v in self.metrics.items()},  # valid JSON
            "near_copy_threshold": self.near_copy_threshold,
            "near_copy_ids": self.near_copy_ids,
            "class_names": self.class_names,
            "settings": self.settings,
        }
        paths = [
            write_json_atomic(out_dir / "quality.json", summary),
            write_csv_atomic(out_dir / "memorization.csv", self.memorization, MEMORIZATION_FIELDS),
        ]
        for name in self.class_names:
            grid = self.grids.get(name)
            if grid is not None:
                paths.append(
                    _plot_grid(
                        name, grid, self.near_copy_threshold, out_dir / f"real_vs_synthetic_{metric_key(name)}.png"
                    )
                )
        return paths


# --- the assessment ------------------------------------------------------------------------------


def _labels(labels, n: int, num_classes: int, name: str) -> np.ndarray:
    array = np.asarray(torch.as_tensor(labels).cpu()).reshape(-1).astype(np.int64)
    if len(array) != n:
        raise ValueError(f"{name} has {len(array)} entries for {n} images")
    if len(array) and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) for {num_classes} class_names, found {array.min()}..{array.max()}"
        )
    return array


def _ids(ids, n: int, name: str) -> list[str]:
    ids = [str(i) for i in ids]
    if len(ids) != n:
        raise ValueError(f"{name} has {len(ids)} entries for {n} images")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name} are not unique")
    return ids


def assess_synthetic(
    real_images,
    real_labels,
    real_ids: Sequence,
    synth_images,
    synth_labels,
    synth_ids: Sequence,
    class_names: Sequence[str],
    feature_network: FeatureNetwork | str | os.PathLike | None = None,
    near_copy_threshold: float | None = None,
    seed: int = 0,
    *,
    k: int = 3,
    near_copy_quantile: float = 0.05,
    ms_ssim_pairs: int = 100,
    grid_columns: int = GRID_COLUMNS,
    feature_epochs: int = 15,
    feature_cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> QualityReport:
    """Quality and memorization of synthetic images against the real train images.

    Args:
        real_images: (N, C, H, W) real TRAIN images in [0, 1] (what the generator was fitted on).
        real_labels, real_ids: their class indices and ids (the ids name nearest real images).
        synth_images: (M, C', H', W') synthetic images in [0, 1]; sizes and channels may differ from
            the real ones (they are matched for each comparison).
        synth_labels, synth_ids: their class indices and unique ids.
        class_names: name of each class index; per-class metrics and grid files use them.
        feature_network: where FID and precision/recall are measured: a :class:`FeatureNetwork`,
            a path for :func:`load_feature_network`, or None to train the default domain network
            on the real images (:func:`fit_feature_network`, seeded by ``seed``).
        near_copy_threshold: RMSE below which (inclusive) a synthetic image is a near copy of its
            nearest real image; None derives it from the real images
            (:func:`near_copy_threshold_from_real` at ``near_copy_quantile``).
        seed: seeds the default feature network, the MS-SSIM pairs and the grid samples.
        k: neighbourhood size of k-NN precision/recall.
        ms_ssim_pairs: random pairs per class for MS-SSIM diversity.
        grid_columns: images per row in the grids.
        feature_epochs, feature_cache_dir, device, progress: for the default feature network
            (``feature_cache_dir``: reuse it across runs on the same train images and seed).
    """
    class_names = [str(c) for c in class_names]
    num_classes = len(class_names)
    if num_classes == 0:
        raise ValueError("class_names is empty")
    if len({metric_key(c) for c in class_names}) != num_classes:
        raise ValueError(f"class_names must stay distinct as metric names: {class_names}")
    real = as_image_batch(real_images, "real_images", allow_empty=False)
    synth = as_image_batch(synth_images, "synth_images")
    real_y = _labels(real_labels, len(real), num_classes, "real_labels")
    synth_y = _labels(synth_labels, len(synth), num_classes, "synth_labels")
    real_ids = _ids(real_ids, len(real), "real_ids")
    synth_ids = _ids(synth_ids, len(synth), "synth_ids")

    if feature_network is None:
        feature_network = fit_feature_network(
            real,
            real_y,
            num_classes=num_classes,
            seed=seed,
            epochs=feature_epochs,
            device=device,
            progress=progress,
            cache_dir=feature_cache_dir,
        )
    elif not isinstance(feature_network, FeatureNetwork):
        feature_network = load_feature_network(feature_network, device=device)
    real_f, synth_f = feature_network.features(real), feature_network.features(synth)

    threshold_source = "given"
    if near_copy_threshold is None:
        near_copy_threshold = near_copy_threshold_from_real(real, near_copy_quantile)
        threshold_source = f"quantile {near_copy_quantile} of real-to-real nearest-neighbour RMSE"
    near_copy_threshold = float(near_copy_threshold)
    if len(synth):
        nearest, distances = nearest_real(synth, real)
    else:
        nearest, distances = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
    is_copy = distances <= near_copy_threshold

    memorization = [
        {
            "synthetic_id": sid,
            "nearest_real_id": real_ids[j],
            "distance": float(d),
            "near_copy": bool(c),
            "synthetic_class": class_names[sy],
            "nearest_real_class": class_names[real_y[j]],
        }
        for sid, j, d, c, sy in zip(synth_ids, nearest.tolist(), distances.tolist(), is_copy.tolist(), synth_y)
    ]
    near_copy_ids = [sid for sid, c in zip(synth_ids, is_copy.tolist()) if c]

    metrics = _set_metrics("", real_f, synth_f, k)
    metrics["synthetic_count"] = float(len(synth))
    metrics.update(_memorization_metrics("", distances, is_copy))
    metrics["synthetic_near_copy_threshold"] = near_copy_threshold
    rng = np.random.default_rng(seed)
    grids = {}
    for c, name in enumerate(class_names):
        suffix = f"_{metric_key(name)}"
        r, s = torch.from_numpy(real_y == c), torch.from_numpy(synth_y == c)
        metrics[f"synthetic_count{suffix}"] = float(s.sum())
        metrics.update(_set_metrics(suffix, real_f[r], synth_f[s], k))
        metrics[f"synthetic_ms_ssim{suffix}"] = ms_ssim_diversity(synth[s], ms_ssim_pairs, seed)
        metrics[f"synthetic_ms_ssim_real{suffix}"] = ms_ssim_diversity(real[r], ms_ssim_pairs, seed)
        metrics.update(_memorization_metrics(suffix, distances[s], is_copy[s]))
        grids[name] = _grid_sample(
            real[r], synth[s], real[nearest[s]], distances[s].tolist(), is_copy[s].tolist(), grid_columns, rng
        )
    # the overall values also measure how far the synthetic class mix (mostly minority, by design
    # of oversampling) is from the real one; the class means compare like with like
    for name in ("fid", "precision", "recall"):
        values = [metrics[f"synthetic_{name}_{metric_key(c)}"] for c in class_names]
        values = [v for v in values if not math.isnan(v)]
        metrics[f"synthetic_{name}_class_mean"] = float(np.mean(values)) if values else math.nan

    settings = {
        "feature_network": feature_network.name,
        "feature_image_size": list(feature_network.image_size),
        "feature_dim": int(real_f.shape[1]),
        "k": k,
        "near_copy_threshold_source": threshold_source,
        "ms_ssim_pairs": ms_ssim_pairs,
        "ms_ssim": {
            "synthetic": ms_ssim_settings(*synth.shape[-2:]) if len(synth) else None,
            "real": ms_ssim_settings(*real.shape[-2:]),
        },
        "nearest_real": "RMSE of intensities in [0, 1] at the smaller of the two image sizes",
        "seed": seed,
        "real_count": len(real),
    }
    logger.info(
        "synthetic quality: FID %.3g, precision %.3g, recall %.3g, %d near copies of %d",
        metrics["synthetic_fid"],
        metrics["synthetic_precision"],
        metrics["synthetic_recall"],
        len(near_copy_ids),
        len(synth),
    )
    return QualityReport(metrics, near_copy_ids, memorization, near_copy_threshold, class_names, settings, grids)


def _set_metrics(suffix: str, real_f: torch.Tensor, synth_f: torch.Tensor, k: int) -> dict[str, float]:
    """FID and k-NN precision/recall of one pair of feature sets (all images, or one class)."""
    precision, recall = knn_precision_recall(real_f, synth_f, k)
    return {
        f"synthetic_fid{suffix}": frechet_distance(real_f, synth_f),
        f"synthetic_precision{suffix}": precision,
        f"synthetic_recall{suffix}": recall,
    }


def _memorization_metrics(suffix: str, distances: torch.Tensor, is_copy: torch.Tensor) -> dict[str, float]:
    n = len(distances)
    return {
        f"synthetic_near_copies{suffix}": float(is_copy.sum()),
        f"synthetic_near_copy_fraction{suffix}": float(is_copy.double().mean()) if n else math.nan,
        f"synthetic_nearest_real_distance_min{suffix}": float(distances.min()) if n else math.nan,
        f"synthetic_nearest_real_distance_median{suffix}": float(distances.median()) if n else math.nan,
    }


# --- the real-vs-synthetic grid ------------------------------------------------------------------


def _grid_sample(real, synth, nearest, distances, near_copy, columns, rng) -> _ClassGrid:
    """Up to ``columns`` random real images and synthetic images of a class, near copies first
    (they are what a reader of the grid must see), each synthetic one with its nearest real image."""
    picked_real = rng.permutation(len(real))[:columns]
    order = rng.permutation(len(synth))
    order = sorted(order, key=lambda i: not near_copy[i])[:columns]
    return _ClassGrid(
        real=real[picked_real].clone(),
        synthetic=synth[order].clone(),
        nearest=nearest[order].clone(),
        distances=[distances[i] for i in order],
        near_copy=[near_copy[i] for i in order],
    )


def _tile(images: torch.Tensor, size: tuple[int, int], columns: int, pad: int) -> np.ndarray:
    """A row of images as one RGB array (white gaps), so a grid row is one ``imshow``, not one
    axes per image (matplotlib axes are slow to build)."""
    height, width = size
    row = np.ones((height, columns * (width + pad) - pad, 3), dtype=np.float32)
    if len(images):
        images = resize_batch(images, size, mode="antialias")
        if images.shape[1] != 3:  # grey-scale (other channel counts: the first channel)
            images = images[:, :1].expand(-1, 3, -1, -1)
        for col, image in enumerate(images.numpy()):
            row[:, col * (width + pad) : col * (width + pad) + width] = np.moveaxis(image, 0, -1)
    return row


def _plot_grid(name: str, grid: _ClassGrid, threshold: float, path: Path) -> Path:
    """Three rows: real images of the class, synthetic images, and the nearest real image of each
    synthetic one with its distance (near copies framed in red)."""
    columns = max(len(grid.real), len(grid.synthetic), 1)
    size = tuple(grid.real.shape[-2:]) if len(grid.real) else tuple(grid.synthetic.shape[-2:])
    pad = max(2, size[1] // 16)
    fig = Figure(figsize=(1.1 * columns + 1.0, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 1, squeeze=False)[:, 0]
    rows = (("real", grid.real), ("synthetic", grid.synthetic), ("nearest real", grid.nearest))
    for ax, (label, images) in zip(axes, rows):
        ax.imshow(_tile(images, size, columns, pad), vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label)
        for spine in ax.spines.values():
            spine.set_visible(False)
        if not len(images):
            ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
    step = size[1] + pad
    for col, (distance, copy) in enumerate(zip(grid.distances, grid.near_copy)):
        colour = "red" if copy else "black"
        axes[2].text(
            col * step + size[1] / 2,
            -1,
            f"{distance:.3f}" + (" copy" if copy else ""),
            ha="center",
            va="bottom",
            fontsize=7,
            color=colour,
        )
        if copy:
            for ax in axes[1:]:
                ax.add_patch(
                    Rectangle((col * step - 0.5, -0.5), size[1], size[0], fill=False, edgecolor="red", linewidth=2)
                )
    fig.suptitle(f"{name}: real vs synthetic (nearest-real RMSE; near copy if <= {threshold:.3f})", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    fig.clear()
    return path
