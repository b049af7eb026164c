"""The unlabeled pool the pretraining learns from, and the guarantee that it holds no val/test image.

Sources (the bundle's ``pretrain#pool``): the study's own train split (``study_train``), the train
arrays of the datasets shipped in ``data/`` (``shipped``: :data:`SHIPPED_POOL`; their val and test
arrays are never read) and any folders of images the user names (``folders``: DICOM, PNG, JPEG,
NIfTI, read by :mod:`medaug.io`'s readers; a file that cannot be read is skipped and listed, not
fatal). Every image is read as the study reads it (channels), resized to the study's image size
(area interpolation, as the bundle's preprocessing) and kept as uint8.

Two images are "the same" when these uint8 pixels are identical (SHA-1 of the bytes with the
shape). Copies within the pool are kept once; a pool image identical to a val or test image of the
study (read and resized the same way) is dropped and counted. What is not caught: a val/test image
that was itself resized, cropped or re-encoded differently before it reached the pool (e.g. the
28 px BreastMNIST against the 64 px one: which is why ``breastmnist.npz`` and the 4-class subset
``breast_chest_4class.npz`` are not in the shipped pool; their images are those of the two archives
that are).

The pool's fingerprint is the hash of its sorted image hashes: the same set of images gives the
same fingerprint whatever their order or origin, and the pretraining cache is keyed by it, so a
cached pretraining is only ever reused for a pool that, for this study too, holds no val/test image.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from medaug.io import read_entry_image, shipped_data_path
from medaug.io.npz import npz_ref, npz_splits
from medaug.io.readers import UnusableImageError
from medaug.io.sources import looks_like_image, walk_input
from medaug.settings import SettingsError

logger = logging.getLogger("medaug.pretrain")

# BreastMNIST at 64 px and PneumoniaMNIST: breastmnist.npz holds the same images at 28 px and
# breast_chest_4class.npz a subset of both, so either would only add near-copies.
SHIPPED_POOL = ("breastmnist_64.npz", "pneumoniamnist.npz")
POOL_DEFAULTS = {"study_train": True, "shipped": True, "folders": [], "max_images": None}


def pool_settings(pool: Mapping | None) -> dict:
    """``pretrain#pool`` with its defaults; a :class:`SettingsError` for a key it does not have."""
    pool = dict(pool or {})
    unknown = sorted(set(pool) - set(POOL_DEFAULTS))
    if unknown:
        raise SettingsError(
            f"pretrain#pool#{unknown[0]}", "not a pool setting", f"the settings are {', '.join(POOL_DEFAULTS)}"
        )
    settings = {**POOL_DEFAULTS, **pool}
    folders = settings["folders"] or []
    settings["folders"] = [str(folders)] if isinstance(folders, (str, os.PathLike)) else [str(f) for f in folders]
    if settings["max_images"] is not None and int(settings["max_images"]) < 2:
        raise SettingsError(
            "pretrain#pool#max_images", "must be at least 2 (or null for all)", value=settings["max_images"]
        )
    return settings


def to_study_pixels(pixels: np.ndarray, image_size: Sequence[int]) -> torch.Tensor:
    """(C, H, W) float pixels in [0, 1] -> (C, *image_size) uint8: area-resized as the bundle's
    preprocessing resizes, then rounded to 8 bits."""
    image = np.asarray(pixels, dtype=np.float32)
    if tuple(image.shape[-2:]) != tuple(image_size):
        resized = F.interpolate(torch.from_numpy(image)[None], size=tuple(int(s) for s in image_size), mode="area")
        image = resized[0].numpy()
    # numpy, not torch, for these element-wise steps: on tiny tensors torch's thread pool costs ms per call
    return torch.from_numpy(np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8))


def pixel_hash(image: torch.Tensor) -> str:
    """SHA-1 of a uint8 image's shape and bytes."""
    digest = hashlib.sha1(str(tuple(image.shape)).encode())
    digest.update(image.contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Pool:
    """The pool's images (N, C, H, W) uint8, their ids and hashes, and what was left out."""

    images: torch.Tensor
    ids: list[str]
    hashes: list[str]
    sources: dict[str, int] = field(default_factory=dict)
    excluded_val_test: list[str] = field(default_factory=list)
    duplicates: int = 0
    skipped: list[dict] = field(default_factory=list)
    capped: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self) -> str:
        """SHA-256 of the sorted image hashes: the same images give the same fingerprint."""
        return hashlib.sha256("\n".join(sorted(self.hashes)).encode()).hexdigest()

    def summary(self) -> dict:
        return {
            "size": len(self),
            "fingerprint": self.fingerprint(),
            "sources": dict(self.sources),
            "excluded_val_test": len(self.excluded_val_test),
            "excluded_val_test_ids": list(self.excluded_val_test),
            "duplicates_within_pool": self.duplicates,
            "skipped": len(self.skipped),
            "capped": dict(self.capped),
            "hash": "SHA-1 of the uint8 pixels after resizing to the study's image size and channels",
        }


