"""Data loading at scale: MONAI's ``Dataset`` / ``CacheDataset`` / ``PersistentDataset`` behind one
config switch, keys for the on-disk cache that follow the content, and an index cache so that a
large DICOM folder is decoded and indexed once, not at every run.

* ``Dataset``: decodes every image at every epoch (no memory, slowest).
* ``CacheDataset``: decodes once per process into memory (the deterministic transforms' output);
  under DDP every rank holds its own copy.
* ``PersistentDataset``: decodes once into ``<cache_dir>/persistent/`` and reads the tensors back
  in later epochs and later runs; ranks and runs share it. Files are named by
  :func:`entry_content_hash` (the image's pixel hash from the index, its label and reference) plus
  :func:`transform_hash` (the deterministic preprocessing and its parameters), so a changed image,
  label or ``image_size`` never reads a stale tensor. The files are read with
  ``torch.load(weights_only=True)``: tensors, MONAI's ``MetaTensor`` and plain metadata load, a
  file that would unpickle anything else (code planted in a shared cache) is refused, logged and
  recomputed (:class:`ContentKeyedPersistentDataset`).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import logging
import os
import pickle
from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.utils.enums import TraceKeys

from medaug.io import hashing
from medaug.io.atomic import write_json_atomic
from medaug.io.npz import parse_npz_ref

logger = logging.getLogger("medaug.data")
DATASET_TYPES = ("Dataset", "CacheDataset", "PersistentDataset")
INDEX_FORMAT = 2  # bump when what the index holds changes (2: hidden and non-regular files listed, label checks)

# MONAI allow-lists MetaTensor and its meta enums for weights_only loading; the keys of a MetaTensor's
# applied_operations (a str enum) are missing from that list. An enum's unpickling only looks a value up.
torch.serialization.add_safe_globals([TraceKeys])


@functools.lru_cache(maxsize=4096)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return hashing.file_sha256(path)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (remembered per path, size and modification time)."""
    info = os.stat(path)
    return _file_sha256(str(path), info.st_size, info.st_mtime_ns)


def entry_content_hash(item: dict) -> bytes:
    """``hash_func`` for ``PersistentDataset``: a key that changes with the image content.

    MONAI's default key pickles the datalist entry, i.e. the file *path*: an image replaced in
    place would keep its stale cached tensor. Entries built by :func:`medaug.io.build_study_data`
    carry ``pixel_hash`` (SHA-1 of the decoded pixels, from the index); others (e.g. images written
    by a later stage) are keyed by the SHA-256 of their file, or of their archive for ``.npz``
    references. The rest of the entry (label, reference, frame) is part of the key too, since the
    cached item holds it.
    """
    content = item.get("pixel_hash")
    if not content:
        ref = str(item["image"])
        parsed = parse_npz_ref(ref)
        content = file_sha256(parsed[0] if parsed else ref)
    plain = {k: v for k, v in item.items() if isinstance(v, (str, int, float, bool, type(None)))}
    plain["content"] = content
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest().encode()


def _describe(value, depth: int = 0):
    """A JSON-able description of a transform's settings (class, then public attributes), for
    :func:`transform_hash`. Objects without a stable description (functions, random states) are
    named by their type only."""
    if depth > 4:
        return type(value).__name__
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, (torch.dtype, np.dtype, type)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_describe(v, depth + 1) for v in value]
    if isinstance(value, np.ndarray) and value.size <= 64:
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _describe(v, depth + 1) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if hasattr(value, "__dict__"):
        state = {
            k: _describe(v, depth + 1)
            for k, v in sorted(vars(value).items())
            if not k.startswith("_") and not isinstance(v, np.random.RandomState)
        }
        return {"class": f"{type(value).__module__}.{type(value).__qualname__}", **state}
    return type(value).__name__


def transform_hash(transforms: Sequence) -> bytes:
    """``hash_transform`` for ``PersistentDataset``: a hash of the deterministic transforms that
    produce the cached tensors, with their parameters.

    MONAI's ``json_hashing`` falls back to the transforms' class names (transform objects are not
    JSON), so a new ``image_size`` would read tensors of the old size; ``pickle_hashing`` is not
    stable between processes. This hashes a description of each transform's public settings.
    """
    text = json.dumps(_describe(list(transforms)), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16].encode()


