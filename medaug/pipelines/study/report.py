"""The study report: what a grid of runs says, with its uncertainty, as HTML and Markdown.

Reads the finished runs of an MLflow experiment (the child runs of a study's parent run, or every
finished training run of the experiment) and their ``predictions.csv`` / ``metrics.json``
artifacts, and writes ``report.html`` (figures embedded), ``report.md`` (figures beside it) and
``report.json``, each atomically, then logs them to the parent run:

* per strategy (a *cell*: the strategy with its other axis values, e.g. classifier and amount):
  mean ± sd over seeds and the 95% t-interval of every ``test_<metric>``;
* paired tests of every cell against the baseline cell with the same other axis values, on the
  same seeds and the same test images (:mod:`medaug.pipelines.evaluate.stats`): McNemar on per-image
  correctness, DeLong on AUC (binary tasks), paired bootstrap on balanced accuracy and Youden's J;
  Holm's correction across the comparisons, per test;
* figures: metrics by strategy with CIs, amount-sweep curves (grids with an ``amount_key``),
  image quality vs gain (runs with an FID-like metric), confusion matrices summed over seeds;
* robustness (runs whose test evaluation scored ``evaluate#robustness``): the mean balanced
  accuracy under corruption with its interval over seeds and the relative drop from clean, next to
  the clean metrics; paired t-tests over seeds of both against the baseline (the runs log no per-image
  predictions under corruption), Holm-corrected like the other tests; a strategy x corruption
  table and a figure of corrupted vs clean balanced accuracy. Runs without ``robust_*`` metrics
  leave these cells empty; when no run has them, they are left out;
* sanity marks (:mod:`.report_flags`): cells of smoke or short runs, with fewer seeds than the
  protocol asks, or whose models predicted one class or sit at chance; a comparison so marked
  shows the reason instead of a verdict.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
import math
import os
import re
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medaug.io.atomic import atomic_path, write_json_atomic
from medaug.pipelines.evaluate import plots, stats
from medaug.pipelines.study import report_flags, report_plots
from medaug.pipelines.study.grid import cell_name
from medaug.pipelines.tracking.tags import (
    AMOUNT_KEY_TAG,
    AXES_TAG,
    OVERRIDES_TAG,
    PARENT_TAG,
    ROLE_TAG,
    SEED_TAG,
    STAGE_TAG,
    STRATEGY_TAG,
)
from medaug.pipelines.tracking.tracker import search_all_runs

logger = logging.getLogger("medaug.report")

MAIN_METRICS = ("balanced_accuracy", "auc", "sensitivity", "specificity", "f1", "mcc", "kappa", "youden", "accuracy")
TESTS = ("balanced_accuracy", "youden", "auc", "mcnemar")
TEST_TITLES = {
    "balanced_accuracy": "Δ balanced accuracy (paired bootstrap)",
    "youden": "Δ Youden's J (paired bootstrap)",
    "auc": "Δ AUC (DeLong)",
    "mcnemar": "McNemar b/c",
}
# Run-level summaries of evaluate#robustness (medaug.pipelines.evaluate.robustness.robustness_metrics).
ROBUST_SUMMARY = re.compile(r"robust_(mean|relative_drop|worst)_([a-z]+(?:_[a-z]+)*)")
ROBUST_COLUMNS = {
    "robust_mean_balanced_accuracy": "balanced_accuracy under corruption",
    "robust_relative_drop_balanced_accuracy": "relative drop from clean",
}
"""Robustness columns of the strategy table, next to the clean metrics: MLflow name -> column."""
ROBUST_TESTS = ("robust_mean_balanced_accuracy", "robust_relative_drop_balanced_accuracy")
"""Run-level robustness metrics tested against the baseline by a paired t-test over seeds."""
ROBUST_TEST_TITLES = {
    "robust_mean_balanced_accuracy": "Δ balanced accuracy under corruption [95% CI] (paired t, seeds)",
    "robust_relative_drop_balanced_accuracy": "Δ relative drop [95% CI] (paired t, seeds)",
}
PER_CORRUPTION = re.compile(r"robust_balanced_accuracy_(.+)_mean")


class ReportError(ValueError):
    """Nothing to report on, or the runs cannot be compared; the message says which."""


@dataclass
class RunRecord:
    run_id: str
    name: str
    strategy: str
    seed: int
    axes: dict
    overrides: dict
    metrics: dict
    start_time: int = 0
    end_time: int = 0
    configs: list = field(default_factory=list)  # config files, as the run or its study parent logged them
    max_epochs: int | None = None

    @property
    def setup(self) -> report_flags.RunSetup:
        return report_flags.RunSetup(self.configs, self.max_epochs)

    @property
    def cell(self) -> str:
        return cell_name(self.strategy, self.axes)

    @property
    def settings(self) -> dict:
        """Every config value that defines the cell (axes plus what the strategy fixes)."""
        return {**self.axes, **self.overrides}


@dataclass
class Predictions:
    keys: list
    y_true: np.ndarray
    y_pred: np.ndarray
    prob: np.ndarray
    class_names: list
    positive: int
    index: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------ reading


def resolve_tracking_uri(
    tracking_uri: str | None, runs_dir: str | os.PathLike | None, experiment: str
) -> tuple[str, Path | None]:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``<runs-dir>/mlflow.db``, else
    ``bundles/<experiment>/runs/mlflow.db``; the runs folder (for the default output) if local."""
    if tracking_uri:
        return tracking_uri, Path(runs_dir) if runs_dir else None
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], Path(runs_dir) if runs_dir else None
    folder = Path(runs_dir) if runs_dir else Path("bundles") / experiment / "runs"
    if not (folder / "mlflow.db").is_file():
        raise ReportError(
            f"--runs-dir: no MLflow store at {folder / 'mlflow.db'} (give --runs-dir, --tracking-uri "
            f"or set MLFLOW_TRACKING_URI)"
        )
    return f"sqlite:///{folder.resolve() / 'mlflow.db'}", folder


