"""What a study does with duplicate images: leaks across splits and copies with conflicting labels.

Duplicates are images whose decoded pixels are identical (``pixel_hash`` from :mod:`medaug.io.scan`;
byte-identical files are a special case). Two settings decide what happens to them:

* ``leaks`` (``report`` | ``drop_test`` | ``error``): a test image that is also a train or val image
  inflates every metric. ``report`` scores it anyway and says so (results stay comparable with
  published work on the same benchmark splits), ``drop_test`` removes exactly those test images
  before scoring, ``error`` stops the run before training.
* ``conflicting_duplicates`` (``exclude`` | ``keep``): one image with two labels is a labelling
  error the model cannot learn from or be scored on; ``exclude`` leaves every copy out, ``keep``
  uses them as labelled. They are reported either way, also when all copies sit in one split.

Nothing here is in MONAI or scikit-learn: both take the datalist as given.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from medaug.io.scan import display_path

LEAK_MODES = ("report", "drop_test", "error")
CONFLICT_MODES = ("exclude", "keep")
LEAK_ACTIONS = {
    "report": "scored (leaks: report)",
    "drop_test": "dropped before scoring (leaks: drop_test)",
    "error": "none allowed (leaks: error)",
}


class DataLeakError(ValueError):
    """``leaks: error`` and images repeat across splits; the message names the count and leaks.csv."""


def check_mode(key: str, value: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming the key and the choices."""
    if value not in choices:
        raise ValueError(f"{key}: {value!r} is not one of {', '.join(choices)}")
    return value


def conflicting_duplicates(entries: list[dict], class_names: Sequence[str]) -> list[dict]:
    """Groups of images with identical pixels but more than one label, wherever they sit.

    Returns ``[{"pixel_hash", "labels", "splits", "images", "members"}]``: labels and splits sorted,
    ``members`` each image as ``"path: class (split)"``."""
    by_hash = defaultdict(list)
    for entry in entries:
        if entry.get("pixel_hash"):
            by_hash[entry["pixel_hash"]].append(entry)
    conflicts = []
    for digest, group in by_hash.items():
        labels = sorted({e["label"] for e in group})
        if len(labels) > 1:
            conflicts.append(
                {
                    "pixel_hash": digest,
                    "labels": [class_names[i] for i in labels],
                    "splits": sorted({str(e.get("split")) for e in group}),
                    "images": [display_path(e) for e in group],
                    "members": [f"{display_path(e)}: {class_names[e['label']]} ({e.get('split')})" for e in group],
                }
            )
    return conflicts


def without_hashes(entries: list[dict], groups: list[dict]) -> list[dict]:
    """``entries`` less every image of ``groups`` (by pixel hash)."""
    hashes = {g["pixel_hash"] for g in groups}
    return [e for e in entries if e.get("pixel_hash") not in hashes]


def leaked_test_images(entries: list[dict]) -> list[dict]:
    """The test entries whose pixels are also those of a train or val entry."""
    seen = {e["pixel_hash"] for e in entries if e["split"] in ("train", "val") and e.get("pixel_hash")}
    return [e for e in entries if e["split"] == "test" and e.get("pixel_hash") in seen]


def handle_leaks(entries: list[dict], mode: str, leaks: list[dict]) -> tuple[list[dict], dict]:
    """Apply ``leaks: drop_test`` to ``entries`` (the groups of ``leaks`` get the dropped images
    under ``"dropped"``); returns ``(entries, summary)``. ``error`` is raised by the caller once
    leaks.csv is written, so that the message can point at it."""
    check_mode("leaks", mode, LEAK_MODES)
    leaked = leaked_test_images(entries)
    dropped = leaked if mode == "drop_test" else []
    if dropped:
        ids = {id(e) for e in dropped}
        dropped_by_hash = defaultdict(list)
        for e in dropped:
            dropped_by_hash[e["pixel_hash"]].append(display_path(e))
        for group in leaks:
            group["dropped"] = dropped_by_hash.get(group["pixel_hash"], [])
        entries = [e for e in entries if id(e) not in ids]
    summary = {
        "mode": mode,
        "groups_across_splits": len(leaks),
        "leaked_test_images": len(leaked),
        "dropped_test_images": len(dropped),
        "scored_leaked_test_images": len(leaked) - len(dropped),
    }
    return entries, summary


def leak_error_message(summary: dict, leaks_csv: str | None) -> str:
    where = f"listed in {leaks_csv}" if leaks_csv else "write the list with `medaug data info DATASET --out DIR`"
    return (
        f"leaks: error: {summary['groups_across_splits']} group(s) of images with identical pixels sit in more "
        f"than one split ({summary['leaked_test_images']} test image(s) duplicate a train or val image); {where}. "
        "Remove the copies from dataset_dir, or set leaks: drop_test to score without the leaked test images "
        "(leaks: report scores them anyway)."
    )


def describe_leaks(summary: dict | None) -> str:
    """One line for a person: how many test images leaked and what was done with them."""
    if not summary:
        return "leaked test images: not checked"
    n = summary.get("leaked_test_images", 0)
    line = f"leaked test images (identical pixels to a train/val image): {n}"
    if n:
        line += f", {LEAK_ACTIONS.get(summary.get('mode'), summary.get('mode'))}"
    conflicts = summary.get("conflicting_groups", 0)
    if conflicts:
        what = "excluded" if summary.get("conflicting_duplicates") == "exclude" else "kept as labelled"
        line += (
            f"; {conflicts} group(s) of identical images with conflicting labels "
            f"({summary.get('conflicting_images', 0)} images) {what}"
        )
    return line
