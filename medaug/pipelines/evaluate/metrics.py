"""Clinical classification metrics, bootstrap confidence intervals and a console table.

Everything here is a plain function over numpy arrays, in scikit-learn's style: no
hidden state, labels are integers ``0 .. K-1``, probabilities are an ``(N, K)`` array.
Binary and multi-class problems are handled by the same functions.

Conventions
-----------
* **Binary** (``K == 2``): ``positive_class`` is the index of the positive (disease)
  class. *Sensitivity* is the recall of that class, *specificity* the recall of the
  other one, *F1* and *AUC* are those of the positive class.
* **Multi-class** (``K > 2``): each class is scored one-vs-rest; ``average="macro"``
  is the unweighted mean over classes, ``average=None`` returns the per-class array.
* **Youden's J** = sensitivity + specificity - 1 (per class, then averaged).
* **Undefined values** are ``nan``, never an exception: e.g. sensitivity of a class with
  no true samples, AUC when only one class is present, Cohen's kappa when both raters
  use a single identical label. Macro averages skip undefined classes (``nanmean``),
  which is also what :func:`sklearn.metrics.balanced_accuracy_score` does.
  The one exception is MCC, which follows scikit-learn and is ``0.0`` when undefined
  (a constant prediction carries no correlation with the truth).

Two implementations
-------------------
The single-metric functions (:func:`accuracy`, :func:`sensitivity`, :func:`auc`, ...)
are thin wrappers around :mod:`sklearn.metrics`; use them for one-off numbers.

:func:`compute_metrics` and :func:`bootstrap_ci` instead go through a hand-vectorised
path that evaluates *all* metrics for *all* bootstrap resamples at once: one
``np.bincount`` builds the ``(R, K, K)`` confusion matrices of every resample, the
confusion-matrix metrics are closed-form array expressions over them, and AUC uses the
rank (Mann-Whitney U) formulation with ties counted as 1/2, evaluated on per-resample
sample multiplicities. This exists purely for speed: calling scikit-learn ~10 times per
resample costs seconds for 1000 resamples, whereas the vectorised path takes tens of
milliseconds (it runs after every training run and in the tests). The test-suite checks
that both paths agree to 1e-10 on un-resampled data, ties in the scores included.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    matthews_corrcoef,
    multilabel_confusion_matrix,
    recall_score,
    roc_auc_score,
)

__all__ = [
    "METRIC_NAMES",
    "PER_CLASS_METRICS",
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "f1",
    "mcc",
    "kappa",
    "youden",
    "auc",
    "compute_metrics",
    "bootstrap_ci",
    "format_metrics_table",
]

METRIC_NAMES = (
    "accuracy",
    "balanced_accuracy",
    "auc",
    "sensitivity",
    "specificity",
    "f1",
    "mcc",
    "kappa",
    "youden",
)
"""Summary metrics returned by :func:`compute_metrics`, in display order."""

PER_CLASS_METRICS = ("sensitivity", "specificity", "f1", "auc", "youden")
"""Metrics that are also reported per class as ``f"{metric}_class_{name}"``."""

_AVERAGES = ("binary", "macro", None)

# Upper bound on resamples x samples held in one float64 block by the vectorised path
# (about 32 MB per temporary); bootstrap resamples are processed in chunks of this size.
_CHUNK_ELEMENTS = 4_000_000


# --------------------------------------------------------------------------- inputs


def _as_labels(y, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        as_int = arr.astype(np.int64)
        if not np.array_equal(as_int, arr):
            raise ValueError(f"{name} must hold integer class indices")
        arr = as_int
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must hold class indices >= 0")
    return arr


def _infer_num_classes(num_classes: int | None, *label_arrays: np.ndarray) -> int:
    if num_classes is None:
        top = max((int(a.max()) for a in label_arrays if a.size), default=-1)
        num_classes = max(2, top + 1)
    num_classes = int(num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    for a in label_arrays:
        if a.size and a.max() >= num_classes:
            raise ValueError(f"class index {int(a.max())} out of range for num_classes={num_classes}")
    return num_classes


def _pair(y_true, y_pred, num_classes=None) -> tuple[np.ndarray, np.ndarray, int]:
    yt = _as_labels(y_true, "y_true")
    yp = _as_labels(y_pred, "y_pred")
    if yt.shape != yp.shape:
        raise ValueError(f"y_true and y_pred differ in length: {yt.shape[0]} vs {yp.shape[0]}")
    return yt, yp, _infer_num_classes(num_classes, yt, yp)


def _as_probs(y_prob, n: int, num_classes: int | None) -> np.ndarray:
    """``(N, K)`` float array; a 1-D input is read as P(class 1) of a binary problem."""
    p = np.asarray(y_prob, dtype=np.float64)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2:
        raise ValueError(f"y_prob must be (N, K) class probabilities, got shape {p.shape}")
    if p.shape[0] != n:
        raise ValueError(f"y_prob has {p.shape[0]} rows but y_true has {n} samples")
    if num_classes is not None and p.shape[1] != int(num_classes):
        raise ValueError(f"y_prob has {p.shape[1]} columns but num_classes={num_classes}")
    if p.shape[1] < 2:
        raise ValueError("y_prob needs at least 2 class columns")
    if not np.all(np.isfinite(p)):
        raise ValueError("y_prob contains nan or inf")
    return p


def _check_positive(positive_class: int, num_classes: int) -> int:
    pc = int(positive_class)
    if not 0 <= pc < num_classes:
        raise ValueError(f"positive_class={positive_class} out of range for {num_classes} classes")
    return pc


def _class_names(class_names: Sequence | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(k) for k in range(num_classes)]
    names = [str(c) for c in class_names]
    if len(names) != num_classes:
        raise ValueError(f"got {len(names)} class_names for {num_classes} classes")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names}")
    return names


def _nanmean(a: np.ndarray, axis=None):
    """``np.nanmean`` that returns nan for all-nan slices without a RuntimeWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def _reduce(per_class: np.ndarray, average, positive_class: int):
    """Turn a per-class array into the requested ``average``."""
    if average not in _AVERAGES:
        raise ValueError(f"average must be one of {_AVERAGES}, got {average!r}")
    if average is None:
        return per_class
    if average == "macro":
        return float(_nanmean(per_class))
    if per_class.shape[0] != 2:
        raise ValueError(
            f"average='binary' needs 2 classes, got {per_class.shape[0]}; "
            "use average='macro' or average=None for multi-class problems"
        )
    return float(per_class[_check_positive(positive_class, 2)])