def _record(run, parent_params: dict | None = None) -> RunRecord:
    tags = run.data.tags
    strategy = tags.get(STRATEGY_TAG) or tags.get("strategy") or "run"
    seed_text = tags.get(SEED_TAG, tags.get("seed", "0"))
    try:
        seed = int(seed_text)
    except ValueError:
        seed = 0
    if AXES_TAG in tags:
        axes = json.loads(tags[AXES_TAG])
    else:  # a bundle run outside a study: its classifier is the other axis
        axes = {"classifier": tags["classifier"]} if "classifier" in tags else {}
    overrides = json.loads(tags.get(OVERRIDES_TAG, "{}"))
    setup = report_flags.run_setup(run.data.params, overrides, parent_params)
    return RunRecord(
        run.info.run_id,
        run.info.run_name,
        strategy,
        seed,
        axes,
        overrides,
        dict(run.data.metrics),
        run.info.start_time or 0,
        run.info.end_time or 0,
        setup.configs,
        setup.max_epochs,
    )


def collect_runs(
    client, experiment: str, parent_run_id: str | None
) -> tuple[object | None, list[RunRecord], list[str]]:
    """The parent run (None when reporting on a plain experiment), the finished runs with test
    metrics, and notes on what was left out."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ReportError(f"--experiment: no MLflow experiment named {experiment!r}")
    parent = None
    if parent_run_id:
        try:
            parent = client.get_run(parent_run_id)
        except Exception as err:  # MlflowException: not found
            raise ReportError(f"--parent-run: no run {parent_run_id!r} ({type(err).__name__})") from None
        runs = search_all_runs(client, exp.experiment_id, f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
    else:
        studies = search_all_runs(client, exp.experiment_id, f"tags.`{ROLE_TAG}` = 'study'")
        if studies:
            parent = max(studies, key=lambda r: r.info.start_time)
            runs = search_all_runs(client, exp.experiment_id, f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
        else:
            runs = [
                r
                for r in search_all_runs(client, exp.experiment_id)
                if r.data.tags.get(ROLE_TAG) not in ("study", "report")
            ]
    notes = []
    unfinished = [r for r in runs if r.info.status != "FINISHED"]
    if unfinished:
        notes.append(f"{len(unfinished)} run(s) not FINISHED (failed, killed or running) are left out")
    parent_params = dict(parent.data.params) if parent is not None else None
    records = [
        _record(r, parent_params)
        for r in runs
        if r.info.status == "FINISHED" and any(k.startswith("test_") for k in r.data.metrics)
    ]
    latest: dict[tuple, RunRecord] = {}
    for rec in sorted(records, key=lambda r: r.start_time):
        if (rec.cell, rec.seed) in latest:
            notes.append(f"{rec.cell} seed {rec.seed} ran more than once; the latest run ({rec.run_id}) is used")
        latest[(rec.cell, rec.seed)] = rec
    if not latest:
        where = f"under parent run {parent.info.run_id}" if parent is not None else f"in experiment {experiment!r}"
        raise ReportError(f"no finished run with test metrics {where}")
    return parent, sorted(latest.values(), key=lambda r: (r.cell, r.seed)), notes


def load_predictions(client, run_id: str, scratch: Path) -> Predictions:
    """The run's per-image test predictions (``predictions.csv``) and its classes (``metrics.json``)."""
    folder = scratch / run_id
    folder.mkdir(parents=True, exist_ok=True)
    try:
        meta = json.loads(Path(client.download_artifacts(run_id, "metrics.json", str(folder))).read_text())
        table = Path(client.download_artifacts(run_id, "predictions.csv", str(folder)))
    except Exception as err:
        raise ReportError(
            f"run {run_id} has no predictions.csv / metrics.json artifact ({type(err).__name__}); "
            "paired tests need the per-image predictions that TestEvaluation logs"
        ) from None
    names = list(meta["class_names"])
    positive = names.index(meta["positive_class"]) if meta.get("positive_class") in names else 1
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    keys = [(r["image"], r.get("frame", "")) for r in rows]
    y_true = np.array([names.index(r["label"]) for r in rows], dtype=np.int64)
    y_pred = np.array([names.index(r["predicted"]) for r in rows], dtype=np.int64)
    prob = np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows], dtype=np.float64).reshape(
        len(rows), len(names)
    )
    return Predictions(keys, y_true, y_pred, prob, names, positive, {k: i for i, k in enumerate(keys)})


# ------------------------------------------------------------------------------------ statistics


SIGNED_METRICS = ("mcc", "kappa", "youden")  # range [-1, 1]; the other test metrics lie in [0, 1]


