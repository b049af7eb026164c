"""MedMNIST-layout ``.npz`` archives as a data source.

An archive holds ``<split>_images`` (N, H, W) or (N, H, W, 3) uint8 arrays and ``<split>_labels``
(N,) or (N, 1) integer arrays for ``split`` in train/val/test. Images stay inside the archive: a
datalist entry refers to one of them with the string ``"<archive path>#<split>/<index>"`` so that
datalists stay JSON-serialisable (manifests, MLflow) while pixels are read lazily and cached once
per process.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import numpy as np

from medaug.io.readers import UnusableImageError

NPZ_SPLITS = ("train", "val", "test")
_REF = re.compile(r"^(?P<path>.+\.npz)#(?P<split>[A-Za-z]+)/(?P<index>\d+)$")


def npz_ref(path: str | os.PathLike, split: str, index: int) -> str:
    """The datalist ``image`` string for image ``index`` of ``split`` in archive ``path``."""
    return f"{Path(path).resolve()}#{split}/{int(index)}"


def parse_npz_ref(ref: str) -> tuple[str, str, int] | None:
    """``(archive path, split, index)`` for an npz reference, or None for an ordinary file path."""
    match = _REF.match(str(ref))
    if match is None:
        return None
    return match["path"], match["split"], int(match["index"])


@functools.lru_cache(maxsize=8)
def load_npz_arrays(path: str) -> dict[str, np.ndarray]:
    """All arrays of an archive, read once per process (archives here are a few MB)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as err:
        raise UnusableImageError(path, f"cannot read .npz archive ({err})") from err


def npz_splits(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (images, labels)}`` for the splits present; labels flattened to (N,) int64."""
    arrays = load_npz_arrays(str(Path(path).resolve()))
    splits = {}
    for split in NPZ_SPLITS:
        images, labels = arrays.get(f"{split}_images"), arrays.get(f"{split}_labels")
        if images is None and labels is None:
            continue
        if images is None or labels is None:
            raise ValueError(f"{path}: has only one of '{split}_images' and '{split}_labels'")
        labels = np.asarray(labels).reshape(len(labels), -1)
        if labels.shape[1] != 1:
            raise ValueError(f"{path}: '{split}_labels' must hold one class per image (multi-label is not supported)")
        if len(images) != len(labels):
            raise ValueError(f"{path}: {len(images)} '{split}_images' but {len(labels)} '{split}_labels'")
        splits[split] = (images, labels[:, 0].astype(np.int64))
    if not splits:
        raise ValueError(f"{path}: no MedMNIST-layout arrays (expected keys like 'train_images', 'train_labels')")
    return splits


def read_npz_image(ref: str, *, channels: int = 1) -> np.ndarray:
    """Image of an npz reference as (C, H, W) float32 in [0, 1] (uint8 / 255; RGB to luma for C=1)."""
    parsed = parse_npz_ref(ref)
    if parsed is None:
        raise ValueError(f"not an npz reference: {ref!r}")
    path, split, index = parsed
    images, _ = npz_splits(path)[split]
    image = np.asarray(images[index], dtype=np.float32)
    scale = 255.0 if images.dtype == np.uint8 else max(float(np.max(images)), 1.0)
    image = image / scale
    if image.ndim == 2:
        image = image[None]
    else:  # (H, W, C) as MedMNIST stores colour images
        image = np.moveaxis(image, -1, 0)
    if channels == 1 and image.shape[0] == 3:
        image = np.tensordot(np.array([0.299, 0.587, 0.114], dtype=np.float32), image, axes=1)[None]
    elif channels == 3 and image.shape[0] == 1:
        image = np.repeat(image, 3, axis=0)
    return np.ascontiguousarray(image, dtype=np.float32)