# ------------------------------------------------------- single metrics (sklearn wrappers)


def accuracy(y_true, y_pred) -> float:
    """Fraction of correct predictions (:func:`sklearn.metrics.accuracy_score`)."""
    yt, yp, _ = _pair(y_true, y_pred)
    if yt.size == 0:
        return math.nan
    return float(accuracy_score(yt, yp))


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean per-class recall over the classes present in ``y_true``
    (:func:`sklearn.metrics.balanced_accuracy_score`). Equals macro sensitivity."""
    yt, yp, _ = _pair(y_true, y_pred)
    if yt.size == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        return float(balanced_accuracy_score(yt, yp))


def sensitivity(y_true, y_pred, *, positive_class: int = 1, average="binary", num_classes=None):
    """Sensitivity (recall, true-positive rate) = TP / (TP + FN).

    ``average="binary"``: of ``positive_class`` (2 classes only); ``"macro"``: mean of the
    one-vs-rest recalls of all classes (= balanced accuracy); ``None``: per-class array.
    ``num_classes`` defaults to ``max(label) + 1``. A class without true samples is nan.
    """
    yt, yp, k = _pair(y_true, y_pred, num_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_class = recall_score(yt, yp, labels=np.arange(k), average=None, zero_division=np.nan)
    return _reduce(np.asarray(per_class, dtype=np.float64), average, positive_class)


def _specificity_per_class(yt: np.ndarray, yp: np.ndarray, k: int) -> np.ndarray:
    mcm = multilabel_confusion_matrix(yt, yp, labels=np.arange(k)).astype(np.float64)
    tn, fp = mcm[:, 0, 0], mcm[:, 0, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tn + fp > 0, tn / (tn + fp), np.nan)


def specificity(y_true, y_pred, *, positive_class: int = 1, average="binary", num_classes=None):
    """Specificity (true-negative rate) = TN / (TN + FP), one-vs-rest per class.

    In a binary problem the specificity of ``positive_class`` is the recall of the other
    class. Averaging as in :func:`sensitivity`. nan when a class has no negatives.
    """
    yt, yp, k = _pair(y_true, y_pred, num_classes)
    return _reduce(_specificity_per_class(yt, yp, k), average, positive_class)


def f1(y_true, y_pred, *, positive_class: int = 1, average="binary", num_classes=None):
    """F1 = 2 TP / (2 TP + FP + FN) (:func:`sklearn.metrics.f1_score`), one-vs-rest per class.

    Averaging as in :func:`sensitivity`; nan for a class absent from both arrays.
    """
    yt, yp, k = _pair(y_true, y_pred, num_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_class = f1_score(yt, yp, labels=np.arange(k), average=None, zero_division=np.nan)
    return _reduce(np.asarray(per_class, dtype=np.float64), average, positive_class)


def youden(y_true, y_pred, *, positive_class: int = 1, average="binary", num_classes=None):
    """Youden's J = sensitivity + specificity - 1, per class; ``"macro"`` averages the
    per-class J values. Ranges from -1 to 1; 0 is chance level."""
    yt, yp, k = _pair(y_true, y_pred, num_classes)
    sens = sensitivity(yt, yp, average=None, num_classes=k)
    spec = _specificity_per_class(yt, yp, k)
    return _reduce(sens + spec - 1.0, average, positive_class)


def mcc(y_true, y_pred) -> float:
    """Matthews correlation coefficient, multi-class generalisation
    (:func:`sklearn.metrics.matthews_corrcoef`); 0.0 when undefined, as in scikit-learn."""
    yt, yp, _ = _pair(y_true, y_pred)
    if yt.size == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "A single label was found ..."
        return float(matthews_corrcoef(yt, yp))


def kappa(y_true, y_pred) -> float:
    """Cohen's kappa (:func:`sklearn.metrics.cohen_kappa_score`); nan when undefined."""
    yt, yp, _ = _pair(y_true, y_pred)
    if yt.size == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(cohen_kappa_score(yt, yp, replace_undefined_by=np.nan))