def metric_range(name: str) -> tuple[float, float] | None:
    """The values a ``test_<metric>`` (or its ``robust_mean_`` / ``robust_worst_`` summary) can take,
    or None for a metric medaug does not define. A relative drop from clean is at most 1."""
    robust = ROBUST_SUMMARY.fullmatch(name)
    if robust:
        if robust.group(1) == "relative_drop":
            return (-math.inf, 1.0)
        name = f"test_{robust.group(2)}"
    base = name[len("test_") :].split("_class_")[0]
    if base in SIGNED_METRICS:
        return (-1.0, 1.0)
    return (0.0, 1.0) if base in MAIN_METRICS else None


def leak_note(records: list[RunRecord]) -> str:
    """What the runs did with test images identical to a train/val image, from the metrics
    ``data_leaked_test_images`` / ``data_leaked_test_images_dropped`` that the test evaluation logs."""
    known = [r.metrics for r in records if "data_leaked_test_images" in r.metrics]
    if not known:
        return "leaked test images: not recorded by these runs"
    leaked = sorted({int(m["data_leaked_test_images"]) for m in known})
    dropped = sum(1 for m in known if m.get("data_leaked_test_images_dropped", 0) > 0)
    scored = sum(1 for m in known if m["data_leaked_test_images"] - m.get("data_leaked_test_images_dropped", 0) > 0)
    text = "leaked test images (identical pixels to a train/val image): "
    if leaked == [0]:
        text += "none"
    else:
        text += (
            f"{' / '.join(map(str, leaked))} per run; scored in {scored} run(s), "
            f"dropped before scoring (leaks: drop_test) in {dropped} run(s)"
        )
    if len(known) < len(records):
        text += f"; not recorded by {len(records) - len(known)} run(s)"
    return text


def summarize(records: list[RunRecord]) -> tuple[list[str], list[str], dict, dict]:
    """Cells, metric names, per-seed values ``values[cell][metric]`` and ``summary[cell][metric]``.

    The metrics are every ``test_<metric>`` and the robustness summaries (``robust_mean_<metric>``,
    ``robust_relative_drop_<metric>``, ``robust_worst_<metric>``) that some run logged; a run without
    one counts as nan there and is left out of that metric's mean (``n`` says how many had it).

    A t-interval over few seeds can reach past what a metric can be (a balanced accuracy above 1):
    it is clipped to the metric's range, as a reader would.
    """
    cells = sorted({r.cell for r in records})
    metric_names = sorted(
        {k for r in records for k in r.metrics if k.startswith("test_") and not k.endswith(("_ci_low", "_ci_high"))}
    )
    main = [f"test_{m}" for m in MAIN_METRICS if f"test_{m}" in metric_names]
    robust = sorted(
        {
            k
            for r in records
            for k in r.metrics
            if ROBUST_SUMMARY.fullmatch(k) and not k.endswith(("_ci_low", "_ci_high"))
        }
    )
    robust = [m for m in ROBUST_COLUMNS if m in robust] + [m for m in robust if m not in ROBUST_COLUMNS]
    ordered = main + [m for m in metric_names if m not in main] + robust
    values: dict = defaultdict(lambda: defaultdict(list))
    for r in records:
        for m in ordered:
            values[r.cell][m].append(r.metrics.get(m, math.nan))
    summary = {c: {m: stats.mean_sd_ci(values[c][m]) for m in ordered} for c in cells}
    single = {r.cell: r for r in records if sum(x.cell == r.cell for x in records) == 1}
    for c in cells:
        for m in ordered:
            bounds, s = metric_range(m), summary[c][m]
            s["ci_source"] = "seeds"
            run = single.get(c)
            if run is not None and f"{m}_ci_low" in run.metrics:  # one seed: its bootstrap CI over test images
                s["ci_low"], s["ci_high"] = run.metrics[f"{m}_ci_low"], run.metrics[f"{m}_ci_high"]
                s["ci_source"] = "bootstrap over test images (one seed)"
            if bounds is not None and math.isfinite(s["ci_low"]):
                s["ci_low"], s["ci_high"] = max(bounds[0], s["ci_low"]), min(bounds[1], s["ci_high"])
    return cells, ordered, values, summary


# Compute cost of a cell: (column, how a run's value is read); seconds and MB as the runs logged them.
COST_COLUMNS = (
    ("run wall time (min)", lambda r: (r.end_time - r.start_time) / 60000 if r.end_time > r.start_time else math.nan),
    ("images generated", lambda r: r.metrics.get("oversample_synthetic_total", math.nan)),
    ("generator fit (s)", lambda r: r.metrics.get("oversample_fit_seconds", math.nan)),
    ("sampling (s)", lambda r: r.metrics.get("oversample_sample_seconds", math.nan)),
    (
        "geometric copies (s)",
        lambda r: r.metrics.get(
            "oversample_augmented_copies_seconds", r.metrics.get("oversample_random_copies_seconds", math.nan)
        ),
    ),
    (
        "oversampling peak memory (MB)",
        lambda r: max(
            [v for k, v in r.metrics.items() if k.startswith("oversample_") and k.endswith("_peak_memory_mb")],
            default=math.nan,
        ),
    ),
)


