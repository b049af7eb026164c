"""Copies of one image (same pixels) never straddle a split the splitter chose; copies across the
splits a source fixed are leaks, reported, dropped from test (``leaks: drop_test``) or stopping the
run (``leaks: error``); copies with different labels are reported wherever they sit and left out
unless ``conflicting_duplicates: keep``. Tiny PNG folders written in tmp_path, byte copies made with
shutil."""

import csv
import logging
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medaug.cli import main as cli_main
from medaug.io import build_study_data
from medaug.io.leaks import DataLeakError, describe_leaks
from medaug.io.scan import cross_split_duplicates

CLASSES = ("benign", "malignant")


def write_pngs(folder: Path, n: int, rng) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def split_tree(root: Path) -> Path:
    """Train/Val/Test folders, 6 distinct images per class and split."""
    rng = np.random.default_rng(0)
    for split in ("Train", "Val", "Test"):
        for name in CLASSES:
            write_pngs(root / split / name, 6, rng)
    return root


def copy(root: Path, source: str, target_dir: str, name: str) -> str:
    shutil.copy(root / source, root / target_dir / name)
    return f"{target_dir}/{name}"


@pytest.fixture
def leaky_tree(tmp_path) -> tuple[Path, set[str]]:
    """Three test images copied from train or val (the leaked ones), one val image copied from train."""
    root = split_tree(tmp_path / "data")
    leaked = {
        copy(root, "Train/benign/img00.png", "Test/benign", "copy_a.png"),
        copy(root, "Train/malignant/img01.png", "Test/malignant", "copy_b.png"),
        copy(root, "Val/benign/img02.png", "Test/benign", "copy_c.png"),
    }
    copy(root, "Train/malignant/img03.png", "Val/malignant", "copy_d.png")
    return root, leaked


def test_the_split_keeps_every_copy_of_an_image_in_one_split(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(1)
    for name in CLASSES:
        for path in write_pngs(root / name, 15, rng)[:5]:
            for k in range(2):
                shutil.copy(path, path.with_name(f"{path.stem}_copy{k}.png"))
    for seed in range(4):
        data = build_study_data(root, seed=seed, progress=False)
        by_hash = defaultdict(set)
        for e in data.entries:
            by_hash[e["pixel_hash"]].add(e["split"])
        assert len(data.entries) == 50 and sum(len(s) == 1 for s in by_hash.values()) == 30
        assert data.leaks == [] and cross_split_duplicates(data.entries) == [], f"seed {seed}"
        assert {e["split"] for e in data.entries} == {"train", "val", "test"}


def test_copies_with_conflicting_labels_are_reported_in_one_split_and_excluded_unless_kept(tmp_path, caplog):
    root = split_tree(tmp_path / "data")
    copy(root, "Train/benign/img04.png", "Train/malignant", "relabelled.png")
    with caplog.at_level(logging.WARNING, logger="medaug.data"):
        data = build_study_data(root, report_dir=tmp_path / "out", progress=False)
    (group,) = data.conflicts
    assert group["labels"] == ["benign", "malignant"] and group["splits"] == ["train"]
    assert sorted(group["images"]) == ["Train/benign/img04.png", "Train/malignant/relabelled.png"]
    assert "conflicting labels: 1 group(s)" in caplog.text and "conflicting_duplicates.csv" in caplog.text
    images = {e["relpath"] for e in data.entries}
    assert not images & set(group["images"]), "both copies are left out"
    assert data.counts()["train"] == {"benign": 5, "malignant": 6}
    (row,) = csv.DictReader(open(tmp_path / "out" / "conflicting_duplicates.csv"))
    assert row["labels"] == "benign malignant" and row["excluded"] == "True"
    assert "Train/malignant/relabelled.png: malignant (train)" in row["images"]

    kept = build_study_data(root, conflicting_duplicates="keep", progress=False)
    assert len(kept.conflicts) == 1 and set(group["images"]) <= {e["relpath"] for e in kept.entries}
    assert kept.counts()["train"] == {"benign": 6, "malignant": 7}
    assert "kept as labelled" in describe_leaks(kept.leak_summary)


def test_drop_test_drops_exactly_the_test_images_that_copy_a_train_or_val_image(leaky_tree, tmp_path):
    root, leaked = leaky_tree
    reported = build_study_data(root, progress=False)
    assert reported.leak_summary["leaked_test_images"] == 3 and len(reported.leaks) == 4
    assert leaked <= {e["relpath"] for e in reported.test}, "leaks: report scores them"

    data = build_study_data(root, leaks="drop_test", report_dir=tmp_path / "out", progress=False)
    assert {e["relpath"] for e in reported.test} - {e["relpath"] for e in data.test} == leaked
    assert data.train == reported.train and data.val == reported.val, "train and val are untouched"
    assert data.leak_summary.items() >= {"leaked_test_images": 3, "dropped_test_images": 3, "mode": "drop_test"}.items()
    rows = list(csv.DictReader(open(tmp_path / "out" / "leaks.csv")))
    assert {r["dropped"] for r in rows if r["dropped"]} == leaked
    assert "3, dropped before scoring (leaks: drop_test)" in describe_leaks(data.leak_summary)


def test_leaks_error_stops_naming_the_count_and_leaks_csv(leaky_tree, tmp_path):
    root, _ = leaky_tree
    with pytest.raises(DataLeakError, match=r"4 group\(s\).*3 test image\(s\).*leaks\.csv.*drop_test") as err:
        build_study_data(root, leaks="error", report_dir=tmp_path / "out", progress=False)
    assert str(tmp_path / "out" / "leaks.csv") in str(err.value)
    assert len(list(csv.DictReader(open(tmp_path / "out" / "leaks.csv")))) == 4, "written before stopping"
    with pytest.raises(ValueError, match="leaks: 'drop' is not one of report, drop_test, error"):
        build_study_data(root, leaks="drop", progress=False)


def test_data_info_out_writes_leaks_and_skipped_csv(leaky_tree, tmp_path, capsys):
    root, leaked = leaky_tree
    (root / "Train" / "benign" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "reports"
    assert cli_main(["data", "info", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "leaked test images (identical pixels to a train/val image): 3, scored (leaks: report)" in printed
    leaks = list(csv.DictReader(open(out / "leaks.csv")))
    assert len(leaks) == 4 and all(any(p in r["images"] for p in leaked) for r in leaks if "test" in r["splits"])
    (skipped,) = list(csv.DictReader(open(out / "skipped.csv")))
    assert skipped["path"] == "Train/benign/broken.png" and skipped["reason"]
    assert cli_main(["data", "info", str(root), "--leaks", "error"]) == 2
    assert "leaks: error: 4 group(s)" in capsys.readouterr().err
