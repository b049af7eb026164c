"""Throughput of ``medaug predict`` against the plain MONAI bundle inference path, same files, same run.

A folder of DICOM files (default 600) is generated from the real samples in ``tests/data/dicom``:
single-frame CT and MR (64² to 1024², uncompressed) and CR radiographs in JPEG 2000 (1760²), each copy
with new UIDs, in nested folders and half of them without extension, as a PACS export looks. Both paths
predict every file with the same network (the default bundle's ResNet-18 at 64 px, a fresh checkpoint:
throughput does not depend on the weights), the same batch size and the same number of decoding workers:

* ``medaug predict``: ``medaug.cli.main(["predict", ...])`` in process: walk, header checks, decoding
  with the photometric handling of training (VOI window, MONOCHROME1) in threads (the default) and,
  as a second figure, in worker processes (``--parallel process``), batched model calls, CSV/JSON
  outputs written atomically.
* plain MONAI bundle inference: a model-zoo style ``inference.json`` (as a dict, run through
  ``monai.bundle.ConfigParser``): ``LoadImaged(PydicomReader)`` -> ``EnsureChannelFirstd`` ->
  ``ScaleIntensityd`` -> ``Resized``, ``Dataset`` + ``DataLoader(num_workers)``, ``SupervisedEvaluator``
  with ``CheckpointLoader`` and ``ClassificationSaver``, over the list of files (it is given the list:
  it neither walks the folder nor checks files, and would stop at the first broken one).

Each path runs ``--repeats`` times, alternating, after one warm-up each on 12 files; images/s is the
median. Writes ``benchmarks/results/predict_throughput.json`` and ``.md`` and prints the table.

    python benchmarks/predict_throughput.py [--files 600] [--repeats 3] [--workers 2] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pydicom
import torch
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BUNDLE = REPO / "bundles" / "imbalance_baselines"
RESULTS = REPO / "benchmarks" / "results"
#: the two ways medaug decodes in parallel; "medaug_predict" is the default of inference.json
MODES = {"medaug_predict": "thread", "medaug_predict_processes": "process"}
PATHS = (*MODES, "plain_monai_bundle")
SAMPLES = ("CT_small.dcm", "MR_small.dcm", "693_UNCR.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "MR2_UNCR.dcm",
           "RG3_J2KR.dcm")  # fmt: skip


def make_folder(root: Path, n: int) -> dict[str, int]:
    """``n`` DICOM files cycling through :data:`SAMPLES`, new UIDs each; returns counts per sample."""
    datasets = {name: pydicom.dcmread(REPO / "tests" / "data" / "dicom" / name) for name in SAMPLES}
    counts = dict.fromkeys(SAMPLES, 0)
    for i in range(n):
        name = SAMPLES[i % len(SAMPLES)]
        ds = datasets[name]
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = root / f"study{i // 50:03d}" / f"series{i % 3}" / (f"IM{i:05d}" if i % 2 else f"img{i:05d}.dcm")
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=True)
        counts[name] += 1
    return counts


def plain_monai_config(bundle: Path, files: list[Path], ckpt: Path, out: Path, batch_size: int, workers: int) -> dict:
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    return {
        "image_size": inference["image_size"],
        "device": "$torch.device('cpu')",
        "network_def": {"_target_": "medaug.models.build_classifier", "name": inference["classifier"],
                        "in_channels": 1, "num_classes": len(inference["class_names"]),
                        "spatial_size": "@image_size"},  # fmt: skip
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "reader": "PydicomReader", "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "ScaleIntensityd", "keys": "image"},
            {"_target_": "Resized", "keys": "image", "spatial_size": "@image_size", "mode": "area"},
            {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
        ]},  # fmt: skip
        "dataset": {"_target_": "Dataset", "data": [{"image": str(f)} for f in files], "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": batch_size, "shuffle": False,
                       "num_workers": workers},  # fmt: skip
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True}]},  # fmt: skip
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": str(ckpt), "load_dict": {"model": "@network"},
             "map_location": "@device"},
            {"_target_": "ClassificationSaver", "output_dir": str(out),
             "batch_transform": "$lambda batch: [item['image'].meta for item in batch]",
             "output_transform": "$monai.handlers.from_engine(['pred'])"},
        ],  # fmt: skip
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},  # fmt: skip
    }


def run_plain_monai(config: dict) -> int:
    from monai.bundle import ConfigParser

    parser = ConfigParser(config)
    parser.parse()
    evaluator = parser.get_parsed_content("evaluator")
    evaluator.run()
    return len(config["dataset"]["data"])


def run_medaug(bundle: Path, source: Path, out: Path, batch_size: int, workers: int, parallel: str) -> int:
    from medaug.cli import main

    code = main(["predict", "--bundle", str(bundle), "--input", str(source), "--output", str(out),
                 "--batch-size", str(batch_size), "--workers", str(workers), "--parallel", parallel,
                 "--no-progress"])  # fmt: skip
    if code != 0:
        raise SystemExit(f"medaug predict exited {code}: see {out / 'skipped.csv'}")
    return json.loads((out / "summary.json").read_text())["images"]


def timed(fn, *args) -> tuple[float, int]:
    start = time.perf_counter()
    images = fn(*args)
    return time.perf_counter() - start, images


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--files", type=int, default=600)
    cli.add_argument("--repeats", type=int, default=3)
    cli.add_argument("--workers", type=int, default=2)
    cli.add_argument("--batch-size", type=int, default=32)
    cli.add_argument("--keep", action="store_true", help="keep the generated folder")
    args = cli.parse_args()

    from medaug.models import build_classifier

    work = Path(tempfile.mkdtemp(prefix="medaug-throughput-"))
    try:
        bundle = Path(shutil.copytree(BUNDLE, work / "bundle", ignore=shutil.ignore_patterns("runs", "models")))
        inference = json.loads((bundle / "configs" / "inference.json").read_text())
        torch.manual_seed(0)
        net = build_classifier(inference["classifier"], inference["channels"], len(inference["class_names"]),
                               tuple(inference["image_size"]))  # fmt: skip
        (bundle / "models").mkdir()
        ckpt = bundle / "models" / "model.pt"
        torch.save({"model": net.state_dict()}, ckpt)

        source = work / "export"
        counts = make_folder(source, args.files)
        files = sorted(p for p in source.rglob("*") if p.is_file())
        warm = work / "warm"
        make_folder(warm, 12)
        warm_files = sorted(p for p in warm.rglob("*") if p.is_file())

        for parallel in MODES.values():
            run_medaug(bundle, warm, work / f"o-warm-{parallel}", args.batch_size, args.workers, parallel)
        run_plain_monai(plain_monai_config(bundle, warm_files, ckpt, work / "o-warm-monai", args.batch_size, args.workers))
        times = {name: [] for name in PATHS}
        images = {}
        for r in range(args.repeats):
            for name, parallel in MODES.items():
                seconds, images[name] = timed(run_medaug, bundle, source, work / f"o-{name}-{r}", args.batch_size,
                                              args.workers, parallel)  # fmt: skip
                times[name].append(seconds)
            config = plain_monai_config(bundle, files, ckpt, work / f"o-monai-{r}", args.batch_size, args.workers)
            seconds, images["plain_monai_bundle"] = timed(run_plain_monai, config)
            times["plain_monai_bundle"].append(seconds)
            print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    rates = {k: images[k] / statistics.median(v) for k, v in times.items()}
    result = {
        "what": "images/s predicting a folder of DICOM files, medaug predict vs plain MONAI bundle inference",
        "files": args.files, "file_mix": counts, "batch_size": args.batch_size, "workers": args.workers,
        "network": f"{inference['classifier']} at {inference['image_size']} px, CPU",
        "images": images, "seconds": {k: [round(s, 3) for s in v] for k, v in times.items()},
        "images_per_s": {k: round(v, 1) for k, v in rates.items()},
        "ratio_medaug_over_plain_monai": round(rates["medaug_predict"] / rates["plain_monai_bundle"], 3),
        "ratio_medaug_processes_over_plain_monai": round(rates["medaug_predict_processes"]
                                                         / rates["plain_monai_bundle"], 3),  # fmt: skip
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    table = "\n".join([
        f"# Prediction throughput ({args.files} DICOM files, {result['network']}, batch {args.batch_size}, "
        f"{args.workers} workers, {os.cpu_count()} CPUs)",
        "",
        "| path | images | median s | images/s |",
        "|---|---|---|---|",
        *[f"| {k.replace('_', ' ')} | {images[k]} | {statistics.median(times[k]):.1f} | {rates[k]:.1f} |"
          for k in PATHS],
        "",
        f"Ratio medaug predict (default, {MODES['medaug_predict']} decoding) / plain MONAI: "
        f"**{result['ratio_medaug_over_plain_monai']:.2f}x**; with worker processes "
        f"(`--parallel process`): {result['ratio_medaug_processes_over_plain_monai']:.2f}x "
        f"(median of {args.repeats} runs each, alternating, same process, same files). File mix: "
        + ", ".join(f"{k} x{v}" for k, v in counts.items()) + ". Generated by `benchmarks/predict_throughput.py`.",
        "",
    ])  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "predict_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "predict_throughput.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
