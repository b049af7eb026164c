"""Study stage: takes a bundle and its grid (``configs/grid.yaml``), gives one MLflow parent run
with a child run per cell and seed (resumable, locked), and the report over them.

:mod:`.grid` (spec, cells, config hash), :mod:`.runner` (processes, resume), :mod:`.lock` (one
runner per study), :mod:`.report`, :mod:`.report_flags` and :mod:`.report_plots` (tables, sanity marks,
significance tests, figures).
The grid file's form is described in :mod:`medaug.pipelines.study.runner`.
"""

from medaug.pipelines.study.grid import Grid, GridError, load_grid, validate_grid_keys
from medaug.pipelines.study.lock import StudyLocked, StudyLockLost
from medaug.pipelines.study.report import ReportError, write_study_report
from medaug.pipelines.study.runner import StudyInterrupted, StudyRunner, StudySummary

__all__ = [
    "Grid",
    "GridError",
    "ReportError",
    "StudyInterrupted",
    "StudyLockLost",
    "StudyLocked",
    "StudyRunner",
    "StudySummary",
    "load_grid",
    "validate_grid_keys",
    "write_study_report",
]