def auc(y_true, y_prob, *, positive_class: int = 1, average="binary"):
    """Area under the ROC curve from class probabilities ``y_prob`` of shape ``(N, K)``.

    Each class is scored one-vs-rest with its own probability column
    (:func:`sklearn.metrics.roc_auc_score`). ``"binary"``: AUC of ``positive_class``;
    ``"macro"``: mean over classes (scikit-learn's ``multi_class="ovr"``); ``None``:
    per-class array. A class that is absent (or is the only class) in ``y_true`` is nan.
    A 1-D ``y_prob`` is read as P(class 1) of a binary problem.
    """
    yt = _as_labels(y_true, "y_true")
    p = _as_probs(y_prob, yt.shape[0], None)
    k = _infer_num_classes(p.shape[1], yt)
    per_class = np.full(k, np.nan)
    for c in range(k):
        is_c = yt == c
        if 0 < is_c.sum() < yt.size:
            per_class[c] = roc_auc_score(is_c, p[:, c])
    return _reduce(per_class, average, positive_class)


# ------------------------------------------------------------ vectorised (R resamples)


def confusion_matrices(yt: np.ndarray, yp: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """``(R, K, K)`` confusion matrices (rows: truth, columns: prediction), one per row
    of the resample index array ``idx`` of shape ``(R, M)``."""
    r = idx.shape[0]
    cell = (yt * k + yp)[idx]  # (R, M) cell of each drawn sample
    cell += (np.arange(r, dtype=cell.dtype) * (k * k))[:, None]
    return np.bincount(cell.ravel(), minlength=r * k * k).reshape(r, k, k).astype(np.float64)


def confusion_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """All confusion-matrix metrics for a stack of confusion matrices ``(R, K, K)``.

    Per-class entries are ``(R, K)``, global ones ``(R,)``. Formulas are those of
    scikit-learn, written so that they agree with it to rounding error.
    """
    tp = np.diagonal(cm, axis1=1, axis2=2)  # (R, K)
    t = cm.sum(axis=2)  # true count per class
    p = cm.sum(axis=1)  # predicted count per class
    n = t.sum(axis=1)  # (R,)
    trace = tp.sum(axis=1)
    neg = n[:, None] - t  # true negatives + false positives
    tn = neg - (p - tp)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(t > 0, tp / t, np.nan)
        spec = np.where(neg > 0, tn / neg, np.nan)
        f1_ = np.where(t + p > 0, 2.0 * tp / (t + p), np.nan)
        acc = np.where(n > 0, trace / n, np.nan)

        # MCC (sklearn): (c*s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)); 0 when undefined.
        tdotp = np.einsum("rk,rk->r", t, p)
        cov_ytyp = trace * n - tdotp
        cov_prod = (n**2 - np.einsum("rk,rk->r", p, p)) * (n**2 - np.einsum("rk,rk->r", t, t))
        mcc_ = np.where(cov_prod > 0, cov_ytyp / np.sqrt(cov_prod), 0.0)
        mcc_ = np.where(n > 0, mcc_, np.nan)

        # Cohen's kappa (sklearn): 1 - observed / expected disagreement; nan when undefined.
        expected = np.where(n > 0, n - tdotp / n, 0.0)
        kappa_ = np.where(expected > 0, 1.0 - (n - trace) / expected, np.nan)

    return {
        "accuracy": acc,
        "balanced_accuracy": _nanmean(sens, axis=1),
        "mcc": mcc_,
        "kappa": kappa_,
        "sensitivity": sens,
        "specificity": spec,
        "f1": f1_,
        "youden": sens + spec - 1.0,
    }


def _resample_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """``(R, N)`` multiplicity of each original sample in each resample."""
    r = idx.shape[0]
    flat = idx + (np.arange(r, dtype=idx.dtype) * n)[:, None]
    return np.bincount(flat.ravel(), minlength=r * n).reshape(r, n).astype(np.float64)


def _auc_per_class(yt: np.ndarray, prob: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """One-vs-rest AUC of every class for every resample, ``(R, K)``.

    Mann-Whitney: AUC = P(score_pos > score_neg) + 1/2 P(score_pos == score_neg).
    Samples are sorted once per class and grouped by distinct score; with per-resample
    multiplicities ``counts`` (R, N), the weighted positive/negative count of every score
    group gives U = sum_g pos_g * (negatives below g + neg_g / 2), AUC = U / (n_pos n_neg).
    This equals the trapezoidal ROC area scikit-learn computes, ties included.
    """
    r, n = counts.shape
    k = prob.shape[1]
    out = np.full((r, k), np.nan)
    if n == 0:
        return out
    for c in range(k):
        order = np.argsort(prob[:, c], kind="stable")
        s = prob[order, c]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        is_pos = (yt[order] == c).astype(np.float64)
        w = counts[:, order]
        pos_g = np.add.reduceat(w * is_pos, starts, axis=1)  # (R, G)
        neg_g = np.add.reduceat(w * (1.0 - is_pos), starts, axis=1)
        n_pos = pos_g.sum(axis=1)
        n_neg = neg_g.sum(axis=1)
        below = np.cumsum(neg_g, axis=1) - neg_g
        u = np.einsum("rg,rg->r", pos_g, below + 0.5 * neg_g)
        denom = n_pos * n_neg
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, c] = np.where(denom > 0, u / denom, np.nan)
    return out


def _metrics_for_resamples(
    yt: np.ndarray, prob: np.ndarray, idx: np.ndarray | None, positive_class: int
) -> dict[str, np.ndarray]:
    """Summary metric name -> ``(R,)`` and per-class name -> ``(R, K)`` arrays.

    ``idx`` is the ``(R, M)`` array of resampled sample indices; ``None`` means the data
    as it is (R = 1).
    """
    n, k = prob.shape
    yp = prob.argmax(axis=1)
    if idx is None:
        idx = np.arange(n)[None, :]
        counts = np.ones((1, n))
    else:
        counts = _resample_counts(idx, n)
    per = confusion_metrics(confusion_matrices(yt, yp, idx, k))
    per["auc"] = _auc_per_class(yt, prob, counts)
    out: dict[str, np.ndarray] = {}
    for name in METRIC_NAMES:
        v = per[name]
        if v.ndim == 2:  # per-class -> binary value or macro mean
            out[name] = v[:, positive_class] if k == 2 else _nanmean(v, axis=1)
        else:
            out[name] = v
    for name in PER_CLASS_METRICS:
        out[f"{name}_per_class"] = per[name]
    return out


def _flatten(values: dict[str, np.ndarray], names: list[str], fn) -> dict:
    """Apply ``fn`` to each ``(R,)`` series and expand per-class arrays into named keys."""
    out = {name: fn(values[name]) for name in METRIC_NAMES}
    for metric in PER_CLASS_METRICS:
        arr = values[f"{metric}_per_class"]
        for c, cname in enumerate(names):
            out[f"{metric}_class_{cname}"] = fn(arr[:, c])
    return out


def _prepare(y_true, y_prob, num_classes, positive_class, class_names):
    yt = _as_labels(y_true, "y_true")
    prob = _as_probs(y_prob, yt.shape[0], num_classes)
    k = _infer_num_classes(prob.shape[1], yt)
    # with more than 2 classes the summary metrics are macro averages: no positive class (None) is needed
    pc = _check_positive(positive_class, k) if k == 2 else (0 if positive_class is None else int(positive_class))
    return yt, prob, k, pc, _class_names(class_names, k)


def compute_metrics(
    y_true,
    y_prob,
    *,
    num_classes: int | None = None,
    positive_class: int = 1,
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """All metrics of a classifier's probabilities in one flat dict.

    Parameters
    ----------
    y_true : (N,) int class indices in ``[0, K)``.
    y_prob : (N, K) class probabilities (a 1-D array is read as P(class 1), K = 2);
        the prediction is ``argmax`` over classes.
    num_classes : optional check on ``K`` (defaults to ``y_prob.shape[1]``).
    positive_class : index of the positive (disease) class; used when ``K == 2``.
    class_names : names for the per-class keys (default ``"0", "1", ...``).

    Returns
    -------
    dict with every name in :data:`METRIC_NAMES` (binary: sensitivity, specificity, f1,
    youden and auc of ``positive_class``; multi-class: macro averages), the per-class
    values ``f"{m}_class_{name}"`` for ``m`` in :data:`PER_CLASS_METRICS`, and ``"n"``,
    the sample count (int). Undefined values are ``nan``. Computed by the same vectorised
    code as :func:`bootstrap_ci`, so point estimates and intervals are consistent.
    """
    yt, prob, _, pc, names = _prepare(y_true, y_prob, num_classes, positive_class, class_names)
    values = _metrics_for_resamples(yt, prob, None, pc)
    out: dict = _flatten(values, names, lambda v: float(v[0]))
    out["n"] = int(yt.shape[0])
    return out


def draw_indices(yt: np.ndarray, n_resamples: int, rng: np.random.Generator, stratified: bool):
    """``(n_resamples, n)`` bootstrap index arrays; stratified keeps each class's count."""
    n = yt.shape[0]
    dtype = np.int32 if n < 2**31 else np.int64
    if not stratified:
        return rng.integers(0, n, size=(n_resamples, n), dtype=dtype)
    blocks = []
    for c in np.unique(yt):  # sorted -> deterministic for a given seed
        members = np.flatnonzero(yt == c).astype(dtype)
        blocks.append(members[rng.integers(0, members.size, size=(n_resamples, members.size))])
    return np.concatenate(blocks, axis=1)


def bootstrap_ci(
    y_true,
    y_prob,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
    stratified: bool = True,
    num_classes: int | None = None,
    positive_class: int = 1,
    class_names: Sequence[str] | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals for every metric of :func:`compute_metrics`.

    ``stratified=True`` resamples with replacement *within* each true class, so every
    resample keeps the original class counts (important for small, imbalanced test sets,
    where a plain bootstrap can drop the minority class entirely). Resampling uses
    ``np.random.default_rng(seed)``: the same seed gives identical intervals.

    Returns ``{key: (low, high)}`` with the same keys as :func:`compute_metrics` except
    ``"n"``. Resamples where a metric is undefined are ignored (``nanpercentile``); a
    metric undefined in every resample gets ``(nan, nan)``. All metrics for all resamples
    are computed at once by the vectorised path described in the module docstring.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    yt, prob, _, pc, names = _prepare(y_true, y_prob, num_classes, positive_class, class_names)
    n = yt.shape[0]
    if n == 0:
        raise ValueError("bootstrap_ci needs at least one sample")
    rng = np.random.default_rng(seed)
    idx = draw_indices(yt, int(n_resamples), rng, stratified)

    chunk = max(1, _CHUNK_ELEMENTS // n)
    parts = [_metrics_for_resamples(yt, prob, idx[i : i + chunk], pc) for i in range(0, idx.shape[0], chunk)]
    values = {key: np.concatenate([p[key] for p in parts], axis=0) for key in parts[0]}

    alpha = (1.0 - confidence) / 2.0
    q = [100.0 * alpha, 100.0 * (1.0 - alpha)]

    def interval(v: np.ndarray) -> tuple[float, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-nan slice
            lo, hi = np.nanpercentile(v, q)
        return (float(lo), float(hi))

    return _flatten(values, names, interval)


# --------------------------------------------------------------------------- display


def _fmt(value, digits: int) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    v = float(value)
    return "nan" if math.isnan(v) else f"{v:.{digits}f}"


def format_metrics_table(
    metrics: Mapping[str, float],
    cis: Mapping[str, tuple[float, float]] | None = None,
    *,
    names: Sequence[str] = METRIC_NAMES,
    digits: int = 3,
    markdown: bool = False,
    ci_label: str = "95% CI",
) -> str:
    """Render metrics (and optional confidence intervals) as a table for the console.

    One row per entry of ``names`` (``metric | value | 95% CI``); the CI column is left
    out when ``cis`` is None. Missing entries show ``n/a``, undefined ones ``nan``. If
    ``metrics`` has ``"n"`` a final ``n`` row gives the sample count. ``markdown=True``
    gives a GitHub-flavoured markdown table instead of aligned plain text. Pass
    ``names=list(metrics)`` to include the per-class entries.
    """
    header = ["metric", "value"] + ([ci_label] if cis is not None else [])
    rows = []
    for name in names:
        row = [name, _fmt(metrics.get(name), digits)]
        if cis is not None:
            ci = cis.get(name)
            row.append("n/a" if ci is None else f"[{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]")
        rows.append(row)
    if "n" in metrics and "n" not in names:
        rows.append(["n", _fmt(metrics["n"], digits)] + ([""] if cis is not None else []))

    if markdown:
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join([":---", "---:"] + [":---:"] * (len(header) - 2)) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)

    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:2], widths[1:2])]
        parts += [c.ljust(w) for c, w in zip(cells[2:], widths[2:])]
        return "  ".join(parts).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in rows)])
