"""Statistics of a study report: spread over seeds and paired tests against a baseline.

Two strategies of a study are compared on the same seeds and the same real test images, so every
test here is *paired*:

* :func:`mcnemar_test` -- McNemar's test on per-image correctness (statsmodels).
* :func:`delong_test` -- DeLong's test on the AUC (DeLong, DeLong & Clarke-Pearson 1988,
  *Biometrics* 44:837-845), with the midrank algorithm of Sun & Xu (2014, *IEEE Signal Processing
  Letters* 21:1389-1393).
* :func:`paired_bootstrap` -- the difference in balanced accuracy or Youden's J with a percentile
  interval and a bootstrap p-value, resampling the same test images for both strategies.
* :func:`paired_seed_test` -- a paired t-test over seeds, for run-level numbers that have no
  per-image predictions behind them in the report (the mean balanced accuracy under corruption).
* :func:`holm` -- Holm's step-down correction across comparisons (statsmodels).
* :func:`mean_sd_ci` -- mean, sample standard deviation and t-interval of a metric over seeds.

**Several seeds.** A comparison over S seeds has S runs of each strategy. When the runs share
their test images (fixed test split) the data form one *block* of S paired score vectors; when
each seed drew its own split they form S blocks of one. The statistic is always the mean over
seeds of (strategy - baseline); within a block the images are resampled together (bootstrap) or
all the block's AUCs get one joint covariance matrix (DeLong), and blocks are independent. The
inference is over test images for these trained models, not over the randomness of training: that
spread is what the mean ± sd and t-interval over seeds report.

DeLong is written here because no maintained package offers it with a joint covariance of many
correlated AUCs (MLstatkit's ``Delong_test`` compares two score vectors only; SciPy and
statsmodels have none). It is checked against pROC's ``roc.test`` on the aSAH data.
"""

from __future__ import annotations

import gc
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from medaug.pipelines.evaluate.metrics import confusion_matrices, confusion_metrics, draw_indices

__all__ = [
    "mean_sd_ci",
    "mcnemar_test",
    "delong_auc_covariance",
    "delong_test",
    "paired_bootstrap",
    "paired_seed_test",
    "holm",
    "Block",
    "BOOTSTRAP_METRICS",
]

Block = tuple  # (y_true (N,), a (S, N), b (S, N)): one set of test images, S seeds of each strategy


