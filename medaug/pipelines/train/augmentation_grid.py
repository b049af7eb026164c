"""Seeing what you apply: a grid of original and augmented samples, one row per transform.

Rows: the original, each transform of the preset on its own (``prob`` forced to 1, so every cell
shows its effect; members of a ``OneOf`` get a row each), and the whole chain as training runs it
(with its real probabilities). Columns: ``samples`` random draws for each image. Every cell uses
the original image's grey-level range, so brightness and contrast changes stay visible. Figures are
drawn headless and written atomically (see :mod:`medaug.pipelines.evaluate.plots`).

Its test-time sibling, :func:`plot_corruption_grid`, shows a robustness suite the same way: one row
per corruption, one column per severity (0 = clean), each cell the image as the evaluation would
score it (:class:`~medaug.transforms.corruptions.Corruptd`, seeded by the image's reference).
"""

from __future__ import annotations

import logging
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events
from monai.transforms import Compose

from medaug.io.atomic import atomic_path
from medaug.pipelines.evaluate.plots import new_figure, save_figure
from medaug.transforms.corruptions import SEVERITIES, Corruptd, Corruption
from medaug.transforms.presets import AugmentationPlan

logger = logging.getLogger("medaug.augmentation")
__all__ = [
    "AugmentationGridHandler",
    "augmentation_rows",
    "corruption_rows",
    "plot_augmentation_grid",
    "plot_corruption_grid",
]


