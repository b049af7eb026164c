"""Throughput of ``medaug predict`` against the plain MONAI bundle inference path, same files, same run.

A folder of DICOM files (default 600) is generated from the real samples in ``tests/data/dicom``:
single-frame CT and MR (64² to 1024², uncompressed) and CR radiographs in JPEG 2000 (1760²), each copy
with new UIDs, in nested folders and half of them without extension, as a PACS export looks. Both paths
predict every file with the same network (the default bundle's ResNet-18 at 64 px, a fresh checkpoint:
throughput does not depend on the weights), the same batch size and the same number of decoding workers:

* ``medaug predict``: ``medaug.cli.main(["predict", ...])`` in process: walk, header checks, decoding
  with the photometric handling of training (VOI window, MONOCHROME1) in worker processes (the
  bundle's default, ``"parallel": "process"``) and, as a second figure, in threads
  (``--parallel thread``), batched model calls, CSV/JSON outputs written atomically.
* plain MONAI bundle inference: a model-zoo style ``inference.json`` (as a dict, run through
  ``monai.bundle.ConfigParser``): ``LoadImaged(PydicomReader)`` -> ``EnsureChannelFirstd`` ->
  ``ScaleIntensityd`` -> ``Resized``, ``Dataset`` + ``DataLoader(num_workers)``, ``SupervisedEvaluator``
  with ``CheckpointLoader`` and ``ClassificationSaver``, over the list of files (it is given the list:
  it neither walks the folder nor checks files, and would stop at the first broken one).

Each path runs ``--repeats`` times, alternating, after one warm-up each on 12 files; images/s is the
median.

Multi-frame: one file of ``--frames-count`` (500) frames of 512 x 512 16-bit MONOCHROME2 (262 MB,
uncompressed), written at run time from the header of the real multi-frame sample ``emri_small.dcm``,
is predicted by ``medaug predict`` in a fresh process with ``--frames all`` and with the default
middle frame: wall time, ``ru_maxrss`` of ``getrusage(RUSAGE_CHILDREN)`` (the largest process: the
run or one of its workers) and the peak sum of PSS over the run's process tree (sampled from /proc,
shared pages counted once).

Writes ``benchmarks/results/predict_throughput.json`` and ``.md`` and prints the table.

    python benchmarks/predict_throughput.py [--files 600] [--repeats 3] [--workers 2] [--batch-size 32]
        [--frames-count 500]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BUNDLE = REPO / "bundles" / "imbalance_baselines"
RESULTS = REPO / "benchmarks" / "results"
#: the two ways medaug decodes in parallel: "medaug_predict" is the default of inference.json ("parallel")
DEFAULT_PARALLEL = json.loads((BUNDLE / "configs" / "inference.json").read_text()).get("parallel", "thread")


def shipped_network(inference: dict) -> dict:
    """The network of ``inference.json`` for a checkpoint without a record: ``settings#fallback``, with a
    value set at the top level (not null) winning, as :func:`medaug.pipelines.predict.model_settings` does."""
    network = dict(inference["settings"]["fallback"])
    network.update({k: v for k, v in inference.items() if k in network and v is not None})
    return network


OTHER_PARALLEL = "thread" if DEFAULT_PARALLEL == "process" else "process"
PLURAL = {"thread": "threads", "process": "processes"}
MODES = {"medaug_predict": DEFAULT_PARALLEL, f"medaug_predict_{PLURAL[OTHER_PARALLEL]}": OTHER_PARALLEL}
PATHS = (*MODES, "plain_monai_bundle")
MULTI_FRAME_SAMPLE = "emri_small.dcm"
SAMPLES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "693_UNCR.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm",
    "MR2_UNCR.dcm",
    "RG3_J2KR.dcm",
)


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


def make_multi_frame(target: Path, frames: int, size: int = 512) -> int:
    """A ``frames`` x ``size``² 16-bit MONOCHROME2 file from the header of :data:`MULTI_FRAME_SAMPLE`: a disc
    phantom that grows over the frames, plus noise, in the sample's value range; returns its size in bytes."""
    ds = pydicom.dcmread(REPO / "tests" / "data" / "dicom" / MULTI_FRAME_SAMPLE)
    peak = int(ds.pixel_array.max())
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    radius = np.hypot(yy - size / 2, xx - size / 2) / (size / 2)
    noise = rng.normal(0, 0.03 * peak, (size, size))
    pixels = np.empty((frames, size, size), dtype=np.uint16)
    for k in range(frames):
        disc = (radius < 0.2 + 0.6 * k / max(frames - 1, 1)) * 0.7 * peak
        pixels[k] = np.clip(disc + 0.15 * peak + np.roll(noise, k, axis=0), 0, 2**ds.BitsStored - 1)
    ds.Rows = ds.Columns = size
    ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return target.stat().st_size


