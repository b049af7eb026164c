"""Predictions of a trained bundle on a folder of unlabelled images (DICOM with or without
extension, PNG/JPEG, NIfTI), read through the same ``medaug.io`` path as training."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medaug.io.atomic import write_csv_atomic, write_json_atomic
from medaug.io.scan import scan_entries
from medaug.io.sources import looks_like_image, walk_files
from medaug.pipelines.evaluate import PredictionCollector

logger = logging.getLogger("medaug.predict")


def folder_datalist(input_dir: str | os.PathLike, *, channels: int = 1, frames: str = "middle",
                    exclude: Sequence[str] = (), progress: bool = True) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """``(usable entries, skipped)`` for every file below ``input_dir``; nothing is written there."""
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"input folder {str(root)!r} does not exist")
    entries, skipped = [], []
    for path, relative in walk_files(root, exclude):
        if looks_like_image(path):
            entries.append({"image": str(path.resolve()), "relpath": relative, "label": -1, "split": "predict",
                            "source": "predict", "synthetic": False})  # fmt: skip
        else:
            skipped.append({"path": relative, "reason": "not an image file (unknown type, not DICOM)"})
    usable, unreadable = scan_entries(entries, channels=channels, frames=frames, progress=progress)
    return usable, skipped + unreadable


class FolderPrediction:
    """Run an evaluator over a folder datalist and write ``predictions.csv``/``.json`` and ``skipped.csv``.

    Args:
        evaluator: a MONAI ``SupervisedEvaluator`` over ``entries`` (its handlers load the checkpoint).
        entries: from :func:`folder_datalist`.
        skipped: the files left out, with reasons.
        class_names: output classes in order.
        output_dir: where the files go (written atomically).
    """

    def __init__(self, evaluator, entries: list[dict], skipped: list[dict], class_names: Sequence[str],
                 output_dir: str | os.PathLike) -> None:  # fmt: skip
        self.evaluator = evaluator
        self.entries = entries
        self.skipped = skipped
        self.class_names = list(class_names)
        self.output_dir = Path(output_dir)
        self.collector = PredictionCollector()
        self.collector.attach(evaluator)

    def run(self) -> list[dict]:
        start = time.perf_counter()
        if self.entries:
            self.evaluator.run()
        by_ref = {}
        for e in self.entries:
            by_ref.setdefault(e["image"], e)
        rows = []
        for ref, frame, prob in zip(self.collector.refs, self.collector.frames, self.collector.probs):
            entry = by_ref.get(ref, {})
            row = {"path": entry.get("relpath", ref), "frame": "" if frame is None else frame,
                   "predicted": self.class_names[int(np.argmax(prob))],
                   "sop_instance_uid": entry.get("sop_instance_uid") or "",
                   "study_instance_uid": entry.get("study_instance_uid") or ""}  # fmt: skip
            row.update({f"prob_{n}": round(float(p), 6) for n, p in zip(self.class_names, prob)})
            rows.append(row)
        fields = ["path", "frame", "sop_instance_uid", "study_instance_uid", "predicted",
                  *[f"prob_{n}" for n in self.class_names]]  # fmt: skip
        write_csv_atomic(self.output_dir / "predictions.csv", rows, fields)
        write_json_atomic(self.output_dir / "predictions.json", rows)
        write_csv_atomic(self.output_dir / "skipped.csv", self.skipped, ["path", "reason"])
        seconds = time.perf_counter() - start
        print(f"predicted {len(rows)} image(s), skipped {len(self.skipped)} file(s) in {seconds:.1f} s "
              f"({len(rows) / max(seconds, 1e-9):.1f} images/s); outputs in {self.output_dir}")  # fmt: skip
        return rows
