"""From a bundle's data keys to the train/val/test datalists a study runs on.

``build_study_data`` is what bundle configs call (``study_data`` section): source -> entries ->
index (decode, skip unusable files) -> splits (copies of an image kept together) -> conflicting-label
copies -> imbalance simulation (train only) -> leaks across splits (:mod:`medaug.io.leaks`) -> checks.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medaug.io.atomic import write_csv_atomic, write_json_atomic
from medaug.io.caching import folder_listing_key, load_index, save_index
from medaug.io.leaks import (
    CONFLICT_MODES,
    LEAK_ACTIONS,
    LEAK_MODES,
    DataLeakError,
    check_mode,
    handle_leaks,
    leak_error_message,
    without_hashes,
)
from medaug.io.leaks import conflicting_duplicates as find_conflicting_duplicates
from medaug.io.phi import pseudonym_key_id
from medaug.io.scan import cross_split_duplicates, scan_entries
from medaug.io.sources import detect_format, source_entries
from medaug.io.splits import (
    DEFAULT_FRACTIONS,
    SPLITS,
    assign_splits,
    cap_images_per_split,
    patients_in_several_splits,
    simulate_imbalance,
)

logger = logging.getLogger("medaug.data")
REPO_DATA_DIR = Path(__file__).resolve().parents[2] / "data"


def shipped_data_path(name: str) -> str:
    """Path of a dataset shipped in the repository's ``data/`` folder (see data/ATTRIBUTION.md)."""
    path = REPO_DATA_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"shipped dataset {name!r} not found in {REPO_DATA_DIR}")
    return str(path)


class TooFewImagesError(ValueError):
    """Too few usable images remain to train or evaluate (names the class, split and folder)."""


