"""Does the modality preset buy robustness? The issue-18 target, read from a physics_augmentation study.

Target (aimed at, measured): on each dataset the modality preset reduces the relative drop of test
balanced accuracy under the corruption suite (``robust_relative_drop_balanced_accuracy`` =
(clean - mean over corruption cells) / clean) by >= 30% relative to no augmentation, with p < 0.05
over >= 5 seeds (paired over seeds: the same seed's split, initialisation and corrupted test images
on both sides; :func:`medaug.pipelines.evaluate.stats.paired_seed_test`), at no more than 1 point of
clean balanced accuracy.

Reads the FINISHED child runs of the study's MLflow experiment (``medaug study run
bundles/physics_augmentation --seeds 5`` first; its report is ``medaug report``), one row per
dataset and strategy against ``none``, and writes ``benchmarks/results/robustness_target.{json,md}``.
Every strategy of the grid is listed, the target is judged for ``preset``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"

from medaug.pipelines.evaluate.stats import mean_sd_ci, paired_seed_test  # noqa: E402

CLEAN, ROBUST, DROP = (
    "test_balanced_accuracy",
    "robust_mean_balanced_accuracy",
    "robust_relative_drop_balanced_accuracy",
)


def load_runs(tracking_uri: str, experiment: str) -> dict:
    """``{(dataset, strategy): {seed: {metric: value}}}`` of the finished child runs."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"no MLflow experiment {experiment!r} in {tracking_uri}: run the study first")
    cells: dict = defaultdict(dict)
    for run in client.search_runs([found.experiment_id], "tags.`medaug.role` = 'child'", max_results=5000):
        if run.info.status != "FINISHED" or ROBUST not in run.data.metrics:
            continue
        axes = json.loads(run.data.tags.get("medaug.axes", "{}"))
        key = (axes.get("dataset", ""), run.data.tags["medaug.strategy"])
        cells[key][int(run.data.tags["medaug.seed"])] = {m: run.data.metrics[m] for m in (CLEAN, ROBUST, DROP)}
    return cells


def compare(cells: dict, baseline: str = "none", target: str = "preset") -> list[dict]:
    rows = []
    for dataset in sorted({d for d, _ in cells}):
        base = cells.get((dataset, baseline), {})
        for (d, strategy), runs in sorted(cells.items()):
            if d != dataset:
                continue
            seeds = sorted(set(runs) & set(base))
            row = {"dataset": dataset, "strategy": strategy, "seeds": len(runs)}
            for metric in (CLEAN, ROBUST, DROP):
                row[metric] = mean_sd_ci([runs[s][metric] for s in sorted(runs)])
            if strategy != baseline and seeds:
                drop = [runs[s][DROP] for s in seeds]
                drop_base = [base[s][DROP] for s in seeds]
                test = paired_seed_test(drop, drop_base)
                reduction = 1.0 - float(np.mean(drop)) / float(np.mean(drop_base)) if np.mean(drop_base) else math.nan
                clean_cost = float(np.mean([base[s][CLEAN] - runs[s][CLEAN] for s in seeds]))
                row["vs_baseline"] = {
                    "paired_seeds": len(seeds),
                    "drop_reduction": reduction,
                    "drop_diff": test,
                    "clean_cost": clean_cost,
                    "robust_diff": paired_seed_test([runs[s][ROBUST] for s in seeds], [base[s][ROBUST] for s in seeds]),
                }
                if strategy == target:
                    row["target_met"] = (
                        bool(reduction >= 0.30 and test["p"] < 0.05 and test["diff"] < 0 and clean_cost <= 0.01)
                        and len(seeds) >= 5
                    )
            rows.append(row)
    return rows


def _fmt(spread: dict) -> str:
    return f"{spread['mean']:.3f} ± {spread['sd']:.3f}"


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Robustness target: does the modality preset cut the drop under corruption? (physics_augmentation)",
        "",
        f"{meta['source']}; {meta['date']}. Clean: test balanced accuracy; corrupted: mean over the dataset's "
        "modality suite (every corruption x severity 1-5); drop: (clean - corrupted) / clean. Mean ± sd over "
        "seeds. Against `none`, paired over seeds: drop reduction = 1 - drop / drop(none), the paired t-test "
        "on the drop, clean cost = clean(none) - clean. Target: reduction >= 30%, p < 0.05, cost <= 0.01, "
        ">= 5 seeds.",
        "",
        "| dataset | strategy | seeds | clean BA | corrupted BA | relative drop | drop reduction vs none "
        "| Δ drop [95% CI] | p | clean cost | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        vs = row.get("vs_baseline")
        cells = ["", "", "", "", ""]
        if vs:
            d = vs["drop_diff"]
            cells = [
                f"{vs['drop_reduction']:.0%}",
                f"{d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]",
                f"{d['p']:.3f}" if math.isfinite(d["p"]) else "n/a",
                f"{vs['clean_cost']:+.3f}",
                ("met" if row["target_met"] else "missed") if "target_met" in row else "",
            ]
        lines.append(
            f"| {row['dataset']} | {row['strategy']} | {row['seeds']} | {_fmt(row[CLEAN])} | {_fmt(row[ROBUST])} "
            f"| {_fmt(row[DROP])} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=REPO / "bundles" / "physics_augmentation" / "runs",
        help="the study's output dir (its mlflow.db); default: the bundle's runs/",
    )
    parser.add_argument("--tracking-uri", help="an MLflow tracking URI instead of <runs-dir>/mlflow.db")
    parser.add_argument("--experiment", default="physics_augmentation")
    parser.add_argument("--name", default="robustness_target", help="results file stem")
    args = parser.parse_args()
    uri = args.tracking_uri or f"sqlite:///{args.runs_dir / 'mlflow.db'}"
    rows = compare(load_runs(uri, args.experiment))
    # the study's run folder is machine-local: the results name the experiment and study, not the path
    meta = {
        "source": f"MLflow experiment {args.experiment} (`medaug study run bundles/{args.experiment} --seeds 5`)",
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    table = markdown(rows, meta)
    (RESULTS / f"{args.name}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