def study_images(entries: Iterable[Mapping], channels: int, image_size) -> Iterable[tuple[str, torch.Tensor]]:
    """``(id, uint8 pixels)`` of datalist entries, read as the study reads them and resized as pool images."""
    for e in entries:
        pixels, _ = read_entry_image(str(e["image"]), channels=channels, frame=e.get("frame"))
        yield (
            str(e["image"]) + ("" if e.get("frame") is None else f"@{e['frame']}"),
            to_study_pixels(pixels, image_size),
        )


def eval_hashes(study_data, channels: int, image_size: Sequence[int]) -> set[str]:
    """Hashes of the study's val and test images, read and resized as pool images are."""
    return {pixel_hash(image) for _, image in study_images([*study_data.val, *study_data.test], channels, image_size)}


def _shipped_images(name: str, channels: int, image_size) -> Iterable[tuple[str, torch.Tensor]]:
    path = shipped_data_path(name)
    images, _ = npz_splits(path)["train"]  # the train arrays only: never val or test
    for i in range(len(images)):
        pixels, _ = read_entry_image(npz_ref(path, "train", i), channels=channels)
        yield f"{name}#train/{i}", to_study_pixels(pixels, image_size)


def folder_images(
    folder: str | os.PathLike, channels: int, image_size: Sequence[int], skipped: list[dict]
) -> Iterable[tuple[str, torch.Tensor]]:
    """Every readable image below ``folder`` (middle frame of multi-frame files); what cannot be
    used is appended to ``skipped`` as ``{path, reason}``."""
    root = Path(folder)
    if not root.is_dir():
        raise SettingsError("pretrain#pool#folders", "no such folder", value=str(folder))
    files, problems = walk_input(root)
    skipped += [{"path": str(root / p["path"]), "reason": p["reason"]} for p in problems]
    for path, _ in files:
        if not looks_like_image(path):
            skipped.append({"path": str(path), "reason": "not an image file (DICOM, PNG, JPEG or NIfTI)"})
            continue
        try:
            pixels, _ = read_entry_image(str(path), channels=channels)
        except (UnusableImageError, OSError, ValueError) as err:
            skipped.append({"path": str(path), "reason": getattr(err, "reason", None) or str(err)})
            continue
        yield str(path), to_study_pixels(pixels, image_size)


def build_pool(
    study_data,
    image_size: Sequence[int],
    channels: int = 1,
    study_train: bool = True,
    shipped: bool = True,
    folders: Sequence[str | os.PathLike] = (),
    max_images: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Pool:
    """The pool of the module docstring. ``study_data`` None (``medaug pretrain`` on a folder): no
    study train split and nothing to exclude. ``max_images`` keeps a seeded draw of that many."""
    size = tuple(int(s) for s in image_size)
    skipped: list[dict] = []
    sources: list[tuple[str, Iterable]] = []
    if study_train and study_data is not None:
        sources.append(("study_train", study_images(study_data.train, channels, size)))
    if shipped:
        sources += [(name, _shipped_images(name, channels, size)) for name in SHIPPED_POOL]
    for folder in folders:
        sources.append((str(folder), folder_images(folder, channels, size, skipped)))
    forbidden = eval_hashes(study_data, channels, size) if study_data is not None else set()
    images, ids, hashes, origins, seen, excluded, duplicates = [], [], [], [], set(), [], 0
    for source, items in sources:
        for image_id, image in tqdm(items, desc=f"pretraining pool: {source}", disable=not progress, leave=False):
            digest = pixel_hash(image)
            if digest in forbidden:
                excluded.append(image_id)
            elif digest in seen:
                duplicates += 1
            else:
                seen.add(digest)
                images.append(image)
                ids.append(image_id)
                hashes.append(digest)
                origins.append(source)
    capped = {}
    order = sorted(range(len(hashes)), key=hashes.__getitem__)  # independent of the sources' order
    if max_images is not None and len(order) > int(max_images):
        rng = np.random.default_rng(seed)
        keep = sorted(rng.choice(len(order), size=int(max_images), replace=False).tolist())
        capped = {"before": len(order), "after": len(keep)}
        order = [order[k] for k in keep]
    kept = Counter(origins[i] for i in order)
    if excluded:
        logger.info("pretraining pool: %d image(s) identical to a val/test image of the study left out", len(excluded))
    if skipped:
        logger.warning("pretraining pool: %d file(s) skipped as unusable", len(skipped))
    stack = torch.stack([images[i] for i in order]) if order else torch.empty(0, channels, *size, dtype=torch.uint8)
    return Pool(
        stack,
        [ids[i] for i in order],
        [hashes[i] for i in order],
        {name: kept.get(name, 0) for name, _ in sources},
        excluded,
        duplicates,
        skipped,
        capped,
    )