@dataclass
class StudyData:
    """The datalists of one study run, and what was learnt while building them."""

    dataset_dir: str
    data_format: str
    class_names: list[str]
    entries: list[dict]
    skipped: list[dict] = field(default_factory=list)
    leaks: list[dict] = field(default_factory=list)
    conflicts: list[dict] = field(default_factory=list)
    leak_summary: dict = field(default_factory=dict)
    patient_leaks: dict = field(default_factory=dict)
    imbalance: dict = field(default_factory=dict)
    capped: dict = field(default_factory=dict)
    report_paths: dict = field(default_factory=dict)

    def split(self, name: str) -> list[dict]:
        return [e for e in self.entries if e["split"] == name]

    @property
    def train(self) -> list[dict]:
        return self.split("train")

    @property
    def val(self) -> list[dict]:
        return self.split("val")

    @property
    def test(self) -> list[dict]:
        return self.split("test")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_labels(self) -> np.ndarray:
        return np.array([e["label"] for e in self.train], dtype=np.int64)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {class name: count}}`` with every class listed, zeros included."""
        out = {}
        for split in SPLITS:
            tally = Counter(e["label"] for e in self.split(split))
            out[split] = {name: tally.get(i, 0) for i, name in enumerate(self.class_names)}
        return out

    def content_hash(self) -> str:
        """SHA-256 over (split, label, pixel hash) of every image: changes when any pixel, label or
        split assignment changes, not when files are merely renamed or moved."""
        digest = hashlib.sha256()
        for key in sorted(f"{e['split']}|{e['label']}|{e['pixel_hash']}|{e.get('frame')}" for e in self.entries):
            digest.update(key.encode())
        return digest.hexdigest()

    def fingerprint(self) -> dict:
        """What MLflow records about the data of a run."""
        return {
            "source": str(Path(self.dataset_dir).resolve()),
            "format": self.data_format,
            "classes": list(self.class_names),
            "counts": self.counts(),
            "capped": self.capped,
            "content_hash": self.content_hash(),
            "skipped": len(self.skipped),
            "cross_split_duplicates": len(self.leaks),
            "duplicates": self.leak_summary,
            "imbalance": self.imbalance,
        }

    def sizes(self) -> Counter:
        return Counter(f"{e['height']}x{e['width']}" for e in self.entries)

    def modalities(self) -> Counter:
        return Counter(str(e.get("modality") or "unknown") for e in self.entries)

    def write_reports(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """``skipped.csv``, ``leaks.csv`` (groups of identical images in more than one split, and the
        test images ``leaks: drop_test`` dropped), ``conflicting_duplicates.csv`` (identical images
        with different labels) and ``datalist.json`` in ``out_dir``; the CSVs have a header only when
        nothing was found."""
        out_dir = Path(out_dir)
        paths = {"skipped": write_csv_atomic(out_dir / "skipped.csv", self.skipped, ["path", "reason"])}
        joined = lambda group, key: " | ".join(group.get(key, []))  # noqa: E731
        rows = [
            {
                "pixel_hash": g["pixel_hash"],
                "splits": " ".join(g["splits"]),
                "images": joined(g, "images"),
                "dropped": joined(g, "dropped"),
            }
            for g in self.leaks
        ]
        paths["leaks"] = write_csv_atomic(out_dir / "leaks.csv", rows, ["pixel_hash", "splits", "images", "dropped"])
        rows = [
            {"pixel_hash": g["pixel_hash"], "labels": " ".join(g["labels"]), "splits": " ".join(g["splits"])}
            | {"images": joined(g, "members"), "excluded": self.leak_summary.get("conflicting_duplicates") == "exclude"}
            for g in self.conflicts
        ]
        paths["conflicting_duplicates"] = write_csv_atomic(
            out_dir / "conflicting_duplicates.csv", rows, ["pixel_hash", "labels", "splits", "images", "excluded"]
        )
        keys = ("image", "frame", "label", "class_name", "patient_id", "split", "source", "synthetic", "modality")
        slim = [{k: e.get(k) for k in keys if k in e} for e in self.entries]
        paths["datalist"] = write_json_atomic(out_dir / "datalist.json", slim)
        self.report_paths = paths
        return paths


def index_dataset(
    dataset_dir: str,
    data_format: str | None,
    labels_csv: str | None,
    exclude,
    class_names,
    channels: int,
    frames: str,
    index_cache: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[str, list[dict], list[str], list[dict]]:
    """``(format, usable entries, class names, skipped)``: every file found and decoded once.

    With ``index_cache`` the result is kept in ``<index_cache>/index-<key>.json``, the key being
    the folder listing (paths, sizes, modification times), the labels CSV and the reading settings
    (:func:`medaug.io.caching.folder_listing_key`); the next run over an unchanged folder reads it
    instead of opening every file again. Splits and imbalance (seeded) are applied afterwards, so
    runs with other seeds share one index.
    """
    exclude = list(exclude or ())
    # the layout (and a labels.csv beside the folder that would go unused) is checked before the
    # index cache is consulted: a cached index must not hide that error
    fmt = data_format or detect_format(dataset_dir, labels_csv)
    key = None
    if index_cache is not None:
        # the index holds pseudonyms: another pseudonym key (by its id) is another index
        key = folder_listing_key(
            dataset_dir,
            labels_csv,
            data_format=data_format,
            exclude=exclude,
            class_names=list(class_names or []),
            channels=channels,
            frames=frames,
            pseudonym_key=pseudonym_key_id(),
        )
        cached = load_index(index_cache, key)
        if cached is not None:
            logger.info("index of %s read from %s (%d images)", dataset_dir, index_cache, len(cached["entries"]))
            return cached["format"], cached["entries"], cached["class_names"], cached["skipped"]
    fmt, raw, names, skipped = source_entries(
        dataset_dir, fmt, labels_csv=labels_csv, exclude=exclude, class_names=class_names
    )
    usable, unreadable = scan_entries(raw, channels=channels, frames=frames, progress=progress)
    skipped = skipped + unreadable
    if key is not None:
        save_index(index_cache, key, {"format": fmt, "entries": usable, "class_names": list(names), "skipped": skipped})
    return fmt, usable, list(names), skipped


def build_study_data(
    dataset_dir: str | os.PathLike,
    data_format: str | None = None,
    labels_csv: str | None = None,
    exclude: Sequence[str] | None = (),
    class_names: Sequence[str] | None = None,
    split_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    imbalance: Mapping | None = None,
    max_images_per_split: int | None = None,
    seed: int = 0,
    channels: int = 1,
    frames: str = "middle",
    min_train_per_class: int = 2,
    report_dir: str | os.PathLike | None = None,
    progress: bool = True,
    index_cache: str | os.PathLike | None = None,
    leaks: str = "report",
    conflicting_duplicates: str = "exclude",
) -> StudyData:
    """Build the datalists of a study from a bundle's data keys.

    Args:
        dataset_dir: an .npz archive, a folder per class (optionally under split folders), or a
            DICOM folder with a labels CSV.
        data_format: ``npz``, ``folder`` or ``dicom_csv`` to override detection.
        labels_csv: the labels CSV (default ``labels.csv`` at the top of ``dataset_dir``; one beside
            or above ``dataset_dir`` is an error until it is named here or ``data_format`` is set).
        exclude: glob patterns of files to leave out (e.g. ``['*_mask*']``).
        class_names: the classes, in label-index order: names of the integer labels of an .npz
            archive; for folders and CSVs the class folders / labels allowed, any other stopping
            the run with the list of them. None (or empty) learns the classes found, sorted.
        split_fractions: train/val/test shares where the source fixes no split.
        imbalance: the ``imbalance`` section (see :func:`medaug.io.splits.simulate_imbalance`).
        max_images_per_split: at most this many images in each split (the smoke overlay's small
            data), cut last, after the leak checks (a smoke run reports the data's leaks), by a seeded
            draw per class that keeps the class proportions and at least one image of each class
            (``min_train_per_class`` in train): :func:`medaug.io.splits.cap_images_per_split`. The
            train draw follows ``seed``; val and test are drawn alike for every seed, so the seeds
            of a study score the same images. None keeps every image.
        seed: seeds the split and the imbalance simulation.
        channels: 1 (grayscale) or 3.
        frames: ``middle`` or ``all`` frames of multi-frame files.
        min_train_per_class: fewer usable train images in a class stops the run with a clear error.
        report_dir: where ``skipped.csv`` / ``leaks.csv`` / ``conflicting_duplicates.csv`` /
            ``datalist.json`` are written (:meth:`StudyData.write_reports`).
        progress: progress bar while images are indexed.
        index_cache: a folder keeping the index (see :func:`index_dataset`); None indexes every time.
        leaks: test images identical to a train/val image are ``report``-ed and scored, dropped
            from test (``drop_test``), or stop the run (``error``, on any image in two splits).
        conflicting_duplicates: identical images with different labels are reported and left out
            (``exclude``) or used as labelled (``keep``).
    """
    dataset_dir = str(dataset_dir)
    check_mode("leaks", leaks, LEAK_MODES)
    check_mode("conflicting_duplicates", conflicting_duplicates, CONFLICT_MODES)
    fmt, usable, names, skipped = index_dataset(
        dataset_dir, data_format, labels_csv, exclude, class_names, channels, frames, index_cache, progress
    )
    entries = assign_splits(usable, split_fractions, seed=seed)
    conflicts = find_conflicting_duplicates(entries, names)
    if conflicting_duplicates == "exclude":
        entries = without_hashes(entries, conflicts)
    entries, imbalance_summary = simulate_imbalance(entries, imbalance, names, seed=seed)
    data = StudyData(dataset_dir, fmt, list(names), entries, skipped, imbalance=imbalance_summary)
    data.conflicts = conflicts
    data.leaks = cross_split_duplicates(entries)
    data.entries, data.leak_summary = handle_leaks(entries, leaks, data.leaks)
    data.leak_summary |= {
        "conflicting_duplicates": conflicting_duplicates,
        "conflicting_groups": len(conflicts),
        "conflicting_images": sum(len(g["images"]) for g in conflicts),
    }
    data.patient_leaks = patients_in_several_splits(data.entries)

    see = lambda name: f"; see {Path(report_dir) / name}" if report_dir is not None else ""  # noqa: E731
    if skipped:
        logger.warning("%d file(s) skipped as unusable (see skipped.csv), %d image(s) used", len(skipped), len(entries))
    if conflicts:
        logger.warning(
            "conflicting labels: %d group(s) of identical images (%d images) carry different labels, %s "
            "(conflicting_duplicates: %s)%s",
            len(conflicts),
            data.leak_summary["conflicting_images"],
            "all excluded" if conflicting_duplicates == "exclude" else "kept as labelled",
            conflicting_duplicates,
            see("conflicting_duplicates.csv"),
        )
    if data.leaks:
        summary = data.leak_summary
        logger.warning(
            "data leak: %d group(s) of images with identical pixels appear in more than one split; %d test "
            "image(s) duplicate a train/val image: %s%s",
            len(data.leaks),
            summary["leaked_test_images"],
            LEAK_ACTIONS[leaks],
            see("leaks.csv"),
        )
    if data.patient_leaks:
        logger.warning("data leak: %d patient(s) appear in more than one fixed split", len(data.patient_leaks))
    data.entries, data.capped = cap_images_per_split(
        data.entries, max_images_per_split, seed, splits=("train",), min_per_class=max(min_train_per_class, 1)
    )
    data.entries, capped_eval = cap_images_per_split(data.entries, max_images_per_split, 0, splits=("val", "test"))
    data.capped |= capped_eval
    if data.capped:
        cuts = ", ".join(f"{split} {c['before']} -> {c['after']}" for split, c in data.capped.items())
        logger.info("max_images_per_split=%d: %s images", max_images_per_split, cuts)
    if report_dir is not None:
        data.write_reports(report_dir)
    if leaks == "error" and data.leaks:
        raise DataLeakError(
            leak_error_message(data.leak_summary, str(data.report_paths["leaks"]) if report_dir is not None else None)
        )
    for name, n in data.counts()["train"].items():
        if n < min_train_per_class:
            raise TooFewImagesError(
                f"class {name!r} has {n} usable training image(s) in {dataset_dir} (need at least "
                f"{min_train_per_class}); {len(skipped)} file(s) were skipped, see skipped.csv"
            )
    for split in ("val", "test"):
        if not data.split(split):
            raise TooFewImagesError(f"no usable {split} images in {dataset_dir}")
    return data