def cost_rows(cells: list[str], by_cell: dict) -> list[list[str]]:
    """Per cell, the mean over seeds of what its runs cost (wall time of the whole bundle run; the
    oversampling stage's images, seconds and peak memory; a generator fit read from the cache
    reports the cost of the fit that made it). Empty when no run oversampled."""
    if not any(k.startswith("oversample_") for c in cells for r in by_cell[c] for k in r.metrics):
        return []
    rows = []
    for cell in cells:
        row = [cell, str(len(by_cell[cell]))]
        for _, read in COST_COLUMNS:
            vals = [v for v in (read(r) for r in by_cell[cell]) if v is not None and math.isfinite(v)]
            row.append(_f(float(np.mean(vals)), 1) if vals else "–")
        rows.append(row)
    return rows


def per_corruption(cells: list[str], by_cell: dict) -> dict:
    """``{cell: {corruption: mean_sd_ci}}`` of the runs' ``robust_balanced_accuracy_<corruption>_mean``
    (each run's mean over the severities it scored), over seeds; corruptions in name order. Empty
    when no run was scored under corruption."""
    names = sorted(
        {m.group(1) for c in cells for r in by_cell[c] for m in map(PER_CORRUPTION.fullmatch, r.metrics) if m}
    )
    if not names:
        return {}
    return {
        c: {
            n: stats.mean_sd_ci([r.metrics.get(f"robust_balanced_accuracy_{n}_mean", math.nan) for r in by_cell[c]])
            for n in names
        }
        for c in cells
    }


