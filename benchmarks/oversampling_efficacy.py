"""Does generative oversampling earn its place? Every oversampling method against the honest
baselines, through the default bundle, on the shipped MedMNIST data with a rarer minority.

Grid: BreastMNIST 64 px and PneumoniaMNIST 28 px, the minority class (malignant / normal) cut to
25% of its train images (the bundle's ``imbalance`` section, seeded; val and test untouched) x
methods x seeds. Methods: ``none`` (plain cross-entropy), ``class_weight``, ``random`` (random
oversampling to balance) and the generative ``gan``, ``vae_interp``, ``ldm``, ``ldm_img2img``,
``hybrid``, each oversampling the minority to balance. The classifier, its training schedule and
the test split are the same for every method. Each model is one in-process run of
``bundles/imbalance_baselines`` (MONAI's ``monai.bundle.run``, so also an MLflow run in
``<runs-dir>/mlflow.db``); fitted generators are cached in ``<runs-dir>/oversample_cache`` (shared
by ``ldm``/``ldm_img2img`` and by ``hybrid``/``vae_interp``).

Resumable: each finished model leaves ``<runs-dir>/results/<run>.json``; a rerun skips those.
Writes ``benchmarks/results/oversampling_efficacy.json`` and ``.md``: per dataset and method, the
mean ± sd and 95% t-interval over seeds of test balanced accuracy, minority-class sensitivity and
AUC; synthetic-image quality (FID in domain features, k-NN precision/recall, near copies); and
the generator's fit + sample cost. ``--table-only`` rebuilds the tables from the cached results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BUNDLE = REPO / "bundles" / "imbalance_baselines"
RESULTS = REPO / "benchmarks" / "results"

DATASETS = {
    "breastmnist_64": {
        "file": "breastmnist_64.npz",
        "size": 64,
        "classes": ["malignant", "normal_benign"],
        "positive": "malignant",
        "minority": "malignant",
    },
    "pneumoniamnist_28": {
        "file": "pneumoniamnist.npz",
        "size": 28,
        "classes": ["normal", "pneumonia"],
        "positive": "pneumonia",
        "minority": "normal",
    },
}
# method -> (rebalance#method, oversample#method)
METHODS = {
    "none": ("none", "none"),
    "class_weight": ("class_weight", "none"),
    "random": ("none", "random"),
    "gan": ("none", "gan"),
    "vae_interp": ("none", "vae_interp"),
    "ldm": ("none", "ldm"),
    "ldm_img2img": ("none", "ldm_img2img"),
    "hybrid": ("none", "hybrid"),
}
BASELINES = ("none", "class_weight", "random")
# Quality of the minority-class images against the real minority images (the overall values compare
# minority-only synthetic sets with both real classes, which mostly measures the class mix).
QUALITY = ("fid", "precision", "recall", "ms_ssim", "ms_ssim_real", "near_copy_fraction")


def minority_quality(quality: dict, minority: str) -> dict:
    return {k: quality.get(f"synthetic_{k}_{minority}") for k in QUALITY}


def overrides(dataset: str, method: str, seed: int, args, runs_dir: Path) -> dict:
    spec = DATASETS[dataset]
    rebalance, oversample = METHODS[method]
    return {
        "dataset_dir": str(REPO / "data" / spec["file"]),
        "class_names": spec["classes"],
        "positive_class": spec["positive"],
        "image_size": [spec["size"], spec["size"]],
        "imbalance": {"class": spec["minority"], "keep_fraction": 0.25},
        "classifier": args.classifier,
        "early_stop_patience": args.patience,
        "max_epochs": args.max_epochs_pneumonia if dataset.startswith("pneumonia") else args.max_epochs,
        "batch_size": args.batch_size,
        "seed": seed,
        "n_bootstrap": 200,
        "rebalance#method": rebalance,
        "oversample#method": oversample,
        "oversample#image_size": [args.gen_size, args.gen_size],
        "oversample#gan#iterations": args.gan_iterations,
        "oversample#vae_interp#iterations": args.vae_iterations,
        "oversample#ldm#ae_iterations": args.ldm_ae_iterations,
        "oversample#ldm#unet_iterations": args.ldm_unet_iterations,
        "oversample#ldm#ddim_steps": args.ddim_steps,
        "oversample#quality#feature_epochs": args.feature_epochs,
        "oversample#cache_dir": str(runs_dir / "oversample_cache"),
        "oversample#progress": False,
        "study_data#progress": False,
        "output_dir": str(runs_dir),
        "run_name": f"{dataset}-{method}-seed{seed}",
    }


def run_one(dataset: str, method: str, seed: int, args, runs_dir: Path) -> dict:
    from monai.bundle import run as bundle_run

    name = f"{dataset}-{method}-seed{seed}"
    start = time.perf_counter()
    bundle_run(
        config_file=[str(BUNDLE / "configs" / "train.json")],
        bundle_root=str(BUNDLE),
        **overrides(dataset, method, seed, args, runs_dir),
    )
    seconds = time.perf_counter() - start
    run_dir = runs_dir / name
    results = json.loads((run_dir / "metrics.json").read_text())
    oversample = json.loads((run_dir / "oversample.json").read_text()) if (run_dir / "oversample.json").exists() else {}
    m = results["metrics"]
    minority = DATASETS[dataset]["minority"]
    cost = oversample.get("cost", {})
    return {
        "dataset": dataset,
        "method": method,
        "seed": seed,
        "seconds_total": round(seconds, 1),
        "balanced_accuracy": m["balanced_accuracy"],
        "auc": m["auc"],
        "minority_sensitivity": m.get(f"sensitivity_class_{minority}"),
        "synthetic": sum((oversample.get("added") or {}).values()),
        "fit_seconds": cost.get("fit", {}).get("seconds", 0.0),
        "sample_seconds": cost.get("sample", {}).get("seconds", 0.0)
        + sum(cost.get(k, {}).get("seconds", 0.0) for k in ("random_copies", "augmented_copies")),
        "fit_cached": cost.get("fit", {}).get("cached"),
        "peak_memory_mb": max([c.get("peak_memory_mb", 0.0) for c in cost.values()] or [0.0]),
        "quality": oversample.get("quality") or {},
    }


def with_full_quality(record: dict, runs_dir: Path) -> dict:
    """Records of an earlier version kept only overall quality values: take them all from the run."""
    path = runs_dir / f"{record['dataset']}-{record['method']}-seed{record['seed']}" / "oversample.json"
    if len(record.get("quality") or {}) < len(QUALITY) and path.exists():
        record["quality"] = json.loads(path.read_text()).get("quality") or {}
    return record


def mean_sd_ci(values) -> dict:
    v = np.array([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], dtype=float)
    if len(v) == 0:
        return {"mean": None, "sd": None, "ci95": [None, None], "n": 0}
    mean = float(v.mean())
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    half = float(stats.t.ppf(0.975, len(v) - 1) * sd / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return {
        "mean": round(mean, 4),
        "sd": round(sd, 4),
        "ci95": [round(mean - half, 4), round(mean + half, 4)],
        "n": len(v),
    }


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for dataset in DATASETS:
        for method in METHODS:
            group = [r for r in runs if r["dataset"] == dataset and r["method"] == method]
            if not group:
                continue
            row = {"dataset": dataset, "method": method, "seeds": len(group)}
            for key in ("balanced_accuracy", "minority_sensitivity", "auc"):
                row[key] = mean_sd_ci([r[key] for r in group])
            minority = DATASETS[dataset]["minority"]
            for key in QUALITY:
                row[key] = mean_sd_ci([minority_quality(r["quality"], minority)[key] for r in group])["mean"]
            # Cost of a method: the first (uncached) fit of each seed plus sampling.
            fits = [r["fit_seconds"] for r in group]
            row["fit_plus_sample_seconds"] = round(
                float(np.mean([f + r["sample_seconds"] for f, r in zip(fits, group)])), 1
            )
            row["peak_memory_mb"] = round(float(np.mean([r["peak_memory_mb"] for r in group])), 1)
            row["synthetic_images"] = int(np.mean([r["synthetic"] for r in group]))
            rows.append(row)
    return rows


def verdict(rows: list[dict]) -> list[str]:
    lines = []
    for dataset in DATASETS:
        cells = {r["method"]: r for r in rows if r["dataset"] == dataset and r["balanced_accuracy"]["mean"] is not None}
        base = [m for m in BASELINES if m in cells]
        gen = [m for m in cells if m not in BASELINES]
        if not base or not gen:
            continue
        best_base = max(base, key=lambda m: cells[m]["balanced_accuracy"]["mean"])
        best_gen = max(gen, key=lambda m: cells[m]["balanced_accuracy"]["mean"])
        diff = 100 * (cells[best_gen]["balanced_accuracy"]["mean"] - cells[best_base]["balanced_accuracy"]["mean"])
        goal = "meets" if diff >= 2 else "does not meet"
        lines.append(
            f"- {dataset}: best generative `{best_gen}` vs best baseline `{best_base}`: "
            f"{diff:+.1f} points of balanced accuracy ({goal} the +2 point goal)."
        )
    return lines


def markdown(rows: list[dict], meta: dict) -> str:
    def f(cell):
        if cell["mean"] is None:
            return "n/a"
        ci = cell["ci95"]
        ci_text = "" if ci[0] is None or math.isnan(ci[0]) else f" [{ci[0]:.3f}, {ci[1]:.3f}]"
        return f"{cell['mean']:.3f} ± {cell['sd']:.3f}{ci_text}"

    def q(value, digits=3):
        return "" if value is None else f"{value:.{digits}f}"

    def ms_ssim(row):
        return "" if row["ms_ssim"] is None else f"{q(row['ms_ssim'])} ({q(row['ms_ssim_real'])})"

    s = meta["settings"]
    lines = [
        "# Generative oversampling vs honest baselines (default bundle, CPU)",
        "",
        f"Minority class cut to 25% of its train images (seeded); val/test untouched. Classifier `{s['classifier']}`, "
        f"up to {s['max_epochs']} epochs ({s['max_epochs_pneumonia']} on PneumoniaMNIST; patience {s['patience']}), "
        "the same for every method. Generators at "
        f"{s['gen_size']} px: GAN {s['gan_iterations']} it., VAE {s['vae_iterations']} it./class, LDM "
        f"{s['ldm_ae_iterations']} + {s['ldm_unet_iterations']} it., DDIM {s['ddim_steps']} steps; oversampled to "
        f"balance. Seeds: {meta['seeds_per_dataset']}. Mean ± sd [95% t-interval] over seeds, official test split. "
        f"{meta['cpu_threads']} CPU threads ({meta['machine']}), shared with other work.",
        "",
        "Image quality is that of the new minority images against the real minority train images: FID and "
        "k-NN precision/recall in the features of a small CNN trained on the real train split, MS-SSIM "
        "between pairs of synthetic (real) images (lower = more diverse), fraction of near copies of a real image.",
        "",
        "| dataset | method | seeds | balanced ACC | minority sensitivity | AUC | FID | precision | recall "
        "| MS-SSIM synth (real) | near-copy frac. | synthetic | fit+sample s | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['seeds']} | {f(r['balanced_accuracy'])} | "
            f"{f(r['minority_sensitivity'])} | {f(r['auc'])} | {q(r['fid'], 1)} | {q(r['precision'])} "
            f"| {q(r['recall'])} | {ms_ssim(r)} "
            f"| {q(r['near_copy_fraction'])} | {r['synthetic_images']} "
            f"| {r['fit_plus_sample_seconds']:.0f} | {r['peak_memory_mb']:.0f} |"
        )
    lines += ["", "Goal: the best generative method beats the best non-generative baseline by >= 2 points:", ""]
    lines += verdict(rows) or ["- not enough finished runs to compare."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds first-seed .. seeds-1")
    parser.add_argument("--first-seed", type=int, default=0, help="to add seeds in a second process")
    parser.add_argument("--classifier", default="small_cnn")
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument(
        "--max-epochs-pneumonia",
        type=int,
        default=3,
        help="PneumoniaMNIST has 8x the train images: fewer epochs keep the grid affordable",
    )
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--gen-size", type=int, default=32, help="generators' training size (px)")
    parser.add_argument("--gan-iterations", type=int, default=300)
    parser.add_argument("--vae-iterations", type=int, default=200)
    parser.add_argument("--ldm-ae-iterations", type=int, default=150)
    parser.add_argument("--ldm-unet-iterations", type=int, default=500)
    parser.add_argument("--ddim-steps", type=int, default=15)
    parser.add_argument("--feature-epochs", type=int, default=2, help="epochs of the quality feature network")
    parser.add_argument("--runs-dir", type=Path, default=RESULTS / "tmp_oversampling")
    parser.add_argument("--name", default="oversampling_efficacy")
    parser.add_argument("--table-only", action="store_true", help="no training: tables from the cached results")
    args = parser.parse_args()
    runs_dir = args.runs_dir.resolve()
    (runs_dir / "results").mkdir(parents=True, exist_ok=True)
    # Dataset-major, then seed-major: an interrupted benchmark still compares every method on the
    # seeds it finished, and the cheaper dataset comes first.
    grid = [(d, m, s) for d in args.datasets for s in range(args.first_seed, args.seeds) for m in args.methods]
    failures = []
    for i, (dataset, method, seed) in enumerate([] if args.table_only else grid, 1):
        path = runs_dir / "results" / f"{dataset}-{method}-seed{seed}.json"
        if path.exists():
            continue
        try:
            record = run_one(dataset, method, seed, args, runs_dir)
        except Exception:  # one failed model is reported, the grid goes on
            failures.append(
                {"dataset": dataset, "method": method, "seed": seed, "error": traceback.format_exc()[-2000:]}
            )
            print(f"[{i}/{len(grid)}] {dataset} {method} seed {seed}: FAILED\n{failures[-1]['error']}", flush=True)
            continue
        path.write_text(json.dumps(record, indent=2))
        print(
            f"[{i}/{len(grid)}] {dataset:18s} {method:12s} seed {seed}: BA {record['balanced_accuracy']:.3f} "
            f"minority sens {record['minority_sensitivity']:.3f} AUC {record['auc']:.3f} "
            f"(fit {record['fit_seconds']:.0f} s, total {record['seconds_total']:.0f} s)",
            flush=True,
        )
    runs = [
        with_full_quality(json.loads(p.read_text()), runs_dir) for p in sorted((runs_dir / "results").glob("*.json"))
    ]
    runs = [r for r in runs if r["dataset"] in args.datasets and r["method"] in args.methods]
    # Compare methods on the same seeds only: a seed some method has not finished is left out.
    complete = {
        (d, s)
        for d in args.datasets
        for s in {r["seed"] for r in runs}
        if all(any(r["dataset"] == d and r["seed"] == s and r["method"] == m for r in runs) for m in args.methods)
    }
    incomplete = sorted({f"{r['dataset']} seed {r['seed']}" for r in runs if (r["dataset"], r["seed"]) not in complete})
    runs = [r for r in runs if (r["dataset"], r["seed"]) in complete]
    settings = {
        k: getattr(args, k)
        for k in (
            "classifier",
            "max_epochs",
            "max_epochs_pneumonia",
            "patience",
            "batch_size",
            "gen_size",
            "gan_iterations",
            "vae_iterations",
            "ldm_ae_iterations",
            "ldm_unet_iterations",
            "ddim_steps",
            "feature_epochs",
            "seeds",
        )
    }
    meta = {
        "settings": settings,
        "runs": len(runs),
        "planned_runs": len(grid),
        "seeds_done": sorted({r["seed"] for r in runs}),
        "cpu_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "seeds_per_dataset": {d: sorted({r["seed"] for r in runs if r["dataset"] == d}) for d in args.datasets},
        "incomplete_seeds_left_out": incomplete,
        "failures": failures,
    }
    rows = summarise(runs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"meta": meta, "summary": rows, "runs": runs}, indent=2))
    table = markdown(rows, meta)
    (RESULTS / f"{args.name}.md").write_text(table)
    print("\n" + table)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
