"""Build ``data/breast_chest_4class.npz``: a small 4-class set from the shipped MedMNIST archives.

medaug ships no multi-class medical dataset (no network at run time; the shipped archives are
binary), yet its multi-class paths (class-specific VAEs per class, per-class and macro metrics, the
rarest class of a study) must run on real images. This archive joins BreastMNIST (ultrasound:
malignant, normal/benign) and PneumoniaMNIST (chest X-ray: normal, pneumonia), both 28 px, into
four classes, drawing a seeded subset of each official split so that the train split is small and
imbalanced like the endoscopy set of the VAE study (321 images, 3 classes). The modality separates
the breast from the chest classes; the two within-modality distinctions are the real task.

Run once (``python scripts/build_multiclass_npz.py``); the output is committed with its md5 in
``data/ATTRIBUTION.md``. The draw is seeded, so a rerun writes the same arrays.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("breast_malignant", "breast_normal_benign", "chest_normal", "chest_pneumonia")
# (source archive, source label) of each class, in CLASSES order.
SOURCES = (("breastmnist.npz", 0), ("breastmnist.npz", 1), ("pneumoniamnist.npz", 0), ("pneumoniamnist.npz", 1))
# Images per class and split, drawn without replacement from the same official split.
COUNTS = {"train": (40, 100, 70, 110), "val": (10, 25, 15, 25), "test": (42, 114, 60, 90)}


def build(data_dir: Path, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {name: np.load(data_dir / name) for name in {s for s, _ in SOURCES}}
    out = {}
    for split, counts in COUNTS.items():
        images, labels = [], []
        for new_label, ((source, label), n) in enumerate(zip(SOURCES, counts)):
            src_images = arrays[source][f"{split}_images"]
            src_labels = arrays[source][f"{split}_labels"].reshape(-1)
            pool = np.flatnonzero(src_labels == label)
            if n > len(pool):
                raise ValueError(f"{source} {split} has {len(pool)} images of label {label}, {n} wanted")
            chosen = np.sort(rng.choice(pool, size=n, replace=False))
            images.append(src_images[chosen])
            labels.append(np.full((n, 1), new_label, dtype=np.uint8))
        out[f"{split}_images"] = np.concatenate(images).astype(np.uint8)
        out[f"{split}_labels"] = np.concatenate(labels)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "breast_chest_4class.npz")
    args = parser.parse_args()
    arrays = build(args.data_dir)
    tmp = args.out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(args.out)
    md5 = hashlib.md5(args.out.read_bytes()).hexdigest()
    sizes = {k: len(v) for k, v in arrays.items() if k.endswith("_labels")}
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, md5 {md5}); images per split: {sizes}")


if __name__ == "__main__":
    main()
