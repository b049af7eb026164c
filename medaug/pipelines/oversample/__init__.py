"""Oversampling stage: takes the study data's train split, gives it back with new minority-class
images (``synthetic: true``, with provenance), their manifest, quality metrics and cost.

Modules: :mod:`.stage` (orchestration, caching, manifest), :mod:`.quality` and
:mod:`.quality_metrics` (FID, precision/recall, memorization), :mod:`.feature_network` (the
features those metrics use), :mod:`.cost` (time and memory), :mod:`.batches` (image batch helpers).
The generators themselves live in :mod:`medaug.models` (see :mod:`medaug.models.registry`).
"""

from medaug.pipelines.oversample.quality import assess_synthetic
from medaug.pipelines.oversample.stage import METHODS, OversampleResult, OversampleStage, requested_counts

__all__ = ["METHODS", "OversampleResult", "OversampleStage", "assess_synthetic", "requested_counts"]
