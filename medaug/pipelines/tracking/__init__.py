"""MLflow tracking of every stage: :class:`RunTracker` (one run: params, metrics, artifacts,
status), :mod:`.tags` (the tag vocabulary study, tracker and report share) and :mod:`.server`
(a local ``mlflow server`` for tests and trying the team setup).
"""

from medaug.pipelines.tracking.tracker import RunTracker, timestamp

__all__ = ["RunTracker", "timestamp"]
