"""From scratch vs self-supervised pretraining, through the default bundle, beside the plain MONAI peer.

Grid: dataset (BreastMNIST 64 px, PneumoniaMNIST 28 px; full official train split) x network of the
classifier zoo x init (``scratch``: ``pretrain#method none``; ``simclr``: the bundle's pretraining
stage) x seeds, all with the same fine-tuning recipe (the default bundle's defaults) and the same
epoch budget. Beside them, in the same run and on the same machine, the ~60-line plain MONAI peer
(``benchmarks/monai_peer.py``: ResNet-18, Adam, flips and rotations, class-weighted loss, best
epoch by validation AUC).

Every medaug model is one ``python -m monai.bundle run`` (an MLflow run in
``<runs-dir>/mlflow.db``), scored on the untouched official test split. A pretraining is cached in
``<runs-dir>/pretrain_cache`` and reused by every seed: its cost is reported once per network and
dataset, as its own column, and taken out of the per-model seconds.

Resumable: each finished model is appended to ``<runs-dir>/records.jsonl`` and skipped when the
script runs again with the same arguments. Writes ``benchmarks/results/<name>.json`` and ``.md``.
``make bench-pretrain`` runs the default grid (many hours on 2 CPU cores; narrow it with
``--datasets``, ``--networks``, ``--inits``, ``--seeds``); ``--quick`` checks the script in minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "imbalance_baselines"
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "benchmarks"))

from baselines import run_bundle  # noqa: E402  (the one bundle-run helper of the benchmarks)

from medaug.pipelines.evaluate.stats import paired_seed_test  # noqa: E402

DATASETS = {
    "breastmnist_64": {
        "file": "breastmnist_64.npz",
        "size": 64,
        "classes": ["malignant", "normal_benign"],
        "positive": "malignant",
        "positive_index": 0,
        "preset": "ultrasound",
    },
    "pneumoniamnist_28": {
        "file": "pneumoniamnist.npz",
        "size": 28,
        "classes": ["normal", "pneumonia"],
        "positive": "pneumonia",
        "positive_index": 1,
        "preset": "chest_xray",
    },
}
NETWORKS = ("resnet18", "vgg16-bn", "inception-v3", "efficientnet-b0", "densenet121")
INITS = ("scratch", "simclr")
REPORTED = ("auc", "balanced_accuracy", "accuracy", "sensitivity", "specificity")


def network_size(network: str, size: int) -> int:
    """The dataset's size, or the network's minimum input size where that is larger (the bundle's
    preprocessing resizes the images up)."""
    from medaug.models.classifiers import MIN_INPUT_SIZE

    return max(size, MIN_INPUT_SIZE.get(network, 1))


def run_medaug(dataset: str, network: str, init: str, seed: int, args, out_dir: Path) -> dict:
    spec = DATASETS[dataset]
    size = network_size(network, spec["size"])
    run_name = f"{dataset}-{network}-{init}-seed{seed}"
    overrides = {
        "dataset_dir": str(REPO / "data" / spec["file"]),
        "class_names": spec["classes"],
        "positive_class": spec["positive"],
        "image_size": [size, size],
        "augment#preset": spec["preset"],
        "classifier": network,
        "pretrain#method": "none" if init == "scratch" else init,
        "seed": seed,
        "run_name": run_name,
        "output_dir": str(out_dir),
        "study_data#progress": False,
        "oversample#progress": False,
    }
    if args.max_epochs is not None:
        overrides["max_epochs"] = args.max_epochs
    overrides.update(json.loads(args.overrides))
    results, seconds = run_bundle(overrides, out_dir, run_name)
    pretrain = pretraining_record(out_dir, run_name) if init != "scratch" else None
    fitted = pretrain is not None and not pretrain.get("cache_hit", True)
    return {
        "dataset": dataset,
        "network": network,
        "init": init,
        "seed": seed,
        "bundle_version": bundle_version(),
        "image_size": size,
        # a pretraining fitted in this process is its own cost, reported once per network and dataset
        "seconds": round(seconds - (pretrain["seconds"] if fitted else 0.0), 1),
        "pretrain": pretrain,
        "metrics": {k: results["metrics"][k] for k in REPORTED},
        "n_test": results["metrics"].get("n"),
    }


def bundle_version() -> str:
    """The default bundle's version, kept with each record: results are pooled across sessions, and
    a recipe change bumps it."""
    return json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]


def pretraining_record(out_dir: Path, run_name: str) -> dict | None:
    """The pretraining a run used: its cache key and hit from the run's MLflow parameters, the rest
    (wall time, pool size, k-NN probe) from the cached ``pretrain.json``."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out_dir / 'mlflow.db'}")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"attributes.run_name = '{run_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    params = runs[0].data.params if runs else {}
    key = params.get("pretrain_cache_key")
    if not key:
        return None
    record = json.loads((out_dir / "pretrain_cache" / key / "pretrain.json").read_text())
    return {
        "key": key,
        "cache_hit": params.get("pretrain_cache_hit") == "True",
        "seconds": record.get("seconds"),
        "pool_size": (record.get("pool") or {}).get("size"),
        "probe": record.get("probe"),
    }


