"""Honest rebalancing baselines on the shipped MedMNIST data, through the default bundle.

Grid: BreastMNIST 28 and 64 px and PneumoniaMNIST 28 px x (full train split, minority class cut to
25% of its train images) x rebalance (none, class_weight, oversample) x seeds. Every model is one
``python -m monai.bundle run`` of ``bundles/imbalance_baselines`` (so it is also an MLflow run, in
``benchmarks/results/tmp/mlflow.db``), scored on the untouched official test split.

Writes ``benchmarks/results/baselines.json`` and ``baselines.md`` (mean ± sd over seeds, with the
MedMNIST v2 ResNet-18 (28 px) reference beside it). Run with ``make bench``; takes about an hour on
2 CPU cores with the defaults. ``--quick`` runs one seed of a few cells to check the script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "imbalance_baselines"
RESULTS = REPO / "benchmarks" / "results"

DATASETS = {
    "breastmnist_28": {
        "file": "breastmnist.npz",
        "size": 28,
        "classes": ["malignant", "normal_benign"],
        "positive": "malignant",
        "minority": 0,
        "reference": {"auc": 0.901, "accuracy": 0.863},
    },
    "breastmnist_64": {
        "file": "breastmnist_64.npz",
        "size": 64,
        "classes": ["malignant", "normal_benign"],
        "positive": "malignant",
        "minority": 0,
        "reference": {"auc": 0.901, "accuracy": 0.863},
    },
    "pneumoniamnist_28": {
        "file": "pneumoniamnist.npz",
        "size": 28,
        "classes": ["normal", "pneumonia"],
        "positive": "pneumonia",
        "minority": 0,
        "reference": {"auc": 0.944, "accuracy": 0.854},
    },
}
METHODS = ("none", "class_weight", "oversample")
CUTS = {"full": None, "minority_25pct": 0.25}
REPORTED = ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1", "mcc")


def run_bundle(overrides: dict, out_dir: Path, run_name: str) -> tuple[dict, float]:
    """One ``python -m monai.bundle run`` of the default bundle's train.json with ``overrides``, its
    MLflow store in ``out_dir``; returns the run's metrics.json and its wall time (benchmarks/pretraining.py
    runs its models through this too)."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "train.json")]
    cmd += ["--bundle_root", str(BUNDLE)]
    for key, value in overrides.items():
        cmd += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out_dir / 'mlflow.db'}"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{run_name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads((out_dir / run_name / "metrics.json").read_text()), seconds


def run_one(dataset: str, cut: str, method: str, seed: int, args, out_dir: Path) -> dict:
    spec = DATASETS[dataset]
    run_name = f"{dataset}-{cut}-{method}-seed{seed}"
    overrides = {
        "dataset_dir": str(REPO / "data" / spec["file"]),
        "class_names": spec["classes"],
        "positive_class": spec["positive"],
        "image_size": [spec["size"], spec["size"]],
        "classifier": args.classifier,
        "rebalance#method": method,
        "seed": seed,
        "max_epochs": args.max_epochs,
        "early_stop_patience": args.patience,
        "batch_size": args.batch_size,
        "run_name": run_name,
        "output_dir": str(out_dir),
        "study_data#progress": False,
    }
    if CUTS[cut] is not None:
        overrides["imbalance"] = {"class": spec["minority"], "keep_fraction": CUTS[cut]}
    results, seconds = run_bundle(overrides, out_dir, run_name)
    return {
        "dataset": dataset,
        "train": cut,
        "rebalance": method,
        "seed": seed,
        "seconds": round(seconds, 1),
        "metrics": {k: results["metrics"][k] for k in REPORTED},
        "ci95": {k: results["ci95"][k] for k in REPORTED},
    }


