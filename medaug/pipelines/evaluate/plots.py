"""Evaluation figures: confusion matrix, ROC curves, training curves.

Headless by construction: figures are built with matplotlib's object-oriented API
(:class:`matplotlib.figure.Figure` on an Agg canvas), never through ``pyplot``. That
needs no display, does not switch the process-wide backend of whoever imports this
module (e.g. a notebook), leaves nothing in pyplot's figure registry, and is safe to
call from worker threads. Each figure is released as soon as it has been saved.

Files are written atomically: the figure is saved to a temporary file in the target
folder and moved into place with :func:`os.replace`, so a reader (MLflow artifact
logging, a browser) never sees a half-written image and a failed save leaves nothing
behind. The output format follows the file suffix (``.png`` when there is none).
Every function returns the :class:`~pathlib.Path` written.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix, roc_curve

from medaug.pipelines.evaluate.metrics import auc as _auc

__all__ = ["plot_confusion_matrix", "plot_roc_curves", "plot_training_curves"]

_DPI = 120


def new_figure(width: float, height: float) -> Figure:
    """A headless figure (Agg canvas, no pyplot state), constrained layout, at the plots' DPI."""
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path) -> Path:
    """Save ``fig`` to ``path`` via a temp file in the same folder + ``os.replace``."""
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lstrip(".").lower()
    # not tempfile.mkstemp: its 0600 mode would make the final image private to the
    # owner; os.open with 0666 applies the usual umask like any ordinary file write
    tmp = path.parent / f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format=fmt, bbox_inches="tight", pad_inches=0.1)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    finally:
        fig.clear()
    return path