def run_monai_peer(dataset: str, seed: int, args) -> dict:
    from monai_peer import run_peer

    from medaug.pipelines.evaluate import compute_metrics

    spec = DATASETS[dataset]
    out = run_peer(str(REPO / "data" / spec["file"]), seed=seed, epochs=args.peer_epochs)
    scores = compute_metrics(out["labels"], out["probs"], positive_class=spec["positive_index"])
    return {
        "dataset": dataset,
        "network": "resnet18",
        "init": "monai_peer",
        "seed": seed,
        "image_size": spec["size"],
        "seconds": round(out["seconds"], 1),
        "best_epoch": out["best_epoch"],
        "metrics": {k: scores[k] for k in REPORTED},
        "n_test": scores["n"],
    }


def mean_ci(values: np.ndarray) -> dict:
    """Mean, sd and the t-based 95% CI of the mean over seeds."""
    values = values[~np.isnan(values)]
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    sd = float(values.std(ddof=1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n)) if n > 1 else float("nan")
    return {"mean": round(mean, 4), "sd": round(sd, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)]}


def summarise(records: list[dict]) -> list[dict]:
    cells: dict[tuple, list[dict]] = {}
    for record in records:
        cells.setdefault((record["dataset"], record["network"], record["init"]), []).append(record)
    rows = []
    for (dataset, network, init), group in cells.items():
        fits = [r["pretrain"] for r in group if r.get("pretrain") and not r["pretrain"].get("cache_hit", True)]
        row = {
            "dataset": dataset,
            "network": network,
            "init": init,
            "image_size": group[0]["image_size"],
            "seeds": len(group),
            "seconds_per_model": round(float(np.mean([r["seconds"] for r in group])), 1),
            "pretrain_seconds": round(fits[0]["seconds"], 1) if fits else None,
        }
        for name in REPORTED:
            row[name] = mean_ci(np.array([r["metrics"][name] for r in group], dtype=float))
        rows.append(row)
    order = {n: i for i, n in enumerate((*NETWORKS, "small_cnn"))}
    init_order = {"monai_peer": 0, "scratch": 1, "simclr": 2}
    return sorted(rows, key=lambda r: (r["dataset"], order.get(r["network"], 99), init_order.get(r["init"], 9)))


def paired_against_peer(records: list[dict]) -> list[dict]:
    """Each medaug ResNet-18 cell minus the plain MONAI peer on the same dataset and seeds: mean
    difference, its t-interval over seeds and the paired t-test p, for AUC and balanced accuracy."""
    peer = {(r["dataset"], r["seed"]): r for r in records if r["init"] == "monai_peer"}
    cells: dict[tuple, list[dict]] = {}
    for r in records:
        if r["init"] != "monai_peer" and r["network"] == "resnet18" and (r["dataset"], r["seed"]) in peer:
            cells.setdefault((r["dataset"], r["init"]), []).append(r)
    out = []
    for (dataset, init), group in sorted(cells.items()):
        row = {"dataset": dataset, "init": init, "seeds": sorted(r["seed"] for r in group)}
        for name in ("auc", "balanced_accuracy"):
            ours = [r["metrics"][name] for r in group]
            theirs = [peer[(dataset, r["seed"])]["metrics"][name] for r in group]
            row[name] = paired_seed_test(ours, theirs)
            row[name]["better_seeds"] = sum(a > b for a, b in zip(ours, theirs, strict=True))
        out.append(row)
    return out