def runs_from_store(out_dir: Path) -> list[dict]:
    """Rebuild the per-model records from the finished MLflow runs of an earlier (possibly
    interrupted) benchmark in ``out_dir``: metrics from each run's metrics.json, time from MLflow's
    start and end times (without the interpreter start-up the live timing includes)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("imbalance_baselines")
    runs = []
    for run in client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'"):
        name = run.info.run_name
        dataset, rest = next((d, name[len(d) + 1 :]) for d in DATASETS if name.startswith(d + "-"))
        cut = next(c for c in CUTS if rest.startswith(c + "-"))
        results = json.loads((out_dir / name / "metrics.json").read_text())
        runs.append(
            {
                "dataset": dataset,
                "train": cut,
                "rebalance": run.data.tags["strategy"],
                "seed": int(run.data.tags["seed"]),
                "seconds": round((run.info.end_time - run.info.start_time) / 1000, 1),
                "metrics": {k: results["metrics"][k] for k in REPORTED},
                "ci95": {k: results["ci95"][k] for k in REPORTED},
            }
        )
    order = {(d, c, m): i for i, (d, c, m) in enumerate((d, c, m) for d in DATASETS for c in CUTS for m in METHODS)}
    return sorted(runs, key=lambda r: (order[(r["dataset"], r["train"], r["rebalance"])], r["seed"]))


def summarise(runs: list[dict]) -> list[dict]:
    cells = {}
    for run in runs:
        cells.setdefault((run["dataset"], run["train"], run["rebalance"]), []).append(run)
    rows = []
    for (dataset, cut, method), group in cells.items():
        row = {
            "dataset": dataset,
            "train": cut,
            "rebalance": method,
            "seeds": len(group),
            "seconds_per_model": round(float(np.mean([r["seconds"] for r in group])), 1),
        }
        for name in REPORTED:
            values = np.array([r["metrics"][name] for r in group], dtype=float)
            row[name] = {
                "mean": round(float(np.nanmean(values)), 4),
                "sd": round(float(np.nanstd(values, ddof=1)), 4) if len(values) > 1 else 0.0,
            }
        rows.append(row)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Rebalancing baselines on MedMNIST (default bundle, CPU)",
        "",
        f"Network `{meta['classifier']}`, up to {meta['max_epochs']} epochs (early stop patience {meta['patience']}, "
        f"best epoch by validation balanced accuracy), {meta['seeds']} seeds, official test split; "
        f"{meta['cpu_threads']} CPU threads ({meta['machine']}). Mean ± sd over seeds. "
        "'minority_25pct': the minority class (malignant / normal) cut to 25% of its train images, seeded; "
        "val and test untouched. MedMNIST v2 reference: ResNet-18 (28 px), full data.",
        "",
        "| dataset | train | rebalance | test AUC | test ACC | balanced ACC | sensitivity | specificity | MCC "
        "| s/model | reference AUC / ACC |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda m: f"{m['mean']:.3f} ± {m['sd']:.3f}"  # noqa: E731
    for row in rows:
        ref = DATASETS[row["dataset"]]["reference"]
        lines.append(
            f"| {row['dataset']} | {row['train']} | {row['rebalance']} | {fmt(row['auc'])} | {fmt(row['accuracy'])} "
            f"| {fmt(row['balanced_accuracy'])} | {fmt(row['sensitivity'])} | {fmt(row['specificity'])} "
            f"| {fmt(row['mcc'])} | {row['seconds_per_model']:.0f} | {ref['auc']:.3f} / {ref['accuracy']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--cuts", nargs="*", default=list(CUTS), choices=list(CUTS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--classifier", default="small_cnn")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="one seed, BreastMNIST 28 only, 5 epochs")
    parser.add_argument("--name", default="baselines", help="results file stem")
    parser.add_argument("--runs-dir", type=Path, default=RESULTS / "tmp", help="run folders and MLflow store")
    parser.add_argument(
        "--from-runs",
        action="store_true",
        help="do not train: rebuild the tables from the finished runs in benchmarks/results/tmp",
    )
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.seeds, args.max_epochs, args.name = ["breastmnist_28"], 1, 5, f"{args.name}_quick"
    out_dir = args.runs_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = [(d, c, m, s) for d in args.datasets for c in args.cuts for m in args.methods for s in range(args.seeds)]
    runs = runs_from_store(out_dir) if args.from_runs else []
    for i, (dataset, cut, method, seed) in enumerate([] if args.from_runs else grid, 1):
        run = run_one(dataset, cut, method, seed, args, out_dir)
        runs.append(run)
        m = run["metrics"]
        print(
            f"[{i}/{len(grid)}] {dataset:18s} {cut:15s} {method:13s} seed {seed}: AUC {m['auc']:.3f} "
            f"ACC {m['accuracy']:.3f} BA {m['balanced_accuracy']:.3f} ({run['seconds']:.0f} s)",
            flush=True,
        )
    meta = {
        "runs": len(runs),
        "classifier": args.classifier,
        "timing": "from MLflow run start/end" if args.from_runs else "wall clock per process",
        "max_epochs": args.max_epochs,
        "patience": args.patience,
        "seeds": args.seeds,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    rows = summarise(runs)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"meta": meta, "summary": rows, "runs": runs}, indent=2))
    table = markdown(rows, meta)
    (RESULTS / f"{args.name}.md").write_text(table)
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
