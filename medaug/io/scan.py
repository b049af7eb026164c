"""Index a datalist once: decode every image, leave out what cannot be used (with a reason), and
record what the rest are (size, modality, a hash of the pixel content).

Decoding everything up front costs one pass over the data but means a corrupt file in a folder of
500 is reported before training starts instead of crashing a data-loader worker in epoch 3, and it
gives the content hashes that reveal the same image sitting in two splits.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from medaug.io.loader import read_entry_image
from medaug.io.npz import parse_npz_ref
from medaug.io.phi import pseudonym  # noqa: F401  (re-exported: medaug.io.scan.pseudonym is a contract)
from medaug.io.readers import UnusableImageError, read_dicom_header
from medaug.io.sources import NOT_REGULAR

FRAME_MODES = ("middle", "all")


def display_path(entry: dict) -> str:
    """How a person refers to the entry's file: relative to dataset_dir where known."""
    return entry.get("relpath") or entry["image"]


def _not_a_regular_file(image: str) -> str | None:
    """The reason a referenced file cannot be opened without risk (a named pipe blocks ``open()``
    forever, a device never ends), or None. The walks in :mod:`medaug.io.sources` leave these out
    already; this covers datalists made elsewhere and files replaced after the walk."""
    parsed = parse_npz_ref(image)
    try:
        mode = os.stat(parsed[0] if parsed else image).st_mode
    except OSError:
        return None  # the reader says what is wrong (missing, unreadable)
    return None if stat.S_ISREG(mode) else NOT_REGULAR


def _scan_one(entry: dict, channels: int, frames: str) -> tuple[list[dict], dict | None]:
    image = entry["image"]
    try:
        reason = _not_a_regular_file(image)
        if reason:
            return [], {"path": display_path(entry), "reason": reason}
        header = None
        if parse_npz_ref(image) is None and not image.lower().endswith((".png", ".jpg", ".jpeg", ".nii", ".nii.gz")):
            try:
                header = read_dicom_header(image)
            except UnusableImageError:
                header = None  # not DICOM: the reader below says what it is
        n_frames = header["number_of_frames"] if header else 1
        wanted = list(range(n_frames)) if (frames == "all" and n_frames > 1) else [entry.get("frame")]
        results = []
        for frame in wanted:
            pixels, meta = read_entry_image(image, channels=channels, frame=frame)
            item = dict(entry)
            if frame is not None:
                item["frame"] = int(frame)
            if header:
                if not item.get("patient_id") and header.get("patient_id"):
                    item["patient_id"] = header["patient_id"]
                item["sop_instance_uid"] = header.get("sop_instance_uid")
                item["study_instance_uid"] = header.get("study_instance_uid")
            item["modality"] = (header or {}).get("modality") or meta.get("modality") or meta.get("kind")
            item["height"], item["width"] = int(pixels.shape[-2]), int(pixels.shape[-1])
            item["pixel_hash"] = hashlib.sha1(pixels.tobytes()).hexdigest()
            results.append(item)
        return results, None
    except UnusableImageError as err:
        return [], {"path": display_path(entry), "reason": err.reason}
    except Exception as err:  # a decoder bug must not stop the other 499 files
        # the exception's type only: decoder messages may quote header values (patient identifiers)
        return [], {"path": display_path(entry), "reason": f"could not be read ({type(err).__name__})"}


def scan_entries(
    entries: list[dict],
    *,
    channels: int = 1,
    frames: str = "middle",
    workers: int | None = None,
    progress: bool = True,
) -> tuple[list[dict], list[dict]]:
    """Decode every entry; returns ``(usable entries, skipped records)`` in the input order.

    Args:
        channels: 1 (grayscale) or 3, as the model will see them.
        frames: ``"middle"`` uses the middle frame of multi-frame files, ``"all"`` makes one entry per frame.
        workers: decoding threads (pydicom and the JPEG 2000 decoder release the GIL for much of the work).
    """
    if frames not in FRAME_MODES:
        raise ValueError(f"frames must be one of {FRAME_MODES}, got {frames!r}")
    workers = workers or min(4, os.cpu_count() or 1)
    only_arrays = all(parse_npz_ref(e["image"]) is not None for e in entries)
    with ThreadPoolExecutor(max_workers=1 if only_arrays else workers) as pool:
        results = pool.map(lambda e: _scan_one(e, channels, frames), entries)
        results = list(tqdm(results, total=len(entries), desc="indexing images", disable=not progress, leave=False))
    usable, skipped = [], []
    for items, problem in results:
        usable.extend(items)
        if problem:
            skipped.append(problem)
    for item in usable:
        # No identifier known: the file is its own patient; a known identifier is pseudonymised.
        pid = item.get("patient_id")
        item["patient_id"] = pseudonym(str(pid)) if pid else pseudonym(display_path(item))
    return usable, skipped


def cross_split_duplicates(entries: list[dict]) -> list[dict]:
    """Groups of images whose pixel content is identical and that sit in more than one split.

    Public datasets often carry such leaks; a test image that is also a training image inflates
    every metric. Returns ``[{"pixel_hash", "splits", "images"}]``.
    """
    by_hash = defaultdict(list)
    for entry in entries:
        by_hash[entry["pixel_hash"]].append(entry)
    leaks = []
    for digest, group in by_hash.items():
        splits = sorted({e["split"] for e in group})
        if len(splits) > 1:
            leaks.append({"pixel_hash": digest, "splits": splits, "images": [display_path(e) for e in group]})
    return leaks
