"""Augmentation throughput: medaug's modality presets against the nearest TorchIO chains, same images, same run.

Two chains, each on a real image resized to ``--size`` (default 256 x 256), one channel:

* **chest X-ray**: medaug's ``chest_xray`` preset (MONAI ``RandAffined``, ``Rand2DElasticd`` (gated by
  ``OneOf`` with ``Identityd``, see the preset), medaug
  exposure and quantum noise, ``OneOf`` scatter / MONAI Gaussian blur) on the CR chest radiograph
  ``tests/data/dicom/RG1_J2KI.dcm``; TorchIO: ``RandomAffine``, ``RandomElasticDeformation``,
  ``RandomGamma`` (exposure), ``RandomNoise`` (quantum noise), ``OneOf`` ``RandomBiasField`` (the
  nearest low-frequency intensity change to scatter) / ``RandomBlur``.
* **MRI**: medaug's ``mri`` preset (flip, affine, elastic, MONAI bias field, gamma, Rician noise,
  resolution loss, ``OneOf`` Gibbs / medaug k-space motion / ghosting) on ``MR2_UNCR.dcm``;
  TorchIO: ``RandomFlip``, ``RandomAffine``, ``RandomElasticDeformation``, ``RandomBiasField``,
  ``RandomGamma``, ``RandomNoise``, ``RandomAnisotropy``, ``OneOf`` ``RandomBlur`` (TorchIO has no
  Gibbs ringing) / ``RandomMotion`` / ``RandomGhosting``.

Ranges match as closely as the two APIs allow (degrees, scales, shifts, control points, noise levels).
Two modes: ``preset`` (the preset's own probabilities, TorchIO given the same ones) and ``always``
(every transform applied, probability 1; a ``OneOf`` still picks one member), which compares the
cost per transform rather than the presets' sampling. Both libraries run in this process with one
torch thread and one SimpleITK thread (as in a DataLoader worker), alternating, ``--repeats`` times
after a warm-up; images/s is the median. medaug's input is a channel-first MetaTensor in a
dictionary (as in a bundle), TorchIO's a ``tio.Subject`` with a ``ScalarImage`` (its idiom).
Writes ``benchmarks/results/augment_throughput.json`` and ``.md`` and prints the table.

    python benchmarks/augment_throughput.py [--images 100] [--repeats 3] [--size 256]

TorchIO is a benchmark-only dependency: ``pip install -e ".[bench]"`` (``make bench-augment``).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"
IMAGES = {"chest_xray": "RG1_J2KI.dcm", "mri": "MR2_UNCR.dcm"}


def load_image(name: str, size: int) -> torch.Tensor:
    from monai.transforms import Resize

    from medaug.io import read_entry_image

    pixels, _ = read_entry_image(str(REPO / "tests" / "data" / "dicom" / name))
    return Resize((size, size), mode="area")(torch.from_numpy(pixels)).as_tensor().contiguous()


def medaug_chain(preset: str, size: int, always: bool):
    from monai.transforms import Compose

    from medaug.transforms.presets import AugmentationPlan, load_preset

    overrides = {}
    if always:
        for tid, entry in load_preset(preset)[0]["transforms"].items():
            if "transforms" in entry:  # a OneOf: every member at prob 1; an Identityd gate is dropped
                members = [
                    {**copy.deepcopy(e), "prob": 1.0} for e in entry["transforms"] if e["_target_"] != "Identityd"
                ]
                overrides[tid] = {"transforms": members, "weights": [1.0] * len(members)}
            else:
                overrides[tid] = {"prob": 1.0}
    chain = Compose(AugmentationPlan(preset, overrides=overrides, image_size=(size, size)).transforms())
    chain.set_random_state(0)
    return chain


def torchio_chain(preset: str, size: int, always: bool):
    import torchio as tio

    def p(value: float) -> float:
        return 1.0 if always else value

    shift = size // 20 if preset == "chest_xray" else size // 16
    if preset == "chest_xray":
        return tio.Compose(
            [
                tio.RandomAffine(
                    scales=(0.92, 1.08, 0.92, 1.08, 1, 1),
                    degrees=(0, 0, 0, 0, -8, 8),
                    translation=(-shift, shift, -shift, shift, 0, 0),
                    default_pad_value="minimum",
                    p=p(0.5),
                ),
                tio.RandomElasticDeformation(num_control_points=(5, 5, 5), max_displacement=(1.5, 1.5, 0), p=p(0.15)),
                tio.RandomGamma(log_gamma=(-0.16, 0.14), p=p(0.3)),
                tio.RandomNoise(std=(0.0, 0.02), p=p(0.3)),
                tio.OneOf(
                    {
                        tio.RandomBiasField(coefficients=0.3, p=p(0.25)): 0.5,
                        tio.RandomBlur(std=(0.25, 0.8), p=p(0.25)): 0.5,
                    }
                ),
            ]
        )
    return tio.Compose(
        [
            tio.RandomFlip(axes=(1,), flip_probability=1.0, p=p(0.5)),
            tio.RandomAffine(
                scales=(0.9, 1.1, 0.9, 1.1, 1, 1),
                degrees=(0, 0, 0, 0, -11.5, 11.5),
                translation=(-shift, shift, -shift, shift, 0, 0),
                p=p(0.5),
            ),
            tio.RandomElasticDeformation(num_control_points=(5, 5, 5), max_displacement=(2.0, 2.0, 0), p=p(0.2)),
            tio.RandomBiasField(coefficients=0.2, p=p(0.3)),
            tio.RandomGamma(log_gamma=(-0.22, 0.22), p=p(0.3)),
            tio.RandomNoise(std=(0.0, 0.03), p=p(0.2)),
            tio.RandomAnisotropy(axes=(0, 1), downsampling=(1, 2), p=p(0.1)),
            tio.OneOf(
                {
                    tio.RandomBlur(std=(0.25, 0.8), p=p(0.15)): 1 / 3,
                    tio.RandomMotion(degrees=4, translation=4, num_transforms=2, p=p(0.15)): 1 / 3,
                    tio.RandomGhosting(num_ghosts=(2, 4), axes=(0, 1), intensity=(0.2, 0.6), p=p(0.15)): 1 / 3,
                }
            ),
        ]
    )


def time_medaug(chain, image: torch.Tensor, n: int) -> float:
    from monai.data import MetaTensor

    start = time.perf_counter()
    for _ in range(n):
        chain({"image": MetaTensor(image.clone())})
    return time.perf_counter() - start


def time_torchio(chain, image: torch.Tensor, n: int) -> float:
    import torchio as tio

    start = time.perf_counter()
    for _ in range(n):
        chain(tio.Subject(image=tio.ScalarImage(tensor=image.clone()[..., None])))
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="images per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per library and chain (median taken)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    args = parser.parse_args(argv)

    import SimpleITK as sitk
    import torchio as tio

    from medaug.io.atomic import atomic_path, write_json_atomic

    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    torch.manual_seed(0)
    results = {}
    for preset, file in IMAGES.items():
        image = load_image(file, args.size)
        for mode in ("preset", "always"):
            always = mode == "always"
            chains = {
                "medaug": (medaug_chain(preset, args.size, always), time_medaug),
                "torchio": (torchio_chain(preset, args.size, always), time_torchio),
            }
            times = {lib: [] for lib in chains}
            for chain, timer in chains.values():
                timer(chain, image, 5)  # warm-up
            for _ in range(args.repeats):
                for lib, (chain, timer) in chains.items():
                    times[lib].append(timer(chain, image, args.images))
            row = {
                lib: {"median_s": statistics.median(t), "images_per_s": args.images / statistics.median(t), "runs_s": t}
                for lib, t in times.items()
            }
            row["ratio"] = row["medaug"]["images_per_s"] / row["torchio"]["images_per_s"]
            results[f"{preset}/{mode}"] = row
            print(
                f"{preset:10s} {mode:7s} medaug {row['medaug']['images_per_s']:7.1f} img/s   "
                f"torchio {row['torchio']['images_per_s']:7.1f} img/s   ratio {row['ratio']:.2f}x",
                flush=True,
            )

    import monai

    report = {
        "benchmark": "augment_throughput",
        "size": [args.size, args.size],
        "images_per_run": args.images,
        "repeats": args.repeats,
        "torch_threads": 1,
        "sitk_threads": 1,
        "images": IMAGES,
        "versions": {
            "torch": torch.__version__,
            "monai": monai.__version__,
            "torchio": tio.__version__,
            "python": platform.python_version(),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_1min_at_end": os.getloadavg()[0],
        },
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / "augment_throughput.json", report)
    lines = [
        f"# Augmentation throughput ({args.size} x {args.size}, 1 channel, CPU, 1 torch thread, "
        f"{args.images} images x {args.repeats} runs, median)",
        "",
        "| chain | mode | medaug images/s | TorchIO images/s | ratio medaug / TorchIO |",
        "|---|---|---|---|---|",
    ]
    for key, row in results.items():
        preset, mode = key.split("/")
        lines.append(
            f"| {preset} | {mode} | {row['medaug']['images_per_s']:.1f} | {row['torchio']['images_per_s']:.1f} | "
            f"**{row['ratio']:.2f}x** |"
        )
    lines += [
        "",
        "`preset`: each preset's own probabilities (TorchIO given the same); `always`: every transform "
        "applied. Same process, alternating runs, real images (CR chest RG1_J2KI.dcm, MR shoulder MR2_UNCR.dcm) "
        f"resized to {args.size} px. Versions: torch {torch.__version__}, MONAI {monai.__version__}, TorchIO "
        f"{tio.__version__}; {os.cpu_count()} CPUs, 1-minute load average at the end "
        f"{os.getloadavg()[0]:.1f} (a shared machine: both libraries ran interleaved under the same load). "
        "Generated by `benchmarks/augment_throughput.py`.",
    ]
    with atomic_path(RESULTS / "augment_throughput.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