def _display(image: torch.Tensor) -> np.ndarray:
    pixels = np.asarray(torch.as_tensor(image).detach().cpu().float())
    if pixels.ndim == 4:  # a volume: its middle slice along the last axis
        pixels = pixels[..., pixels.shape[-1] // 2]
    return np.moveaxis(pixels[:3], 0, -1) if pixels.shape[0] == 3 else pixels[0]


def augmentation_rows(
    plan: AugmentationPlan, images: Sequence[torch.Tensor], samples: int = 3, seed: int = 0, key: str = "image"
) -> list[tuple[str, list[list[np.ndarray]]]]:
    """``[(row label, [[sample per column] per image])]``: the original, each step alone, the full chain."""
    rows = [("original", [[_display(img)] for img in images])]
    steps = [*plan.steps(), (f"full chain ({plan.name})", Compose(plan.transforms()))]
    for r, (label, transform) in enumerate(steps):
        cells = []
        for i, img in enumerate(images):
            drawn = []
            for s in range(samples):
                transform.set_random_state(seed + 1000 * r + 100 * i + s)
                drawn.append(_display(transform({key: img.clone()})[key]))
            cells.append(drawn)
        rows.append((label, cells))
    return rows


def plot_augmentation_grid(
    plan: AugmentationPlan,
    images: Sequence[torch.Tensor],
    path: str | os.PathLike,
    samples: int = 3,
    seed: int = 0,
    titles: Sequence[str] | None = None,
) -> Path:
    """Draw the grid (see the module docstring) to ``path`` (PNG unless the suffix says otherwise)."""
    if not images:
        raise ValueError("plot_augmentation_grid: no images to show")
    rows = augmentation_rows(plan, images, samples, seed)
    n_cols = len(images) * samples
    cell = 1.3
    fig = new_figure(1.8 + cell * n_cols, 0.5 + cell * len(rows))
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    ranges = [(float(torch.as_tensor(img).min()), float(torch.as_tensor(img).max())) for img in images]
    for r, (label, cells) in enumerate(rows):
        for i, drawn in enumerate(cells):
            vmin, vmax = ranges[i]
            for s in range(samples):
                ax = axes[r][i * samples + s]
                ax.set_xticks([])
                ax.set_yticks([])
                if s < len(drawn):
                    ax.imshow(drawn[s], cmap="gray", vmin=vmin, vmax=max(vmax, vmin + 1e-6), interpolation="nearest")
                else:
                    ax.axis("off")
                if r == 0 and s == 0 and titles:
                    ax.set_title(str(titles[i]), fontsize=7)
        axes[r][0].set_ylabel(label.replace(": ", ":\n"), fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(
        f"augmentation preset {plan.name!r}: each transform alone (prob 1), then the chain as trained", fontsize=9
    )
    return save_figure(fig, path)


def corruption_rows(
    suite: Sequence[Corruption], image: torch.Tensor, severities: Sequence[int] = (0, *SEVERITIES), seed: int = 0
) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """``[(corruption, [(cell label, pixels) per severity])]``: ``image`` (C, H, W in [0, 1], a MetaTensor
    whose ``filename_or_obj`` names it, as a test image's does) through each corruption at each severity,
    labelled with the physical parameter (``Corruption.describe``)."""
    rows = []
    for corruption in suite:
        cells = []
        for severity in severities:
            corrupted = Corruptd("image", corruption.name, severity, seed=seed)({"image": image.clone()})["image"]
            cells.append((f"s{severity}: {corruption.describe(severity)}", _display(corrupted)))
        rows.append((corruption.name, cells))
    return rows


def plot_corruption_grid(
    suite: Sequence[Corruption],
    image: torch.Tensor,
    path: str | os.PathLike,
    severities: Sequence[int] = (0, *SEVERITIES),
    seed: int = 0,
    title: str = "",
) -> Path:
    """Draw :func:`corruption_rows` (rows: corruption, columns: severity) to ``path``; every cell on the
    display range [0, 1], so brightness, contrast and gamma shifts stay visible."""
    if not suite:
        raise ValueError("plot_corruption_grid: no corruptions to show")
    rows = corruption_rows(suite, image, severities, seed)
    cell = 1.5
    fig = new_figure(1.6 + cell * len(severities), 0.6 + (cell + 0.45) * len(rows))
    axes = fig.subplots(len(rows), len(severities), squeeze=False)
    for r, (name, cells) in enumerate(rows):
        for c, (label, pixels) in enumerate(cells):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(pixels, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(textwrap.fill(label, 26), fontsize=6)
        axes[r][0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(f"corruption suite{' of ' + title if title else ''}: rows corruption, columns severity", fontsize=9)
    return save_figure(fig, path)


def _pick(data: Sequence[Mapping], count: int) -> list[Mapping]:
    """Up to ``count`` entries, taking the classes in turn so the rare class is shown too."""
    by_label: dict = {}
    for entry in data:
        by_label.setdefault(entry.get("label"), []).append(entry)
    picked, queues = [], [list(v) for _, v in sorted(by_label.items(), key=lambda kv: str(kv[0]))]
    while len(picked) < count and any(queues):
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    return picked


class AugmentationGridHandler:
    """Ignite handler for a training engine: when training starts, draw the augmentation grid from
    the run's own training images and log it, with the preset as applied, to the MLflow run.

    Args:
        plan: the :class:`AugmentationPlan` the training chain was built from.
        data: the training datalist (entries with ``image`` and ``label``).
        preprocessing: the transforms that load an entry (the bundle's ``preprocessing``).
        output_dir: folder for ``augmentation_grid.png`` and ``augmentation.yaml``.
        tracker: the run's :class:`medaug.pipelines.tracking.tracker.RunTracker` (None: files only).
        num_images: training images shown (classes in turn); samples: draws per image.
        class_names: names of the labels, for the column titles.
    """

    rank0_only = True  # one grid per run folder: under DDP the other ranks drop it (rank0_handlers)

    def __init__(
        self,
        plan: AugmentationPlan,
        data: Sequence[Mapping],
        preprocessing: Sequence[Callable] | Callable,
        output_dir: str | os.PathLike,
        tracker=None,
        num_images: int = 4,
        samples: int = 2,
        seed: int = 0,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.plan = plan
        self.data = data
        self.preprocessing = preprocessing if isinstance(preprocessing, Compose) else Compose(list(preprocessing))
        self.output_dir = Path(output_dir)
        self.tracker = tracker
        self.num_images = num_images
        self.samples = samples
        self.seed = seed
        self.class_names = list(class_names) if class_names else None

    def _title(self, label) -> str:
        if self.class_names is not None and isinstance(label, int) and 0 <= label < len(self.class_names):
            return self.class_names[label]
        return f"label {label}"

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine=None) -> Path:
        entries = _pick(self.data, self.num_images)
        images = [self.preprocessing(dict(e))["image"] for e in entries]
        titles = [self._title(e.get("label")) for e in entries]
        grid = plot_augmentation_grid(
            self.plan,
            images,
            self.output_dir / "augmentation_grid.png",
            samples=self.samples,
            seed=self.seed,
            titles=titles,
        )
        preset = self.output_dir / "augmentation.yaml"
        with atomic_path(preset) as tmp:
            tmp.write_text(self.plan.to_yaml())
        if self.tracker is not None and getattr(self.tracker, "run_id", None):
            self.tracker.log_artifact(grid)
            self.tracker.log_artifact(preset)
            self.tracker.set_tags({"augment_preset": self.plan.name})
        logger.info("augmentation grid of preset %r: %s", self.plan.name, grid)
        return grid