def corruption_rows(table: dict, by_cell: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the strategy x corruption table (:func:`per_corruption`), the worst
    corruption of each strategy (lowest mean) last."""
    if not table:
        return [], []
    names = list(next(iter(table.values())))
    rows = []
    for cell, by_name in table.items():
        means = {n: s["mean"] for n, s in by_name.items() if s["n"]}
        worst = min(means, key=means.get) if means else "n/a"
        rows.append(
            [cell, str(len(by_cell[cell]))]
            + [f"{_f(s['mean'])} ± {_f(s['sd'])}" if s["n"] else "n/a" for s in by_name.values()]
            + [worst]
        )
    return ["strategy", "seeds", *names, "worst"], rows


def _baseline_cell(cell_rec: RunRecord, baselines: dict[str, RunRecord]) -> str | None:
    settings = cell_rec.settings
    for cell, rec in sorted(baselines.items()):
        if all(settings.get(k) == v for k, v in rec.axes.items()):
            return cell
    return None


def _blocks(pairs: list[tuple[Predictions, Predictions]], what: str):
    """Align each seed's two prediction sets on the test images they share.

    Returns ``make(extract) -> blocks`` for :mod:`~medaug.pipelines.evaluate.stats` (``extract`` picks an
    (N,) array from a :class:`Predictions`) and the number of images per seed. When all seeds share
    the same images they form one block, so resampling and DeLong's covariance treat them jointly.
    """
    aligned = []
    for a, b in pairs:
        common = sorted(set(a.keys) & set(b.keys))
        ia = np.array([a.index[k] for k in common], dtype=np.int64)
        ib = np.array([b.index[k] for k in common], dtype=np.int64)
        if not np.array_equal(a.y_true[ia], b.y_true[ib]):
            raise ReportError(f"{what}: the same test image carries different labels in the two runs")
        aligned.append((tuple(common), a.y_true[ia], a, ia, b, ib))
    shared = len({x[0] for x in aligned}) == 1

    def make(extract) -> list:
        if shared:
            y = aligned[0][1]
            return [
                (
                    y,
                    np.stack([extract(a)[ia] for _, _, a, ia, _, _ in aligned]),
                    np.stack([extract(b)[ib] for _, _, _, _, b, ib in aligned]),
                )
            ]
        return [(y, extract(a)[ia][None], extract(b)[ib][None]) for _, y, a, ia, b, ib in aligned]

    return make, shared, int(round(np.mean([len(x[0]) for x in aligned])))


def compare(
    a_runs: list[RunRecord], b_runs: list[RunRecord], preds: dict[str, Predictions], n_bootstrap: int, what: str
) -> dict:
    """Paired tests of runs ``a`` against ``b`` over their common seeds."""
    by_seed_b = {r.seed: r for r in b_runs}
    pairs = [
        (preds[r.run_id], preds[by_seed_b[r.seed].run_id])
        for r in sorted(a_runs, key=lambda r: r.seed)
        if r.seed in by_seed_b
    ]
    seeds = sorted(r.seed for r in a_runs if r.seed in by_seed_b)
    if not pairs:
        return {"seeds": [], "note": "no seed in common with the baseline"}
    make, shared, n_images = _blocks(pairs, what)
    k = len(pairs[0][0].class_names)
    positive = pairs[0][0].positive
    labels = make(lambda p: p.y_pred)
    out = {"seeds": seeds, "images": n_images, "shared_images": shared}
    for metric in ("balanced_accuracy", "youden"):
        out[metric] = stats.paired_bootstrap(
            labels, metric, num_classes=k, positive_class=positive, n_resamples=n_bootstrap, seed=0
        )
    correct_a = np.concatenate([(a == y[None]).ravel() for y, a, _ in labels])
    correct_b = np.concatenate([(b == y[None]).ravel() for y, _, b in labels])
    out["mcnemar"] = stats.mcnemar_test(correct_a, correct_b)
    if k == 2:
        y_binary = [((y == positive).astype(int), a, b) for y, a, b in make(lambda p: p.prob[:, positive])]
        try:
            out["auc"] = stats.delong_test(y_binary)
        except ValueError as err:
            out["auc"] = {"p": math.nan, "note": str(err)}
    else:
        out["auc"] = {"p": math.nan, "note": "DeLong on macro one-vs-rest AUC is not defined here (multi-class)"}
    out.update(compare_robustness(a_runs, b_runs))
    return out


def compare_robustness(a_runs: list[RunRecord], b_runs: list[RunRecord]) -> dict:
    """Paired t-tests over the common seeds of the :data:`ROBUST_TESTS` that both sides logged (on
    at least one seed); empty when either side has no robustness metrics."""
    by_seed_b = {r.seed: r for r in b_runs}
    out = {}
    for name in ROBUST_TESTS:
        pairs = [
            (r.metrics[name], by_seed_b[r.seed].metrics[name])
            for r in sorted(a_runs, key=lambda r: r.seed)
            if r.seed in by_seed_b and name in r.metrics and name in by_seed_b[r.seed].metrics
        ]
        if pairs:
            out[name] = stats.paired_seed_test([a for a, _ in pairs], [b for _, b in pairs])
    return out


# ------------------------------------------------------------------------------------ rendering


def _f(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    v = float(value)
    return "n/a" if not math.isfinite(v) else f"{v:.{digits}f}"


def _p(value) -> str:
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    v = float(value)
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def _cell_text(s: dict, of: int | None = None) -> str:
    """``mean ± sd [CI]``; with ``of`` (the cell's seeds), how many had the metric when not all did."""
    if s["n"] == 0:
        return "n/a"
    text = f"{_f(s['mean'])} ± {_f(s['sd'])}"
    text += f" [{_f(s['ci_low'])}, {_f(s['ci_high'])}]" if math.isfinite(s["ci_low"]) else ""
    return text + (f" ({s['n']} of {of} seeds)" if of is not None and s["n"] < of else "")


def _delta_cells(t: dict, fallback: str = "n/a") -> list[str]:
    if "diff" not in t:
        return [t.get("note", fallback), "n/a"]
    interval = f" [{_f(t['ci_low'])}, {_f(t['ci_high'])}]" if math.isfinite(t["ci_low"]) else ""
    return [f"{_f(t['diff'], 3)}{interval}", f"{_p(t['p'])} ({_p(t.get('p_holm'))})"]


def _comparison_row(c: dict, robust: bool = False) -> list[str]:
    """One row of the comparison table; ``robust``: with the :data:`ROBUST_TESTS` columns."""
    header = comparison_header(robust)
    r = c["result"]
    row = [c["cell"], c["baseline_cell"], ", ".join(map(str, r.get("seeds", []))), str(r.get("images", "n/a"))]
    row.append(report_flags.comparison_text(c["flags"]))
    if not c["flags"]["verdict"]:  # not an answer: no Δ, p or Holm to be read as one
        return row + ["–"] * (len(header) - len(row))
    for test in ("balanced_accuracy", "youden", "auc"):
        row += _delta_cells(r.get(test, {}), r.get("note", "n/a"))
    m = r.get("mcnemar", {})
    row += [f"{m.get('b', 'n/a')}/{m.get('c', 'n/a')}", f"{_p(m.get('p'))} ({_p(m.get('p_holm'))})"]
    if robust:
        for test in ROBUST_TESTS:
            t = r.get(test, {})
            if "note" in t:  # fewer than two seeds scored under corruption on both sides
                cells = [t["note"], "n/a"]
            else:
                cells = _delta_cells(t, "not scored under corruption by both")
            if "diff" in t and "note" not in t and t["seeds"] < len(r.get("seeds", [])):  # some runs not scored
                cells[0] += f" ({t['seeds']} seeds)"
            row += cells
    return row


COMPARISON_HEADER = [
    "strategy",
    "baseline",
    "seeds",
    "images",
    "sanity",
    "Δ balanced accuracy [95% CI]",
    "p (Holm)",
    "Δ Youden's J [95% CI]",
    "p (Holm)",
    "Δ AUC [95% CI] (DeLong)",
    "p (Holm)",
    "McNemar b/c",
    "p (Holm)",
]


def comparison_header(robust: bool = False) -> list[str]:
    """:data:`COMPARISON_HEADER`, with the robustness tests' columns when some run was scored under corruption."""
    extra = [col for test in ROBUST_TESTS for col in (ROBUST_TEST_TITLES[test], "p (Holm)")] if robust else []
    return COMPARISON_HEADER + extra


METHODS = (
    "Each row is a strategy with its other grid settings (a cell), over the seeds it ran. "
    "Mean ± sample sd over seeds; [95% CI] is the Student-t interval of the mean over seeds (spread of training "
    "with different seeds), clipped to the metric's range; with a single seed it is that run's 95% stratified "
    "bootstrap interval over the test images. Paired comparisons use the same seeds and the same real test "
    "images: balanced accuracy and Youden's J by a paired, class-stratified bootstrap of the test images "
    "(difference of means over seeds, percentile CI, null-centred p); AUC by DeLong's test of the mean AUC "
    "difference with the joint covariance of all seeds' AUCs (DeLong et al. 1988; Sun & Xu 2014); McNemar's test "
    "on per-image correctness pooled over seeds (b: only the strategy right, c: only the baseline right; exact "
    "binomial below 25 discordant pairs). p-values in parentheses are Holm-adjusted across the comparisons of the "
    "report (marked ones included), separately per test. The paired tests measure uncertainty over test images "
    "for these trained models; seed-to-seed spread is in the first table."
)
ROBUST_METHODS = (
    "Robustness (runs that scored evaluate#robustness): balanced accuracy under corruption is each run's mean "
    "over every corruption x severity of its suite, the relative drop (clean − corrupted) / clean; both with mean "
    "± sd and the t-interval over seeds (one seed: the run's bootstrap interval over test images). Their "
    "comparisons are paired t-tests over the common seeds (the runs log no per-image predictions under "
    "corruption, so the inference is over training seeds), Holm-adjusted across the comparisons per metric; a "
    "negative Δ relative drop means the strategy loses less than the baseline under corruption. The per-corruption "
    "table gives each corruption's balanced accuracy, averaged over its severities and the seeds."
)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(esc, r)) + " |" for r in rows])


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _render(ctx: dict, out: Path) -> tuple[Path, Path]:
    sections = [
        ("Test metrics by strategy", "mean ± sd over seeds [95% CI]", ctx["summary_header"], ctx["summary_rows"]),
        (
            f"Paired comparisons against {ctx['baseline']!r}",
            "difference strategy − baseline",
            ctx.get("comparison_header", COMPARISON_HEADER),
            ctx["comparison_rows"],
        ),
        (
            "All test metrics",
            "mean ± sd over seeds [95% CI]",
            ["metric", "strategy", "seeds", "mean ± sd [95% CI]"],
            ctx["all_rows"],
        ),
    ]
    if ctx.get("corruption_rows"):
        sections.insert(
            1,
            (
                "Balanced accuracy by corruption",
                "mean ± sd over seeds of each run's mean over the corruption's severities",
                ctx["corruption_header"],
                ctx["corruption_rows"],
            ),
        )
    if ctx.get("cost_rows"):
        sections.insert(
            1,
            (
                "Compute cost",
                "mean over seeds; peak memory: CUDA max allocated on a GPU, the process's peak resident set on a CPU",
                ["strategy", "seeds", *(name for name, _ in COST_COLUMNS)],
                ctx["cost_rows"],
            ),
        )
    intro = [
        f"Experiment `{ctx['experiment']}`; {ctx['source']}; {ctx['n_runs']} finished runs in "
        f"{len(ctx['cells'])} cells; baseline `{ctx['baseline']}`; {ctx['task']}; "
        f"tracking URI `{ctx['tracking_uri']}`; "
        f"written {ctx['written']}."
    ]
    md = [f"# Study report: {ctx['experiment']}", "", *intro, ""]
    md += [f"- {n}" for n in ctx["notes"]] + ([""] if ctx["notes"] else [])
    md += [f"**Sanity marks.** {ctx['sanity']} {report_flags.LEGEND}", ""]
    for title, sub, header, rows in sections:
        md += [f"## {title}", "", f"_{sub}_", "", _md_table(header, rows) if rows else "(none)", ""]
    methods = METHODS + (" " + ROBUST_METHODS if ctx.get("robust") else "")
    md += (
        ["## Figures", ""] + [f"![{cap}]({p.name})" for cap, p in ctx["figures"]] + ["", "## Methods", "", methods, ""]
    )
    md_path = _write_text(out / "report.md", "\n".join(md))

    figures = "".join(
        f"<figure><img alt='{html.escape(cap)}' "
        f"src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}'>"
        f"<figcaption>{html.escape(cap)}</figcaption></figure>"
        for cap, p in ctx["figures"]
    )
    body = [
        f"<h1>Study report: {html.escape(ctx['experiment'])}</h1>",
        f"<p>{html.escape(intro[0].replace('`', ''))}</p>",
    ]
    if ctx["notes"]:
        body.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in ctx["notes"]) + "</ul>")
    body.append(f"<p><strong>Sanity marks.</strong> {html.escape(ctx['sanity'] + ' ' + report_flags.LEGEND)}</p>")
    for title, sub, header, rows in sections:
        body += [
            f"<h2>{html.escape(title)}</h2><p><em>{html.escape(sub)}</em></p>",
            _html_table(header, rows) if rows else "<p>(none)</p>",
        ]
    body += ["<h2>Figures</h2>", figures, "<h2>Methods</h2>", f"<p>{html.escape(methods)}</p>"]
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 6px}"
        "th{background:#f3f3f3}figure{display:inline-block;margin:1em}img{max-width:100%}"
    )
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Study report: {html.escape(ctx['experiment'])}"
        f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>"
    )
    return _write_text(out / "report.html", page), md_path