def mean_sd_ci(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean, sample sd (ddof=1) and Student-t confidence interval of the mean over seeds.

    nan values (a metric undefined in a run) are left out; fewer than two values give nan sd/CI.
    """
    v = np.asarray([x for x in values if x is not None and not math.isnan(float(x))], dtype=np.float64)
    n = int(v.size)
    if n == 0:
        return {"n": 0, "mean": math.nan, "sd": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    mean = float(v.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "sd": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    sd = float(v.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2.0, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half}


def mcnemar_test(correct_a, correct_b, exact: bool | None = None) -> dict:
    """McNemar's test that two classifiers err equally often on the same images.

    ``correct_a`` / ``correct_b``: booleans, one per (seed, image) pair, True where the prediction
    was right. Only the discordant pairs count: ``b`` (a right, b wrong) and ``c`` (a wrong, b
    right). ``exact=None`` uses the exact binomial test when ``b + c < 25`` and the chi-square test
    with continuity correction otherwise (statsmodels ``mcnemar``). Pooling the pairs of several
    seeds is the stratified (Mantel-Haenszel) McNemar test for matched pairs.
    """
    a = np.asarray(correct_a, dtype=bool).ravel()
    b = np.asarray(correct_b, dtype=bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"correct_a and correct_b differ in length: {a.size} vs {b.size}")
    both, only_a = int(np.sum(a & b)), int(np.sum(a & ~b))
    only_b, neither = int(np.sum(~a & b)), int(np.sum(~a & ~b))
    discordant = only_a + only_b
    if discordant == 0:
        return {"b": 0, "c": 0, "statistic": 0.0, "p": 1.0, "exact": True, "n": int(a.size)}
    use_exact = discordant < 25 if exact is None else bool(exact)
    result = mcnemar([[both, only_a], [only_b, neither]], exact=use_exact, correction=True)
    return {
        "b": only_a,
        "c": only_b,
        "statistic": float(result.statistic),
        "p": float(min(1.0, result.pvalue)),
        "exact": use_exact,
        "n": int(a.size),
    }


def delong_auc_covariance(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of M score vectors on the same images and DeLong's covariance matrix of them.

    ``y_true``: (N,) 1 for positive, 0 for negative; ``scores``: (M, N), higher = more positive.
    Structural components by midranks (Sun & Xu 2014): for positives ``V10 = (midrank among all -
    midrank among positives) / n_neg``, for negatives ``V01 = 1 - (midrank among all - midrank
    among negatives) / n_pos``; ``cov = cov(V10) / n_pos + cov(V01) / n_neg``. Ties count 1/2.
    """
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if s.shape[1] != y.size:
        raise ValueError(f"scores have {s.shape[1]} columns but y_true has {y.size} samples")
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 positive and 2 negative images, got {m} and {n}")
    pos, neg = s[:, y], s[:, ~y]
    rank_all = sps.rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # midranks
    rank_pos = sps.rankdata(pos, axis=1)
    rank_neg = sps.rankdata(neg, axis=1)
    v10 = (rank_all[:, :m] - rank_pos) / n
    v01 = 1.0 - (rank_all[:, m:] - rank_neg) / m
    aucs = v10.mean(axis=1)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def _z_p(diff: float, var: float) -> tuple[float, float]:
    if var <= 1e-300:
        return (0.0, 1.0) if abs(diff) < 1e-15 else (math.copysign(math.inf, diff), 0.0)
    z = diff / math.sqrt(var)
    return z, float(2.0 * sps.norm.sf(abs(z)))


def delong_test(blocks: Sequence[Block], confidence: float = 0.95) -> dict:
    """DeLong's paired test of mean AUC(a) - mean AUC(b) over seeds.

    ``blocks``: ``(y_true, scores_a, scores_b)`` with ``scores_*`` of shape (S_b, N_b) (or (N_b,)
    for one seed); the contrast weights every run by 1/S over all S seeds. One block with one seed
    is the classical two-curve test (pROC's ``roc.test(..., method="delong", paired=TRUE)``).
    """
    diffs, variance, auc_a, auc_b, seeds = 0.0, 0.0, [], [], 0
    for y_true, a, b in blocks:
        a, b = np.atleast_2d(a), np.atleast_2d(b)
        if a.shape != b.shape:
            raise ValueError(f"scores of the two strategies differ in shape: {a.shape} vs {b.shape}")
        aucs, cov = delong_auc_covariance(y_true, np.concatenate([a, b], axis=0))
        k = a.shape[0]
        contrast = np.r_[np.ones(k), -np.ones(k)]
        diffs += float(contrast @ aucs)
        variance += float(contrast @ cov @ contrast)
        auc_a += aucs[:k].tolist()
        auc_b += aucs[k:].tolist()
        seeds += k
    if seeds == 0:
        raise ValueError("delong_test needs at least one block")
    diff, var = diffs / seeds, variance / seeds**2
    z, p = _z_p(diff, var)
    half = float(sps.norm.ppf(0.5 + confidence / 2.0)) * math.sqrt(max(var, 0.0))
    return {
        "auc_a": float(np.mean(auc_a)),
        "auc_b": float(np.mean(auc_b)),
        "diff": diff,
        "se": math.sqrt(max(var, 0.0)),
        "statistic": z,
        "p": p,
        "ci_low": diff - half,
        "ci_high": diff + half,
        "seeds": seeds,
    }


def _balanced_accuracy(cm: np.ndarray, positive_class: int) -> np.ndarray:
    return confusion_metrics(cm)["balanced_accuracy"]


def _youden(cm: np.ndarray, positive_class: int) -> np.ndarray:
    j = confusion_metrics(cm)["youden"]  # (R, K)
    if j.shape[1] == 2:
        return j[:, positive_class]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(j, axis=1)


BOOTSTRAP_METRICS: dict[str, Callable] = {"balanced_accuracy": _balanced_accuracy, "youden": _youden}
"""Metrics :func:`paired_bootstrap` can resample: name -> ``f(confusion matrices (R,K,K), positive) -> (R,)``."""


def paired_bootstrap(
    blocks: Sequence[Block],
    metric: str = "balanced_accuracy",
    *,
    num_classes: int | None = None,
    positive_class: int = 1,
    n_resamples: int = 2000,
    seed: int = 0,
    stratified: bool = True,
    confidence: float = 0.95,
) -> dict:
    """Paired bootstrap of mean metric(a) - mean metric(b) over seeds, on predicted labels.

    ``blocks``: ``(y_true, pred_a, pred_b)`` with predicted class indices of shape (S_b, N_b).
    Each resample draws the block's images with replacement (within each true class when
    ``stratified``, so a small minority class never vanishes) and scores both strategies of every
    seed on the *same* draw. Returns the observed difference, the percentile interval and the
    two-sided p-value of the null-centred bootstrap distribution,
    ``(1 + #{|d* - d| >= |d|}) / (R + 1)`` (Efron & Tibshirani 1993, ch. 16).
    """
    if metric not in BOOTSTRAP_METRICS:
        raise ValueError(f"metric must be one of {sorted(BOOTSTRAP_METRICS)}, got {metric!r}")
    fn = BOOTSTRAP_METRICS[metric]
    rng = np.random.default_rng(seed)
    k = num_classes or 1 + max(int(np.max(y)) for y, _, _ in blocks)
    k = max(k, 2, *(1 + int(max(np.max(a), np.max(b))) for _, a, b in blocks))
    observed, boot, seeds = 0.0, np.zeros(n_resamples), 0
    for y_true, a, b in blocks:
        y = np.asarray(y_true, dtype=np.int64)
        a, b = np.atleast_2d(np.asarray(a, dtype=np.int64)), np.atleast_2d(np.asarray(b, dtype=np.int64))
        idx = draw_indices(y, n_resamples, rng, stratified)
        identity = np.arange(y.size)[None, :]
        for row_a, row_b in zip(a, b):
            observed += float(
                fn(confusion_matrices(y, row_a, identity, k), positive_class)[0]
                - fn(confusion_matrices(y, row_b, identity, k), positive_class)[0]
            )
            boot += fn(confusion_matrices(y, row_a, idx, k), positive_class) - fn(
                confusion_matrices(y, row_b, idx, k), positive_class
            )
            seeds += 1
    diff, boot = observed / seeds, boot / seeds
    boot = boot[np.isfinite(boot)]
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(boot, [100 * alpha, 100 * (1 - alpha)])
    extreme = int(np.sum(np.abs(boot - diff) >= abs(diff) - 1e-12))
    p = 1.0 if abs(diff) < 1e-15 else (1 + extreme) / (1 + boot.size)
    return {
        "diff": diff,
        "ci_low": float(low),
        "ci_high": float(high),
        "p": float(min(1.0, p)),
        "n_resamples": int(boot.size),
        "seeds": seeds,
    }


def paired_seed_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Paired Student t-test of mean(a - b) over seeds: ``a[i]`` and ``b[i]`` are one run-level value
    (e.g. ``robust_mean_balanced_accuracy``) of the two strategies on seed ``i``.

    For numbers a run logs without the per-image predictions a paired bootstrap or DeLong would
    resample, the seeds are the only pairing left; the inference is then over training seeds, not
    over test images. A pair with a nan side is left out. The difference and its t-interval are
    :func:`mean_sd_ci` of the per-seed differences, the p-value SciPy's ``ttest_rel``; fewer than two
    pairs give a nan p, and identical differences on every seed (sd 0) a p of 0 (1 when they are 0).
    """
    pairs = [(float(x), float(y)) for x, y in zip(a, b, strict=True) if math.isfinite(x) and math.isfinite(y)]
    diffs = [x - y for x, y in pairs]
    spread = mean_sd_ci(diffs, confidence)
    out = {
        "diff": spread["mean"],
        "sd": spread["sd"],
        "ci_low": spread["ci_low"],
        "ci_high": spread["ci_high"],
        "statistic": math.nan,
        "p": math.nan,
        "seeds": len(pairs),
    }
    if len(pairs) < 2:
        out["note"] = f"{len(pairs)} seed(s) with the metric on both sides: no test over seeds"
    elif spread["sd"] == 0.0:
        out["statistic"] = 0.0 if spread["mean"] == 0.0 else math.copysign(math.inf, spread["mean"])
        out["p"] = 1.0 if spread["mean"] == 0.0 else 0.0
    else:
        res = sps.ttest_rel([x for x, _ in pairs], [y for _, y in pairs])
        out["statistic"], out["p"] = float(res.statistic), float(res.pvalue)
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (statsmodels ``multipletests(method="holm")``); nan stays
    nan and is not counted as a comparison."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        # statsmodels' Holm branch calls gc.collect(), which costs a second or more in a process
        # holding torch and MLflow; frozen objects are skipped by the collector.
        gc.freeze()
        try:
            out[ok] = multipletests(p[ok], method="holm")[1]
        finally:
            gc.unfreeze()
    return out.tolist()
