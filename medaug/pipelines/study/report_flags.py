"""Sanity flags of a study report: which cells and comparisons cannot answer the study's question, and why.

A paired test says whether two sets of predictions differ on the same test images; it cannot say
whether the runs behind them were trained the way the evaluation protocol asks, nor whether the
models learnt anything. A 2-epoch smoke study whose class-weighted models each predicted one class
still gives "Δ balanced accuracy −0.074, p < 0.001". So the report checks, per cell:

* **setup** -- smoke or short runs (a config list with ``smoke.json``, or ``max_epochs`` below
  :data:`MIN_EPOCHS`), and fewer seeds than the protocol's :data:`MIN_SEEDS`;
* **model health**, from each run's test predictions -- a model that predicted one class for every
  test image, or one at chance: the 95% interval over its test images of balanced accuracy
  contains 1/K (stratified bootstrap, as in :mod:`medaug.pipelines.evaluate.metrics`) or, with two
  classes, of AUC contains 0.5 (DeLong's variance).

A comparison whose runs fail a setup check, or whose strategy's models fail a health check, gets
no verdict (:data:`WITHHELD`); one whose baseline's models fail a health check keeps its verdict
with a mark (:data:`CAUTION`): beating a collapsed baseline is a finding about the baseline too.
The thresholds are arguments of :func:`~medaug.pipelines.study.report.write_study_report`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

import numpy as np

from medaug.pipelines.evaluate.metrics import confusion_matrices, confusion_metrics, draw_indices
from medaug.pipelines.evaluate.stats import delong_auc_covariance
from medaug.pipelines.study.grid import SMOKE_OVERLAY

MIN_SEEDS = 5
"""Seeds per cell the evaluation protocol asks for (``docs`` of imbalance_baselines; the design's "≥ 5 seeds")."""
MIN_EPOCHS = 3
"""Runs configured for fewer epochs are short: the smoke overlays train 1-2, the study bundles 4 or more."""
SMOKE_CONFIG = SMOKE_OVERLAY
"""A run whose config files include one of this name is a smoke run, whatever its epochs."""
CONFIDENCE = 0.95
N_RESAMPLES = 1000

WITHHELD = "✗"
CAUTION = "⚠"
OK = "ok"
LEGEND = (
    f"By strategy: {WITHHELD} the cell's runs are smoke or short runs, or it has fewer seeds than the protocol's "
    f"minimum; {CAUTION} some of its models predicted one class for every test image, or sit at chance (the 95% "
    "interval over the test images of balanced accuracy contains 1/K, or of AUC contains 0.5). "
    f"Comparisons: {WITHHELD} not an answer: the runs of either side are smoke or short, the seeds in common are "
    f"fewer than the minimum, or the strategy's models are marked {CAUTION}; the row gives the reason instead of "
    f"Δ, p and Holm (the numbers stay in report.json). {CAUTION} only the baseline's models are marked: the "
    f"verdict is shown, but against a model that learnt little. {OK}: none of these. Holm's correction counts "
    "every comparison, marked ones included."
)

# Where a run records its config files: the study parent's param, or a run's own.
CONFIG_LIST_PARAMS = ("configs", "config_files", "config_file")
EPOCH_PARAMS = ("max_epochs", "trainer.max_epochs")


@dataclass
class RunSetup:
    """What a run was configured as: its config files and its epochs (None where not recorded)."""

    configs: list[str] = field(default_factory=list)
    max_epochs: int | None = None

    @property
    def smoke(self) -> bool:
        return any(PurePath(p).name == SMOKE_CONFIG for p in self.configs)


def _config_list(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, list) else []


def run_setup(
    params: Mapping[str, str], overrides: Mapping, parent_params: Mapping[str, str] | None = None
) -> RunSetup:
    """A run's setup from its MLflow params (the flattened bundle config), its grid overrides and
    its study parent's params (the runner logs the config files there, as ``configs``)."""
    configs: list[str] = []
    for source in (parent_params or {}, params):
        for key in CONFIG_LIST_PARAMS:
            if key in source:
                configs += _config_list(source[key])
    epochs = next((params[k] for k in EPOCH_PARAMS if k in params), overrides.get("max_epochs"))
    try:
        max_epochs = int(float(epochs)) if epochs is not None else None
    except (TypeError, ValueError):  # an expression the run did not resolve: not known
        max_epochs = None
    return RunSetup(configs, max_epochs)


def run_health(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    prob: np.ndarray,
    class_names: Sequence[str],
    positive: int,
    *,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict:
    """Whether one run's model predicted a single class or sits at chance on its test images.

    Returns ``{"predicted_classes", "collapsed", "balanced_accuracy", "balanced_accuracy_ci",
    "auc", "auc_ci", "at_chance"}``, ``at_chance`` listing the criteria that hold (empty: none).
    """
    k = len(class_names)
    yt, yp = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    predicted = sorted(int(c) for c in np.unique(yp))
    identity = np.arange(yt.size)[None, :]
    resamples = draw_indices(yt, n_resamples, np.random.default_rng(seed), stratified=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from a resample
        observed = float(confusion_metrics(confusion_matrices(yt, yp, identity, k))["balanced_accuracy"][0])
        boot = confusion_metrics(confusion_matrices(yt, yp, resamples, k))["balanced_accuracy"]
        alpha = 100 * (1 - confidence) / 2
        low, high = (float(v) for v in np.nanpercentile(boot, [alpha, 100 - alpha]))
    out = {
        "predicted_classes": [class_names[c] for c in predicted],
        "collapsed": len(predicted) == 1,
        "balanced_accuracy": observed,
        "balanced_accuracy_ci": [low, high],
        "auc": math.nan,
        "auc_ci": [math.nan, math.nan],
        "at_chance": [],
    }
    if low <= 1.0 / k <= high:
        out["at_chance"].append(f"balanced accuracy CI contains 1/{k}")
    if k == 2:
        try:
            aucs, cov = delong_auc_covariance((yt == positive).astype(int), prob[:, positive][None])
        except ValueError:  # fewer than two images of a class: AUC has no interval
            return out
        from scipy.stats import norm

        half = float(norm.ppf(0.5 + confidence / 2)) * math.sqrt(max(float(cov[0, 0]), 0.0))
        auc = float(aucs[0])
        out["auc"], out["auc_ci"] = auc, [auc - half, auc + half]
        if auc - half <= 0.5 <= auc + half:
            out["at_chance"].append("AUC CI contains 0.5")
    return out


def _count(n: int, total: int, what: str) -> str:
    return f"every run {what}" if n == total else f"{n} of {total} runs {what}"


def _epochs(setups: Sequence[RunSetup]) -> str:
    epochs = sorted({s.max_epochs for s in setups if s.max_epochs is not None})
    return f"{', '.join(map(str, epochs))} epoch{'' if epochs == [1] else 's'}" if epochs else ""


def setup_reasons(setups: Sequence[RunSetup], min_epochs: int = MIN_EPOCHS) -> list[str]:
    """Why the runs of a cell (or of two cells compared) are not the protocol's: smoke or short runs."""
    reasons = []
    smoke = [s for s in setups if s.smoke]
    short = [s for s in setups if not s.smoke and s.max_epochs is not None and s.max_epochs < min_epochs]
    if smoke:
        what = "smoke runs" if len(smoke) == len(setups) else f"{len(smoke)} of {len(setups)} runs smoke"
        reasons.append(what + (f" ({_epochs(smoke)})" if _epochs(smoke) else ""))
    if short:
        what = "short runs" if len(short) == len(setups) else f"{len(short)} of {len(setups)} runs short"
        reasons.append(f"{what} ({_epochs(short)} < {min_epochs})")
    return reasons


def seed_reason(seeds: int, min_seeds: int = MIN_SEEDS) -> list[str]:
    return [f"{seeds} seed{'s' if seeds != 1 else ''} < {min_seeds}"] if seeds < min_seeds else []


def health_reasons(healths: Sequence[Mapping]) -> list[str]:
    """Why the models of a cell are no finding: runs that predicted one class, or at chance."""
    reasons = []
    collapsed = [h for h in healths if h["collapsed"]]
    if collapsed:
        classes = sorted({c for h in collapsed for c in h["predicted_classes"]})
        reasons.append(_count(len(collapsed), len(healths), f"predicted one class ({', '.join(classes)})"))
    chance = [h for h in healths if not h["collapsed"] and h["at_chance"]]
    if chance:
        criteria = list(dict.fromkeys(c for h in chance for c in h["at_chance"]))  # balanced accuracy first
        reasons.append(_count(len(chance), len(healths), f"at chance ({'; '.join(criteria)})"))
    return reasons


@dataclass
class CellFlags:
    setup: list[str]
    health: list[str]

    @property
    def mark(self) -> str:
        return WITHHELD if self.setup else (CAUTION if self.health else OK)

    def text(self) -> str:
        reasons = self.setup + self.health
        return f"{self.mark} {'; '.join(reasons)}" if reasons else OK


def cell_flags(
    setups: Sequence[RunSetup],
    healths: Sequence[Mapping],
    *,
    min_seeds: int = MIN_SEEDS,
    min_epochs: int = MIN_EPOCHS,
) -> CellFlags:
    """The flags of one cell (its runs' setups and health, one per seed)."""
    return CellFlags(setup_reasons(setups, min_epochs) + seed_reason(len(setups), min_seeds), health_reasons(healths))


def comparison_flags(
    strategy: CellFlags,
    baseline: CellFlags,
    strategy_setups: Sequence[RunSetup],
    baseline_setups: Sequence[RunSetup],
    common_seeds: int,
    *,
    min_seeds: int = MIN_SEEDS,
    min_epochs: int = MIN_EPOCHS,
) -> dict:
    """``{"mark", "reasons", "verdict"}`` of a strategy-vs-baseline comparison on ``common_seeds`` seeds.

    ``verdict`` is False (:data:`WITHHELD`) when the runs of either side are smoke/short, the common
    seeds are fewer than ``min_seeds``, or the strategy's models are unhealthy; a baseline's
    unhealthy models only mark it (:data:`CAUTION`).
    """
    withheld = setup_reasons([*strategy_setups, *baseline_setups], min_epochs)
    withheld += seed_reason(common_seeds, min_seeds) + strategy.health
    caution = [f"baseline: {r}" for r in baseline.health]
    if withheld:
        return {"mark": WITHHELD, "reasons": withheld + caution, "verdict": False}
    if caution:
        return {"mark": CAUTION, "reasons": caution, "verdict": True}
    return {"mark": OK, "reasons": [], "verdict": True}


def comparison_text(flags: Mapping) -> str:
    if flags["mark"] == WITHHELD:
        return f"{WITHHELD} not an answer: {'; '.join(flags['reasons'])}"
    return f"{CAUTION} {'; '.join(flags['reasons'])}" if flags["reasons"] else OK


def redundant_binary_metrics(metric_names: Sequence[str], class_names: Sequence[str], positive: int) -> set[str]:
    """Per-class ``test_*`` metrics that repeat another row when there are two classes.

    With classes P (positive) and N: sensitivity, specificity, Youden's J and AUC of P are the
    summary metrics, sensitivity of N is specificity of P (and the reverse), Youden's J and AUC of N
    equal those of P, and F1 of P is the summary F1. Only F1 of N says something new.
    """
    if len(class_names) != 2:
        return set()
    from medaug.pipelines.tracking.tracker import safe_key

    keep = {f"test_f1_class_{name}" for n in (class_names[1 - positive],) for name in (n, safe_key(n))}
    per_class = ("sensitivity", "specificity", "youden", "auc", "f1")
    return {m for m in metric_names if m not in keep and any(m.startswith(f"test_{base}_class_") for base in per_class)}


__all__ = [
    "CAUTION",
    "LEGEND",
    "MIN_EPOCHS",
    "MIN_SEEDS",
    "OK",
    "SMOKE_CONFIG",
    "WITHHELD",
    "CellFlags",
    "RunSetup",
    "cell_flags",
    "comparison_flags",
    "comparison_text",
    "redundant_binary_metrics",
    "run_health",
    "run_setup",
]
