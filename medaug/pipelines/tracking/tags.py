"""The tag and environment vocabulary of medaug's MLflow runs, in one place.

The study runner writes these tags on parent and child runs, the run tracker adds the ones a
launcher passes through the environment, and the report reads them back to group runs into
cells; keeping the names here is what keeps those three in agreement.
"""

from __future__ import annotations

# Passed from a launcher (the study runner, torchrun wrappers) to a bundle run.
PARENT_RUN_ENV = "MEDAUG_PARENT_RUN_ID"  # the parent run's id: the child nests under it
RUN_TAGS_ENV = "MEDAUG_RUN_TAGS"  # a JSON object of extra tags (e.g. the child's config hash)

PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests the run under its parent
STAGE_TAG = "stage"  # train, study or report
ROLE_TAG = "medaug.role"  # "study" on a parent run, "report" on a report run
STUDY_KEY_TAG = "medaug.study_key"  # finds a study's parent again after a restart
HASH_TAG = "medaug.config_hash"  # a child's configs + overrides: FINISHED with this hash is skipped
STRATEGY_TAG = "medaug.strategy"
CELL_TAG = "medaug.cell"
SEED_TAG = "medaug.seed"
AXES_TAG = "medaug.axes"
OVERRIDES_TAG = "medaug.overrides"
AMOUNT_KEY_TAG = "medaug.amount_key"
LOCK_TAG = "medaug.study_lock"  # the study lock record (holder, heartbeat) on the parent run
DATA_LEAK_TAG = "data_leak"  # set when images repeat across splits
ERROR_TAG = "medaug.error"  # on a FAILED run: the error that stopped it ("SettingsError: ...")
RUN_DIR_TAG = "medaug.run_dir"  # the run's folder: a tag, not a parameter (it differs in every run)

# MLflow 3's experiment type: the UI opens a "custom_model_development" experiment on its runs
# (classic model development) instead of the GenAI overview it shows an untyped one.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CLASSIC_ML_KIND = "custom_model_development"

__all__ = [
    "AMOUNT_KEY_TAG",
    "AXES_TAG",
    "CELL_TAG",
    "CLASSIC_ML_KIND",
    "DATA_LEAK_TAG",
    "ERROR_TAG",
    "EXPERIMENT_KIND_TAG",
    "HASH_TAG",
    "LOCK_TAG",
    "OVERRIDES_TAG",
    "PARENT_RUN_ENV",
    "PARENT_TAG",
    "ROLE_TAG",
    "RUN_DIR_TAG",
    "RUN_TAGS_ENV",
    "SEED_TAG",
    "STAGE_TAG",
    "STRATEGY_TAG",
    "STUDY_KEY_TAG",
]