def _labels(y, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr.astype(np.int64)


def plot_confusion_matrix(
    y_true,
    y_pred,
    class_names: Sequence[str],
    path,
    *,
    normalize: bool = True,
    title: str | None = None,
) -> Path:
    """Confusion matrix heat map (rows: true class, columns: predicted class).

    Every cell shows the count and, below it, the row-normalised percentage (the share
    of that true class predicted as the column class, so the diagonal is per-class
    sensitivity). ``normalize=True`` colours cells by that percentage, which keeps a
    rare class readable next to a common one; ``normalize=False`` colours by count.
    """
    yt, yp = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    names = [str(c) for c in class_names]
    k = len(names)
    if k < 1:
        raise ValueError("class_names must not be empty")
    cm = confusion_matrix(yt, yp, labels=np.arange(k))
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(rows > 0, cm / np.maximum(rows, 1), 0.0)
    shade = frac if normalize else cm.astype(np.float64)
    vmax = 1.0 if normalize else max(float(cm.max()), 1.0)

    size = 2.2 + 0.9 * k
    fig = new_figure(size + 1.0, size)
    ax = fig.add_subplot()
    im = ax.imshow(shade, cmap="Blues", vmin=0.0, vmax=vmax)
    cbar = fig.colorbar(im, ax=ax, shrink=0.8)
    cbar.set_label("fraction of true class" if normalize else "count")
    fontsize = max(6, 11 - k // 3)
    for i in range(k):
        for j in range(k):
            text = f"{cm[i, j]}\n{100.0 * frac[i, j]:.1f}%"
            color = "white" if shade[i, j] > 0.55 * vmax else "black"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=fontsize)
    ax.set_xticks(np.arange(k), labels=names, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(np.arange(k), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"Confusion matrix (n={int(cm.sum())})")
    return save_figure(fig, path)


def _fmt_auc(value: float) -> str:
    return "undefined" if math.isnan(value) else f"{value:.3f}"


def plot_roc_curves(
    y_true,
    y_prob,
    class_names: Sequence[str],
    path,
    *,
    positive_class: int = 1,
    title: str | None = None,
) -> Path:
    """ROC curve(s) with AUC in the legend and the chance diagonal.

    Binary (2 classes): one curve, for ``positive_class`` scored by its probability
    column. Multi-class: one one-vs-rest curve per class, plus the macro-average curve
    (per-class TPRs interpolated on a common FPR grid and averaged; its legend AUC is the
    macro one-vs-rest AUC of :func:`medaug.pipelines.evaluate.metrics.auc`). A class whose curve is
    undefined (absent from, or the only class in, ``y_true``) is listed as undefined.
    """
    yt = _labels(y_true, "y_true")
    prob = np.asarray(y_prob, dtype=np.float64)
    if prob.ndim == 1:
        prob = np.stack([1.0 - prob, prob], axis=1)
    if prob.ndim != 2 or prob.shape[0] != yt.shape[0]:
        raise ValueError(f"y_prob must be (N, K) with N={yt.shape[0]}, got {prob.shape}")
    names = [str(c) for c in class_names]
    k = prob.shape[1]
    if len(names) != k:
        raise ValueError(f"got {len(names)} class_names for {k} probability columns")
    if k == 2 and not 0 <= int(positive_class) < 2:
        raise ValueError(f"positive_class={positive_class} out of range for 2 classes")

    per_class_auc = _auc(yt, prob, average=None)
    classes = [int(positive_class)] if k == 2 else list(range(k))

    fig = new_figure(6.0, 5.5)
    ax = fig.add_subplot()
    grid = np.linspace(0.0, 1.0, 201)
    tprs = []
    for c in classes:
        is_c = yt == c
        label = f"{names[c]} (AUC = {_fmt_auc(per_class_auc[c])})"
        if k > 2:
            label = f"{names[c]} vs rest (AUC = {_fmt_auc(per_class_auc[c])})"
        if 0 < is_c.sum() < yt.size:
            fpr, tpr, _ = roc_curve(is_c, prob[:, c])
            ax.plot(fpr, tpr, lw=2 if k == 2 else 1.5, label=label)
            tprs.append(np.interp(grid, fpr, tpr))
        else:
            ax.plot([], [], lw=1.5, ls=":", label=label)
    if k > 2 and tprs:
        macro_tpr = np.mean(tprs, axis=0)
        macro_tpr[0] = 0.0
        macro_auc = _auc(yt, prob, average="macro")
        ax.plot(grid, macro_tpr, color="black", lw=2.5, ls="--", label=f"macro average (AUC = {_fmt_auc(macro_auc)})")
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls=":", label="chance")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title or ("ROC curve" if k == 2 else "ROC curves (one-vs-rest)"))
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _is_loss(name: str) -> bool:
    return "loss" in name.lower()


def plot_training_curves(
    history: Mapping[str, Sequence[tuple[int, float]]],
    path,
    *,
    title: str | None = None,
) -> Path:
    """Training history: losses on the left panel, all other metrics on the right.

    ``history`` maps a series name to ``(epoch, value)`` pairs, e.g.
    ``{"train_loss": [(1, 0.7), (2, 0.6)], "val_balanced_accuracy": [...], "val_auc": [...]}``.
    A series goes to the loss panel when its name contains ``"loss"``. Any number of
    series is accepted; empty series are skipped, non-finite values are not drawn, and
    a panel without data says so instead of failing.
    """
    fig = new_figure(11.0, 4.2)
    ax_loss, ax_metric = fig.subplots(1, 2)
    drawn = {id(ax_loss): 0, id(ax_metric): 0}
    for name, series in (history or {}).items():
        pts = [(float(e), float(v)) for e, v in (series or []) if v is not None]
        if not pts:
            continue
        x, y = np.asarray(pts, dtype=np.float64).T
        ax = ax_loss if _is_loss(str(name)) else ax_metric
        ax.plot(x, y, marker="o" if len(x) < 30 else None, ms=3, label=str(name))
        drawn[id(ax)] += 1
    for ax, ylabel in ((ax_loss, "loss"), (ax_metric, "metric")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if drawn[id(ax)]:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax_loss.set_title("loss")
    ax_metric.set_title("metrics")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
