"""Figures of a study report: metrics by strategy with CIs, amount sweeps, image quality vs gain,
balanced accuracy under corruption vs clean.

Headless and atomic like :mod:`medaug.pipelines.evaluate.plots` (whose figure helpers they share).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from medaug.pipelines.evaluate.plots import new_figure, save_figure

__all__ = ["plot_metrics_by_strategy", "plot_amount_sweep", "plot_quality_vs_gain", "plot_robust_vs_clean"]


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def plot_metrics_by_strategy(
    cells: Sequence[str],
    metrics: Sequence[str],
    values: Mapping,
    summary: Mapping,
    path,
    *,
    baseline: str | None = None,
) -> Path:
    """One panel per metric: every seed's value as a grey dot, the mean over seeds with its 95%
    t-interval as a bar, one row per strategy (cell); the baseline's mean as a dashed line.

    ``values[cell][metric]``: per-seed values; ``summary[cell][metric]``: ``{"mean", "ci_low", "ci_high"}``.
    """
    n = len(metrics)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    height = max(2.4, 0.35 * len(cells) + 1.2)
    fig = new_figure(4.2 * cols, height * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    y = np.arange(len(cells))
    for ax, metric in zip(axes, metrics):
        for i, cell in enumerate(cells):
            seeds = _finite(values.get(cell, {}).get(metric, []))
            ax.scatter(seeds, [i] * len(seeds), color="grey", s=12, alpha=0.7, zorder=2)
            s = summary.get(cell, {}).get(metric, {})
            mean = s.get("mean", math.nan)
            if math.isfinite(mean):
                low, high = s.get("ci_low", math.nan), s.get("ci_high", math.nan)
                if math.isfinite(low) and math.isfinite(high):
                    ax.errorbar(mean, i, xerr=[[mean - low], [high - mean]], fmt="o", color="C0", capsize=3, zorder=3)
                else:
                    ax.plot(mean, i, "o", color="C0", zorder=3)
        if baseline in summary and math.isfinite(summary[baseline].get(metric, {}).get("mean", math.nan)):
            ax.axvline(summary[baseline][metric]["mean"], color="C3", ls="--", lw=1, label="baseline mean")
        ax.set_yticks(y, labels=cells if ax in axes[::cols] else [""] * len(cells), fontsize="small")
        ax.invert_yaxis()
        ax.set_title(metric)
        ax.grid(alpha=0.3, axis="x")
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle("test metrics by strategy: seeds (grey), mean with 95% CI over seeds (blue)")
    return save_figure(fig, path)


def plot_amount_sweep(
    series: Mapping[str, Sequence[tuple[float, float, float, float]]], metrics: Sequence[str], path, *, amount_key: str
) -> Path:
    """Mean metric against the amount of synthetic data, one line per strategy (and other axes),
    with its 95% CI band. ``series[f"{label}|{metric}"]``: ``[(amount, mean, ci_low, ci_high), ...]``."""
    fig = new_figure(5.2 * len(metrics), 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(metrics))).ravel()
    for ax, metric in zip(axes, metrics):
        for key, points in series.items():
            label, name = key.rsplit("|", 1)
            if name != metric or not points:
                continue
            pts = sorted(points)
            x = np.array([p[0] for p in pts], dtype=float)
            mean = np.array([p[1] for p in pts], dtype=float)
            low = np.array([p[2] for p in pts], dtype=float)
            high = np.array([p[3] for p in pts], dtype=float)
            line = ax.plot(x, mean, marker="o", label=label)[0]
            ok = np.isfinite(low) & np.isfinite(high)
            if ok.sum() > 1:
                ax.fill_between(x[ok], low[ok], high[ok], color=line.get_color(), alpha=0.15)
        ax.set_xlabel(amount_key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.suptitle("amount sweep: mean over seeds with 95% CI")
    return save_figure(fig, path)


def plot_quality_vs_gain(
    points: Sequence[tuple[str, float, float]], path, *, quality: str, gain: str
) -> tuple[Path, dict]:
    """Scatter of image quality (e.g. FID, lower = better) against the gain over the baseline, with
    Spearman's rank correlation (SciPy). ``points``: ``(label, quality, gain)``."""
    pts = [(lbl, q, g) for lbl, q, g in points if math.isfinite(q) and math.isfinite(g)]
    fig = new_figure(6.0, 4.8)
    ax = fig.add_subplot()
    rho = p = math.nan
    if pts:
        q = np.array([p_[1] for p_ in pts])
        g = np.array([p_[2] for p_ in pts])
        ax.scatter(q, g, color="C0")
        for lbl, qi, gi in pts:
            ax.annotate(lbl, (qi, gi), fontsize="x-small", xytext=(3, 3), textcoords="offset points")
        if len(pts) >= 3 and np.ptp(q) > 0 and np.ptp(g) > 0:
            res = spearmanr(q, g)
            rho, p = float(res.statistic), float(res.pvalue)
    ax.axhline(0.0, color="grey", lw=1, ls=":")
    ax.set_xlabel(quality)
    ax.set_ylabel(gain)
    ax.set_title(
        f"image quality vs gain (Spearman rho = {rho:.2f}, p = {p:.3g})"
        if math.isfinite(rho)
        else "image quality vs gain (too few points for Spearman's rho)"
    )
    ax.grid(alpha=0.3)
    return save_figure(fig, path), {"spearman_rho": rho, "p": p, "n": len(pts)}


def plot_robust_vs_clean(cells: Sequence[str], summary: Mapping, path, *, clean: str, robust: str) -> Path:
    """One point per strategy (cell): its mean ``clean`` metric (x) against its mean ``robust`` one
    (y), each with its 95% CI over seeds as error bars; the diagonal is "no drop under corruption",
    so a strategy's distance below it is what corruption costs it. Cells without both are left out."""
    fig = new_figure(6.0, 5.0)
    ax = fig.add_subplot()
    lows = []
    for i, cell in enumerate(cells):
        sx, sy = summary.get(cell, {}).get(clean, {}), summary.get(cell, {}).get(robust, {})
        x, y = sx.get("mean", math.nan), sy.get("mean", math.nan)
        if not (math.isfinite(x) and math.isfinite(y)):
            continue

        def err(s, mean):
            low, high = s.get("ci_low", math.nan), s.get("ci_high", math.nan)
            return [[mean - low], [high - mean]] if math.isfinite(low) and math.isfinite(high) else None

        ax.errorbar(x, y, xerr=err(sx, x), yerr=err(sy, y), fmt="o", color=f"C{i % 10}", capsize=3, label=cell)
        lows += _finite([x, y, sx.get("ci_low"), sy.get("ci_low")])
    low = min(lows, default=0.0)
    ax.plot([low, 1.0], [low, 1.0], color="grey", lw=1, ls=":", label="no drop")
    ax.set_xlabel(f"clean {clean}")
    ax.set_ylabel(f"{robust} (mean over corruptions)")
    ax.set_title("under corruption vs clean: mean over seeds with 95% CI")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    return save_figure(fig, path)