def _sanity_line(flags: dict, comparisons: list[dict], min_seeds: int, min_epochs: int) -> str:
    withheld = sum(not c["flags"]["verdict"] for c in comparisons)
    marked = sum(f.mark != report_flags.OK for f in flags.values())
    return (
        f"Protocol: at least {min_seeds} seeds per cell and {min_epochs} epochs per run, no smoke runs; "
        f"{marked} of {len(flags)} cells marked, {withheld} of {len(comparisons)} comparisons not an answer."
    )


# ------------------------------------------------------------------------------------ entry point


def write_study_report(
    experiment: str,
    baseline: str | None = None,
    parent_run_id: str | None = None,
    out_dir: str | os.PathLike | None = None,
    tracking_uri: str | None = None,
    runs_dir: str | os.PathLike | None = None,
    n_bootstrap: int = 2000,
    log_to_mlflow: bool = True,
    min_seeds: int = report_flags.MIN_SEEDS,
    min_epochs: int = report_flags.MIN_EPOCHS,
) -> dict:
    """Build the report of an experiment (or of one study in it) and log it to MLflow; returns paths
    and counts. See the module docstring for what it holds; ``min_seeds`` and ``min_epochs`` are the
    protocol the sanity marks hold the runs to (:mod:`.report_flags`)."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per small CSV is noise
    uri, folder = resolve_tracking_uri(tracking_uri, runs_dir, experiment)
    client = mlflow.MlflowClient(tracking_uri=uri)
    parent, records, notes = collect_runs(client, experiment, parent_run_id)
    notes.append(leak_note(records))
    parent_tags = parent.data.tags if parent is not None else {}
    strategies = sorted({r.strategy for r in records})
    baseline = baseline or parent_tags.get("medaug.baseline") or ("none" if "none" in strategies else strategies[0])
    if baseline not in strategies:
        raise ReportError(f"--baseline: {baseline!r} is none of the strategies that ran: {strategies}")
    tag = parent.info.run_id[:8] if parent is not None else time.strftime("%Y%m%d-%H%M%S")
    if out_dir:
        out = Path(out_dir)
    else:
        out = (folder / "reports" if folder is not None else Path("reports")) / f"{experiment}-{tag}"
    out.mkdir(parents=True, exist_ok=True)

    cells, metric_names, values, summary = summarize(records)
    by_cell: dict[str, list[RunRecord]] = defaultdict(list)
    for r in records:
        by_cell[r.cell].append(r)
    with tempfile.TemporaryDirectory(prefix="medaug-report-") as scratch:
        preds = {r.run_id: load_predictions(client, r.run_id, Path(scratch)) for r in records}
    health = {
        r.run_id: report_flags.run_health(p.y_true, p.y_pred, p.prob, p.class_names, p.positive)
        for r, p in ((r, preds[r.run_id]) for r in records)
    }
    flags = {
        c: report_flags.cell_flags(
            [r.setup for r in runs], [health[r.run_id] for r in runs], min_seeds=min_seeds, min_epochs=min_epochs
        )
        for c, runs in by_cell.items()
    }
    baselines = {c: runs[0] for c, runs in by_cell.items() if runs[0].strategy == baseline}
    comparisons = []
    for cell in cells:
        first = by_cell[cell][0]
        if first.strategy == baseline:
            continue
        base = _baseline_cell(first, baselines)
        if base is None:
            notes.append(f"{cell}: no baseline cell with the same settings; not tested")
            continue
        result = compare(by_cell[cell], by_cell[base], preds, n_bootstrap, f"{cell} vs {base}")
        marks = report_flags.comparison_flags(
            flags[cell],
            flags[base],
            [r.setup for r in by_cell[cell]],
            [r.setup for r in by_cell[base]],
            len(result["seeds"]),
            min_seeds=min_seeds,
            min_epochs=min_epochs,
        )
        comparisons.append({"cell": cell, "baseline_cell": base, "result": result, "flags": marks})
    for test in (*TESTS, *ROBUST_TESTS):
        ps = [c["result"].get(test, {}).get("p", math.nan) for c in comparisons]
        for c, adjusted in zip(comparisons, stats.holm(ps)):
            if test in c["result"]:
                c["result"][test]["p_holm"] = adjusted

    main = [m for m in metric_names if m.startswith("test_") and m[len("test_") :] in MAIN_METRICS]
    robust_columns = [m for m in ROBUST_COLUMNS if m in metric_names]
    corruption_table = per_corruption(cells, by_cell)
    figures = [
        (
            "Test metrics by strategy (seeds, mean, 95% CI)",
            report_plots.plot_metrics_by_strategy(
                cells,
                main[:6],
                values,
                summary,
                out / "metrics_by_strategy.png",
                baseline=next(iter(sorted(baselines)), None),
            ),
        )
    ]
    amount_key = parent_tags.get(AMOUNT_KEY_TAG) or None
    if amount_key:
        series: dict = defaultdict(list)
        for cell in cells:
            rec = by_cell[cell][0]
            amount = rec.settings.get(amount_key)
            if isinstance(amount, (int, float)):
                others = ", ".join(f"{k}={v}" for k, v in rec.axes.items() if k != amount_key)
                label = rec.strategy + (f" ({others})" if others else "")
                for m in ("test_balanced_accuracy", "test_auc"):
                    s = summary[cell].get(m)
                    if s:
                        series[f"{label}|{m}"].append((float(amount), s["mean"], s["ci_low"], s["ci_high"]))
        if series:
            figures.append(
                (
                    "Amount sweep",
                    report_plots.plot_amount_sweep(
                        series, ["test_balanced_accuracy", "test_auc"], out / "amount_sweep.png", amount_key=amount_key
                    ),
                )
            )
    quality_names = sorted({k for r in records for k in r.metrics if "fid" in k.lower()})
    quality = None
    if quality_names and comparisons:
        q = quality_names[0]
        points = []
        for c in comparisons:
            qs = stats.mean_sd_ci([r.metrics.get(q, math.nan) for r in by_cell[c["cell"]]])["mean"]
            gain = c["result"].get("balanced_accuracy", {}).get("diff", math.nan)
            points.append((c["cell"], qs, gain))
        path, quality = report_plots.plot_quality_vs_gain(
            points, out / "quality_vs_gain.png", quality=q, gain="Δ balanced accuracy vs baseline"
        )
        quality["metric"] = q
        figures.append((f"Image quality ({q}) vs gain in balanced accuracy", path))
    if robust_columns and "test_balanced_accuracy" in metric_names:
        figures.append(
            (
                "Balanced accuracy under corruption vs clean (mean over seeds, 95% CI)",
                report_plots.plot_robust_vs_clean(
                    cells,
                    summary,
                    out / "robust_vs_clean.png",
                    clean="test_balanced_accuracy",
                    robust="robust_mean_balanced_accuracy",
                ),
            )
        )
    for i, cell in enumerate(cells):
        runs = by_cell[cell]
        p0 = preds[runs[0].run_id]
        y = np.concatenate([preds[r.run_id].y_true for r in runs])
        yp = np.concatenate([preds[r.run_id].y_pred for r in runs])
        figures.append(
            (
                f"Confusion matrix: {cell}",
                plots.plot_confusion_matrix(
                    y, yp, p0.class_names, out / f"confusion_{i:02d}.png", title=f"{cell}: {len(runs)} seed(s) summed"
                ),
            )
        )

    summary_header = ["strategy", "seeds", "sanity"] + [m[len("test_") :] for m in main]
    summary_header += [ROBUST_COLUMNS[m] for m in robust_columns]
    summary_rows = [
        [c, str(len(by_cell[c])), flags[c].text()]
        + [_cell_text(summary[c][m]) for m in main]
        + [_cell_text(summary[c][m], of=len(by_cell[c])) for m in robust_columns]
        for c in cells
    ]
    first = preds[records[0].run_id]
    repeated = report_flags.redundant_binary_metrics(metric_names, first.class_names, first.positive)
    all_rows = [
        [m, c, str(summary[c][m]["n"]), _cell_text(summary[c][m])]
        for m in metric_names
        if m not in repeated
        for c in cells
        if summary[c][m]["n"] or not m.startswith("robust_")  # cells not scored under corruption: no row
    ]
    source = (
        f"study parent run `{parent.info.run_id}` ({parent.info.run_name})"
        if parent is not None
        else "all finished runs of the experiment"
    )
    task = (
        f"classes {', '.join(first.class_names)}"
        + (f" (positive: {first.class_names[first.positive]})" if len(first.class_names) == 2 else "")
        + f"; {len(first.keys)} test images per run"
    )
    ctx = {
        "experiment": experiment,
        "source": source,
        "task": task,
        "n_runs": len(records),
        "cells": cells,
        "baseline": baseline,
        "tracking_uri": uri,
        "written": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "notes": notes,
        "summary_header": summary_header,
        "summary_rows": summary_rows,
        "all_rows": all_rows,
        "comparison_header": comparison_header(bool(robust_columns)),
        "comparison_rows": [_comparison_row(c, bool(robust_columns)) for c in comparisons],
        "robust": bool(robust_columns),
        **dict(zip(("corruption_header", "corruption_rows"), corruption_rows(corruption_table, by_cell))),
        "figures": figures,
        "cost_rows": cost_rows(cells, by_cell),
        "sanity": _sanity_line(flags, comparisons, min_seeds, min_epochs),
    }
    html_path, md_path = _render(ctx, out)
    data = {
        "experiment": experiment,
        "parent_run_id": parent.info.run_id if parent is not None else None,
        "baseline": baseline,
        "runs": [r.__dict__ for r in records],
        "summary": summary,
        "comparisons": comparisons,
        "quality_vs_gain": quality,
        "robustness": {"per_corruption": corruption_table} if corruption_table else None,
        "notes": notes,
        "sanity": {
            "min_seeds": min_seeds,
            "min_epochs": min_epochs,
            "cells": {c: {"mark": f.mark, "setup": f.setup, "health": f.health} for c, f in flags.items()},
            "runs": health,
        },
    }
    json_path = write_json_atomic(out / "report.json", data)
    result = {
        "html": html_path,
        "markdown": md_path,
        "json": json_path,
        "runs": len(records),
        "cells": len(cells),
        "comparisons": len(comparisons),
        "not_an_answer": sum(not c["flags"]["verdict"] for c in comparisons),
        "baseline": baseline,
        "out": out,
        "logged_to": None,
    }
    if log_to_mlflow:
        target = parent.info.run_id if parent is not None else None
        if target is None:
            exp = client.get_experiment_by_name(experiment)
            run = client.create_run(
                exp.experiment_id, run_name=f"report-{tag}", tags={ROLE_TAG: "report", STAGE_TAG: "report"}
            )
            target = run.info.run_id
        for path in [html_path, md_path, json_path, *(p for _, p in figures)]:
            client.log_artifact(target, str(path), "report")
        if parent is None:
            client.set_terminated(target, "FINISHED")
        result["logged_to"] = target
    return result


__all__ = ["ReportError", "write_study_report", "collect_runs", "summarize", "compare", "load_predictions"]
