"""Evaluation stage: takes the checkpoint chosen on validation and the real test split, gives
``test_<metric>`` with bootstrap CIs, per-class scores, ``metrics.json``, ``predictions.csv`` and
plots. :mod:`.metrics` (the metric definitions), :mod:`.stats` (tests across seeds) and
:mod:`.plots` (figures) are shared with the study report.
"""

from medaug.pipelines.evaluate.metrics import bootstrap_ci, compute_metrics
from medaug.pipelines.evaluate.test_split import TestEvaluation, resolve_positive_class

__all__ = ["TestEvaluation", "bootstrap_ci", "compute_metrics", "resolve_positive_class"]
