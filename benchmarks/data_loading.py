"""Data loading from a DICOM folder: MONAI ``Dataset`` vs ``CacheDataset`` vs ``PersistentDataset``
(cold and warm), one training epoch each, same files, same transforms, same run.

A folder of DICOM files (default 300) is generated from the real samples in ``tests/data/dicom``
(CT and MR 64² to 1024², CR radiographs in JPEG 2000 1760², new UIDs each, the generator of
``benchmarks/predict_throughput.py``) with a labels CSV. It is indexed once through
``medaug.io`` (timed cold, and warm from the index cache), then each dataset type feeds one epoch
of the default bundle's training transforms (``train#transforms`` of ``train.json``: decode,
resize to 64 px, flips, affine, contrast) through a ``DataLoader`` (batch 32, ``--workers``):

* ``Dataset``: decodes every file in every epoch;
* ``CacheDataset``: decodes every file once into memory when built (timed as part of its first
  epoch), then runs only the random transforms;
* ``PersistentDataset`` cold: first epoch with an empty cache folder (decodes and writes);
* ``PersistentDataset`` warm: a new dataset over the filled cache folder, as the next run (or
  another DDP rank) sees it: reads tensors back instead of decoding.

images/s = files / seconds of the epoch; ratio against ``Dataset`` in the same run. Writes
``benchmarks/results/data_loading.json`` and ``.md`` and prints the table.

    python benchmarks/data_loading.py [--files 300] [--workers 0] [--epochs 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BUNDLE = REPO / "bundles" / "imbalance_baselines"
RESULTS = REPO / "benchmarks" / "results"

from benchmarks.predict_throughput import make_folder  # noqa: E402


def bundle_train_transforms():
    """The default bundle's ``train#transforms``, resolved from ``train.json`` itself."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    return parser.get_parsed_content("train#transforms")


def write_labels(root: Path) -> None:
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows((f, "abnormal" if i % 3 == 0 else "normal") for i, f in enumerate(files))


def one_epoch(dataset, batch_size: int, workers: int) -> tuple[float, int]:
    from monai.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += batch["image"].shape[0]
    return time.perf_counter() - start, n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per dataset type (the first is reported apart)")
    parser.add_argument("--output", type=Path, default=RESULTS / "data_loading")
    args = parser.parse_args(argv)

    from monai.utils import set_determinism

    from medaug.io import make_dataset
    from medaug.io.study_data import index_dataset

    set_determinism(0)
    transforms = bundle_train_transforms()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        folder, cache = Path(work) / "dicom", Path(work) / "cache"
        print(f"writing {args.files} DICOM files ...", flush=True)
        composition = make_folder(folder, args.files)
        write_labels(folder)

        timings = {}
        for label in ("index cold", "index warm (index cache)"):
            start = time.perf_counter()
            _, entries, _, skipped = index_dataset(str(folder), None, None, (), None, 1, "middle", cache, progress=True)
            timings[label] = time.perf_counter() - start
        assert not skipped, skipped
        entries = [{**e, "split": "train"} for e in entries]  # one epoch over every file
        n = len(entries)

        def measure(name: str, build) -> None:
            start = time.perf_counter()
            dataset = build()
            built = time.perf_counter() - start
            epochs = [one_epoch(dataset, args.batch_size, args.workers)[0] for _ in range(args.epochs)]
            first = built + epochs[0]
            later = min(epochs[1:]) if len(epochs) > 1 else None
            rows.append(
                {
                    "dataset": name,
                    "build_s": round(built, 2),
                    "first_epoch_s": round(first, 2),
                    "first_epoch_images_per_s": round(n / first, 1),
                    "later_epoch_s": None if later is None else round(later, 2),
                    "later_epoch_images_per_s": None if later is None else round(n / later, 1),
                }
            )
            print(rows[-1], flush=True)

        measure("Dataset", lambda: make_dataset(entries, transforms, "Dataset"))
        measure("CacheDataset", lambda: make_dataset(entries, transforms, "CacheDataset", progress=True))
        measure(
            "PersistentDataset (cold)", lambda: make_dataset(entries, transforms, "PersistentDataset", cache_dir=cache)
        )
        measure(
            "PersistentDataset (warm)", lambda: make_dataset(entries, transforms, "PersistentDataset", cache_dir=cache)
        )

    base = rows[0]
    for row in rows:
        row["first_epoch_ratio_vs_Dataset"] = round(
            row["first_epoch_images_per_s"] / base["first_epoch_images_per_s"], 2
        )
        if row["later_epoch_images_per_s"] and base["later_epoch_images_per_s"]:
            row["later_epoch_ratio_vs_Dataset"] = round(
                row["later_epoch_images_per_s"] / base["later_epoch_images_per_s"], 2
            )
    result = {
        "files": args.files,
        "images": n,
        "composition": composition,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "epochs": args.epochs,
        "index_seconds": {k: round(v, 2) for k, v in timings.items()},
        "rows": rows,
        "machine": {
            "cpus": torch.get_num_threads(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "transforms": "train#transforms of bundles/imbalance_baselines/configs/train.json"
        " (64 px, flips, affine, contrast)",
    }
    lines = [
        f"# Data loading: one training epoch over {n} DICOM files",
        "",
        f"{args.files} files ({', '.join(f'{v}x {k}' for k, v in composition.items())}), the default bundle's training "
        f"transforms at 64 px, DataLoader batch {args.batch_size}, {args.workers} worker processes, "
        f"{torch.get_num_threads()} CPU threads. First epoch includes building the dataset (CacheDataset fills its "
        "memory cache then). Ratios against `Dataset`, same run.",
        "",
        "| dataset | first epoch s | first epoch images/s | x Dataset "
        "| later epoch s | later epoch images/s | x Dataset |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['first_epoch_s']} | {r['first_epoch_images_per_s']} | "
            f"{r['first_epoch_ratio_vs_Dataset']} | {r['later_epoch_s']} | {r['later_epoch_images_per_s']} | "
            f"{r.get('later_epoch_ratio_vs_Dataset', '')} |"
        )
    lines += [
        "",
        "Indexing the folder (decode every file once, hash pixels, skip unusable files): "
        + ", ".join(f"{k} {v:.2f} s" for k, v in result["index_seconds"].items())
        + ".",
    ]
    table = "\n".join(lines) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.output}.json").write_text(json.dumps(result, indent=2) + "\n")
    Path(f"{args.output}.md").write_text(table)
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