def _tree_pss_kb(root: int) -> int:
    """Sum of PSS (kB) over ``root`` and its descendants, from /proc (Linux); 0 where unreadable."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total


def run_multi_frame(bundle: Path, source: Path, out: Path, frames: str, workers: int) -> dict:
    """``medaug predict --frames <frames>`` on ``source`` in a fresh process: seconds, peak memory, images."""
    predict = [
        sys.executable,
        "-m",
        "medaug.cli",
        "predict",
        "--bundle",
        str(bundle),
        "--input",
        str(source),
        "--output",
        str(out),
        "--frames",
        frames,
        "--workers",
        str(workers),
        "--no-progress",
    ]
    # the wrapper reports RUSAGE_CHILDREN of this one run (the largest of medaug and its workers)
    wrapper = (
        "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", wrapper, *predict], stdout=subprocess.PIPE, env=env, text=True)
    peak_pss = 0
    while proc.poll() is None:
        peak_pss = max(peak_pss, _tree_pss_kb(proc.pid))
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    stdout = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"medaug predict --frames {frames} exited {proc.returncode}: {stdout[-2000:]}")
    maxrss_kb = int(stdout.strip().splitlines()[-1])
    images = json.loads((out / "summary.json").read_text())["images"]
    return {
        "frames": frames,
        "images": images,
        "seconds": round(seconds, 2),
        "max_rss_mib": round(maxrss_kb / 1024, 1),
        "peak_pss_sum_mib": round(peak_pss / 1024, 1),
    }


def plain_monai_config(bundle: Path, files: list[Path], ckpt: Path, out: Path, batch_size: int, workers: int) -> dict:
    inference = shipped_network(json.loads((bundle / "configs" / "inference.json").read_text()))
    return {
        "image_size": inference["image_size"],
        "device": "$torch.device('cpu')",
        "network_def": {
            "_target_": "medaug.models.build_classifier",
            "name": inference["classifier"],
            "in_channels": 1,
            "num_classes": len(inference["class_names"]),
            "spatial_size": "@image_size",
        },
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image", "reader": "PydicomReader", "image_only": True},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "ScaleIntensityd", "keys": "image"},
                {"_target_": "Resized", "keys": "image", "spatial_size": "@image_size", "mode": "area"},
                {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
            ],
        },
        "dataset": {"_target_": "Dataset", "data": [{"image": str(f)} for f in files], "transform": "@preprocessing"},
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": batch_size,
            "shuffle": False,
            "num_workers": workers,
        },
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [{"_target_": "Activationsd", "keys": "pred", "softmax": True}],
        },
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": str(ckpt),
                "load_dict": {"model": "@network"},
                "map_location": "@device",
            },
            {
                "_target_": "ClassificationSaver",
                "output_dir": str(out),
                "batch_transform": "$lambda batch: [item['image'].meta for item in batch]",
                "output_transform": "$monai.handlers.from_engine(['pred'])",
            },
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
    }


def cost_breakdown(bundle: Path, repeats: int = 7) -> dict:
    """Where the time of one file goes: CPU ms per file (median of ``repeats``, one torch thread, in this
    process) of each step of medaug predict's decoding and of the plain MONAI preprocessing, for each
    sample of the mix, and of the model per image (batch 32)."""
    from monai.bundle import ConfigParser

    from medaug.io.readers import read_dicom_header, read_image_with_meta
    from medaug.models import build_classifier
    from medaug.pipelines.predict import _Decoder, _split_loader

    config = json.loads((bundle / "configs" / "inference.json").read_text())
    inference = shipped_network(config)
    size = inference["image_size"]
    medaug_pre = ConfigParser({"settings": inference, "preprocessing": config["preprocessing"]}).get_parsed_content(
        "preprocessing"
    )
    plain_pre = ConfigParser(
        plain_monai_config(bundle, [], bundle / "models" / "model.pt", bundle, 1, 0)
    ).get_parsed_content("preprocessing")
    decoder = _Decoder(medaug_pre, "middle", None)
    loader, rest = _split_loader(medaug_pre)

    def cpu_ms(steps: dict) -> dict:
        """CPU ms of each step, the steps interleaved in every repeat so that drift hits them alike."""
        samples = {name: [] for name in steps}
        for r in range(repeats + 1):
            for name, fn in steps.items():
                start = time.process_time()
                fn()
                if r:  # the first round warms up
                    samples[name].append(1000 * (time.process_time() - start))
        return {name: statistics.median(v) for name, v in samples.items()}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        per_sample = {}
        for name in SAMPLES:
            path = REPO / "tests" / "data" / "dicom" / name
            loaded = loader({"image": str(path)})
            ms = cpu_ms(
                {
                    "header": lambda path=path: read_dicom_header(path),
                    "read": lambda path=path: read_image_with_meta(path),
                    "transforms": lambda loaded=loaded: rest(dict(loaded)),
                    "whole": lambda path=path, name=name: decoder((path, name)),
                    "plain": lambda path=path: plain_pre({"image": str(path)}),
                }
            )
            per_sample[name] = {
                "header_checks": round(ms["header"], 1),
                "decode_and_display": round(ms["read"] - ms["header"], 1),
                "bundle_transforms": round(ms["transforms"], 1),
                "medaug_total": round(ms["whole"], 1),
                "plain_monai_preprocessing": round(ms["plain"], 1),
            }
        net = build_classifier(
            inference["classifier"], inference["channels"], len(inference["class_names"]), tuple(size)
        ).eval()
        batch = torch.rand(32, inference["channels"], *size)
        with torch.inference_mode():
            model = cpu_ms({"model": lambda: net(batch)})["model"] / 32
    finally:
        torch.set_num_threads(threads)
    mean = {k: round(statistics.mean(v[k] for v in per_sample.values()), 1) for k in next(iter(per_sample.values()))}
    return {"cpu_ms_per_file": per_sample, "mean_over_mix": mean, "model_ms_per_image": round(model, 1)}


def run_plain_monai(config: dict) -> int:
    from monai.bundle import ConfigParser

    parser = ConfigParser(config)
    parser.parse()
    evaluator = parser.get_parsed_content("evaluator")
    evaluator.run()
    return len(config["dataset"]["data"])


def run_medaug(bundle: Path, source: Path, out: Path, batch_size: int, workers: int, parallel: str) -> int:
    from medaug.cli import main

    code = main(
        [
            "predict",
            "--bundle",
            str(bundle),
            "--input",
            str(source),
            "--output",
            str(out),
            "--batch-size",
            str(batch_size),
            "--workers",
            str(workers),
            "--parallel",
            parallel,
            "--no-progress",
        ]
    )
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
    cli.add_argument(
        "--frames-count", type=int, default=500, help="frames of the multi-frame file (0: no multi-frame rows)"
    )
    cli.add_argument("--note", default="", help="a sentence added to the .md, e.g. what else ran on the machine")
    cli.add_argument("--keep", action="store_true", help="keep the generated folder")
    args = cli.parse_args()

    from medaug.models import build_classifier

    work = Path(tempfile.mkdtemp(prefix="medaug-throughput-"))
    try:
        bundle = Path(shutil.copytree(BUNDLE, work / "bundle", ignore=shutil.ignore_patterns("runs", "models")))
        inference = shipped_network(json.loads((bundle / "configs" / "inference.json").read_text()))
        torch.manual_seed(0)
        net = build_classifier(
            inference["classifier"],
            inference["channels"],
            len(inference["class_names"]),
            tuple(inference["image_size"]),
        )
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
        run_plain_monai(
            plain_monai_config(bundle, warm_files, ckpt, work / "o-warm-monai", args.batch_size, args.workers)
        )
        times = {name: [] for name in PATHS}
        images = {}
        for r in range(args.repeats):
            for name, parallel in MODES.items():
                seconds, images[name] = timed(
                    run_medaug, bundle, source, work / f"o-{name}-{r}", args.batch_size, args.workers, parallel
                )
                times[name].append(seconds)
            config = plain_monai_config(bundle, files, ckpt, work / f"o-monai-{r}", args.batch_size, args.workers)
            seconds, images["plain_monai_bundle"] = timed(run_plain_monai, config)
            times["plain_monai_bundle"].append(seconds)
            print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), file=sys.stderr)

        breakdown = cost_breakdown(bundle)
        print(
            f"cost breakdown: {breakdown['mean_over_mix']}, model {breakdown['model_ms_per_image']} ms", file=sys.stderr
        )

        multi_frame, multi_frame_mb = [], 0
        if args.frames_count:
            multi_frame_mb = make_multi_frame(work / "multi" / "series.dcm", args.frames_count) / 2**20
            for frames in ("all", "middle"):
                multi_frame.append(
                    run_multi_frame(bundle, work / "multi", work / f"o-multi-{frames}", frames, args.workers)
                )
                print(f"multi-frame {frames}: {multi_frame[-1]}", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    rates = {k: images[k] / statistics.median(v) for k, v in times.items()}
    result = {
        "what": "images/s predicting a folder of DICOM files, medaug predict vs plain MONAI bundle inference",
        "files": args.files,
        "file_mix": counts,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "network": f"{inference['classifier']} at {inference['image_size']} px, CPU",
        "images": images,
        "seconds": {k: [round(s, 3) for s in v] for k, v in times.items()},
        "images_per_s": {k: round(v, 1) for k, v in rates.items()},
        "default_parallel": DEFAULT_PARALLEL,
        "ratio_medaug_over_plain_monai": round(rates["medaug_predict"] / rates["plain_monai_bundle"], 3),
        f"ratio_medaug_{PLURAL[OTHER_PARALLEL]}_over_plain_monai": round(
            rates[f"medaug_predict_{PLURAL[OTHER_PARALLEL]}"] / rates["plain_monai_bundle"], 3
        ),
        "cost_breakdown": breakdown,
        "multi_frame": {
            "file": f"{args.frames_count} frames of 512x512 uint16 MONOCHROME2, uncompressed, "
            f"{multi_frame_mb:.0f} MiB, header of {MULTI_FRAME_SAMPLE}",
            "runs": multi_frame,
        }
        if multi_frame
        else None,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "note": args.note,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    table = "\n".join(
        [
            f"# Prediction throughput ({args.files} DICOM files, {result['network']}, batch {args.batch_size}, "
            f"{args.workers} workers, {os.cpu_count()} CPUs)",
            "",
            "| path | images | median s | images/s |",
            "|---|---|---|---|",
            *[
                f"| {k.replace('_', ' ')} | {images[k]} | {statistics.median(times[k]):.1f} | {rates[k]:.1f} |"
                for k in PATHS
            ],
            "",
            f"Ratio medaug predict (default, {DEFAULT_PARALLEL} decoding) / plain MONAI: "
            f"**{result['ratio_medaug_over_plain_monai']:.2f}x**; with `--parallel {OTHER_PARALLEL}`: "
            f"{result[f'ratio_medaug_{PLURAL[OTHER_PARALLEL]}_over_plain_monai']:.2f}x "
            f"(median of {args.repeats} runs each, alternating, same process, same files). File mix: "
            + ", ".join(f"{k} x{v}" for k, v in counts.items())
            + ". Generated by `benchmarks/predict_throughput.py`."
            + (f" {args.note}" if args.note else ""),
            "",
        ]
    )
    mean, j2k = breakdown["mean_over_mix"], breakdown["cpu_ms_per_file"].get("RG3_J2KR.dcm", {})
    table += "\n".join(
        [
            "",
            "## Where the time goes (CPU ms per file, one thread, median of 7, mean over the six samples of the mix)",
            "",
            "| step | ms per file | of which RG3_J2KR.dcm (JPEG 2000, 1760²) |",
            "|---|---|---|",
            *[f"| {k.replace('_', ' ')} | {v:.1f} | {j2k.get(k, 0):.1f} |" for k, v in mean.items()],
            f"| model ({result['network']}, batch 32), per image | {breakdown['model_ms_per_image']:.1f} | |",
            "",
            "Header checks: the header parse with the pixel-data and size checks; decode and display (the whole read "
            "less the header checks): pixels (MONAI "
            "`LoadImage(PydicomReader)`, pydicom for frames of multi-frame files), modality LUT, VOI window, "
            "MONOCHROME1; bundle transforms: the bundle's `Resized` and `EnsureTyped` on the loaded image; "
            "medaug total: "
            "all of it as a prediction worker runs it. Identifier scrubbing does not "
            "show: rows carry only the UIDs (HMAC-hashed with `--hash-uids`, microseconds). "
            "Both paths decode JPEG 2000 "
            "with the same OpenJPEG, which bounds the ratio.",
            "",
        ]
    )
    if multi_frame:
        table += "\n".join(
            [
                "",
                f"## Multi-frame ({result['multi_frame']['file']}; "
                f"`medaug predict` in a fresh process, {args.workers} workers)",
                "",
                "| path | images | s | max RSS of one process MiB | peak PSS of all its processes MiB |",
                "|---|---|---|---|---|",
                *[
                    f"| multi-frame `--frames {r['frames']}` | {r['images']} | {r['seconds']:.1f} "
                    f"| {r['max_rss_mib']:.0f} | "
                    f"{r['peak_pss_sum_mib']:.0f} |"
                    for r in multi_frame
                ],
                "",
            ]
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "predict_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "predict_throughput.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