def markdown(rows: list[dict], meta: dict, paired: list[dict] = ()) -> str:
    fmt = lambda m: f"{m['mean']:.3f} ± {m['sd']:.3f}"  # noqa: E731
    ci = lambda m: f"[{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"  # noqa: E731
    lines = [
        "# Pretraining: from scratch vs SimCLR, beside the plain MONAI peer (CPU)",
        "",
        f"Default bundle recipe, {meta['epochs']}; official test split; {meta['cpu_threads']} CPU threads "
        f"({meta['machine']}), {meta['date']}; default bundle {', '.join(meta.get('bundle_versions', []))}. "
        "Mean ± sd over seeds, 95% CI of the mean (t). "
        "`monai_peer`: benchmarks/monai_peer.py, measured in the same run. s/model excludes the pretraining, "
        "which is cached and reported once (pretrain s).",
        "",
        "| dataset | network | px | init | seeds | test AUC | AUC 95% CI | balanced ACC | BA 95% CI | ACC "
        "| s/model | pretrain s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['dataset']} | {row['network']} | {row['image_size']} | {row['init']} | {row['seeds']} "
            f"| {fmt(row['auc'])} | {ci(row['auc'])} | {fmt(row['balanced_accuracy'])} "
            f"| {ci(row['balanced_accuracy'])} | {fmt(row['accuracy'])} | {row['seconds_per_model']:.0f} "
            f"| {row['pretrain_seconds'] if row['pretrain_seconds'] is not None else ''} |"
        )
    if paired:
        delta = lambda m: f"{m['diff']:+.3f} [{m['ci_low']:+.3f}, {m['ci_high']:+.3f}]"  # noqa: E731
        p = lambda m: "" if math.isnan(m["p"]) else f"{m['p']:.3f}"  # noqa: E731
        lines += [
            "",
            "Paired over seeds against the peer (medaug ResNet-18 minus `monai_peer`, same dataset and seed): "
            "mean difference [95% t-interval], paired t-test p, seeds on which medaug is higher.",
            "",
            "| dataset | init | seeds | Δ test AUC | p | higher | Δ balanced ACC | p | higher |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in paired:
            a, b, n = row["auc"], row["balanced_accuracy"], len(row["seeds"])
            lines.append(
                f"| {row['dataset']} | {row['init']} | {n} | {delta(a)} | {p(a)} | {a['better_seeds']}/{n} "
                f"| {delta(b)} | {p(b)} | {b['better_seeds']}/{n} |"
            )
    return "\n".join(lines) + "\n"


def load_records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--networks", nargs="*", default=list(NETWORKS))
    parser.add_argument("--inits", nargs="*", default=list(INITS), choices=list(INITS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--max-epochs", type=int, default=None, help="default: the bundle's max_epochs")
    parser.add_argument("--peer-epochs", type=int, default=30)
    parser.add_argument("--no-peer", action="store_true", help="skip the plain MONAI peer")
    parser.add_argument("--overrides", default="{}", help="JSON of extra bundle overrides for every medaug run")
    parser.add_argument("--quick", action="store_true", help="BreastMNIST, resnet18, 1 seed, 2 epochs")
    parser.add_argument("--name", default="pretraining", help="results file stem")
    parser.add_argument("--runs-dir", type=Path, default=RESULTS / "tmp_pretraining")
    parser.add_argument("--from-runs", action="store_true", help="do not train: tables from records.jsonl")
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.networks, args.seeds, args.max_epochs = ["breastmnist_64"], ["resnet18"], 1, 2
        args.peer_epochs, args.name = 2, f"{args.name}_quick"
        args.overrides = json.dumps({"pretrain#steps": 4, **json.loads(args.overrides)})
    out_dir = args.runs_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    records_path = out_dir / "records.jsonl"
    records = load_records(records_path)
    done = {(r["dataset"], r["network"], r["init"], r["seed"]) for r in records}
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    grid = []
    for dataset in args.datasets:
        for seed in seeds:
            if not args.no_peer:
                grid.append((dataset, "resnet18", "monai_peer", seed))
            grid += [(dataset, net, init, seed) for net in args.networks for init in args.inits]
    todo = [] if args.from_runs else [cell for cell in grid if cell not in done]
    for i, (dataset, network, init, seed) in enumerate(todo, 1):
        if init == "monai_peer":
            record = run_monai_peer(dataset, seed, args)
        else:
            record = run_medaug(dataset, network, init, seed, args, out_dir)
        with records_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        records.append(record)
        m = record["metrics"]
        print(
            f"[{i}/{len(todo)}] {dataset} {network:15s} {init:10s} seed {seed}: AUC {m['auc']:.3f} "
            f"BA {m['balanced_accuracy']:.3f} ACC {m['accuracy']:.3f} ({record['seconds']:.0f} s)",
            flush=True,
        )
    wanted = set(grid)
    chosen = [r for r in records if (r["dataset"], r["network"], r["init"], r["seed"]) in wanted]
    meta = {
        "models": len(chosen),
        "epochs": f"max_epochs {args.max_epochs}" if args.max_epochs else "the bundle's max_epochs",
        "peer_epochs": args.peer_epochs,
        "overrides": json.loads(args.overrides),
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "date": time.strftime("%Y-%m-%d"),
        # records written before the version was kept have none
        "bundle_versions": sorted({r.get("bundle_version", "unrecorded") for r in chosen}),
    }
    rows, paired = summarise(chosen), paired_against_peer(chosen)
    payload = {"meta": meta, "summary": rows, "paired_against_peer": paired, "runs": chosen}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(payload, indent=2))
    table = markdown(rows, meta, paired)
    (RESULTS / f"{args.name}.md").write_text(table)
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