class ContentKeyedPersistentDataset(PersistentDataset):
    """MONAI's ``PersistentDataset`` (``weights_only=True``), with a cache file it refuses reported and
    recomputed.

    MONAI deletes a file that does not load as weights only with a "Corrupt cache file" warning, and
    stops with ``PermissionError`` when it may not delete it (another user's file in a shared cache
    folder). Here the entry is logged once as refused and recomputed: the file is replaced when it can
    be deleted, else the entry is computed at every read without touching it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs, weights_only=True)
        self._refused: set[str] = set()

    def _cachecheck(self, item_transformed):
        if self.cache_dir is None:
            return super()._cachecheck(item_transformed)
        hashfile = self.cache_dir / f"{self.hash_func(item_transformed).decode('utf-8')}{self.transform_hash}.pt"
        if hashfile.name in self._refused:
            return self._pre_transform(deepcopy(item_transformed))
        if not hashfile.is_file():  # a miss: MONAI computes the entry and writes it atomically
            return super()._cachecheck(item_transformed)
        try:
            return torch.load(hashfile, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
            reason = next((line for line in lines if "WeightsUnpickler error" in line), lines[0])
        try:
            hashfile.unlink()
            outcome = "recomputed and stored again"
        except OSError:
            self._refused.add(hashfile.name)
            outcome = "computed at every read (the file cannot be deleted)"
        logger.warning(
            "cache file %s refused: it holds more than tensors and plain metadata, or is corrupt (%s); the entry is %s",
            hashfile,
            reason[:300],
            outcome,
        )
        return self._cachecheck(item_transformed)


def make_dataset(
    data: Sequence[dict],
    transform,
    dataset_type: str = "CacheDataset",
    cache_dir: str | os.PathLike | None = None,
    cache_rate: float = 1.0,
    num_workers: int | None = 1,
    progress: bool = False,
) -> Dataset:
    """The MONAI dataset a bundle's ``dataset_type`` names.

    Args:
        data: datalist entries.
        transform: the full transform chain (deterministic preprocessing first).
        dataset_type: ``Dataset``, ``CacheDataset`` or ``PersistentDataset``.
        cache_dir: required for ``PersistentDataset``; tensors go to ``<cache_dir>/persistent``.
        cache_rate: share of the data ``CacheDataset`` keeps in memory.
        num_workers: threads ``CacheDataset`` fills its cache with.
        progress: progress bar while ``CacheDataset`` fills its cache.
    """
    if dataset_type not in DATASET_TYPES:
        raise ValueError(f"dataset_type {dataset_type!r} is not one of {DATASET_TYPES}")
    if dataset_type == "Dataset":
        return Dataset(data=data, transform=transform)
    if dataset_type == "CacheDataset":
        return CacheDataset(
            data=data, transform=transform, cache_rate=cache_rate, num_workers=num_workers, progress=progress
        )
    if not cache_dir:
        raise ValueError("dataset_type 'PersistentDataset' needs a cache_dir (a folder for the decoded images)")
    # track_meta keeps each image's reference (meta 'filename_or_obj') that predictions.csv names.
    return ContentKeyedPersistentDataset(
        data=data,
        transform=transform,
        cache_dir=Path(cache_dir) / "persistent",
        hash_func=entry_content_hash,
        hash_transform=transform_hash,
        track_meta=True,
    )


def folder_listing_key(dataset_dir: str | os.PathLike, *extra_files: str | os.PathLike | None, **settings) -> str:
    """SHA-256 of what an index depends on: every file below ``dataset_dir`` (relative path, size,
    modification time), any ``extra_files`` (a labels CSV kept elsewhere) and ``settings``.

    Listing a folder costs a ``stat`` per file; decoding costs a read and a decompression per image,
    so a folder that has not changed is recognised far faster than it is indexed.
    """
    root = Path(dataset_dir).resolve()
    digest = hashlib.sha256(
        json.dumps({"format": INDEX_FORMAT, "root": str(root), **settings}, sort_keys=True, default=str).encode()
    )

    def add(path: Path, name: str) -> None:
        info = path.stat()
        digest.update(f"{name}\0{info.st_size}\0{info.st_mtime_ns}\n".encode("utf-8", "backslashreplace"))

    if root.is_file():
        add(root, root.name)
    else:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                try:
                    add(path, path.relative_to(root).as_posix())
                except OSError:  # broken link or unreadable: its absence is part of the listing
                    digest.update(f"{path.relative_to(root).as_posix()}\0missing\n".encode("utf-8", "backslashreplace"))
    for extra in extra_files:
        if extra and Path(extra).is_file():
            add(Path(extra).resolve(), str(Path(extra).resolve()))
    return digest.hexdigest()


def load_index(cache_dir: str | os.PathLike, key: str) -> dict | None:
    """The index stored under ``key``, or None (absent or unreadable: it is rebuilt)."""
    path = Path(cache_dir) / f"index-{key}.json"
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def save_index(cache_dir: str | os.PathLike, key: str, index: dict) -> Path:
    return write_json_atomic(Path(cache_dir) / f"index-{key}.json", index)
