"""Every supported layout of dataset_dir becomes the same kind of datalist; unusable files are
skipped with a reason and the rest are used; inputs are never modified."""

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medaug.cli import main as cli_main
from medaug.io import TooFewImagesError, build_study_data, detect_format
from medaug.io.loader import LoadDatalistImaged
from tests.conftest import BREAST_64, DICOM_DIR

REQUIRED_KEYS = {"image", "label", "patient_id", "split", "source", "synthetic"}


def tree_digest(root: Path) -> dict:
    return {
        p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_npz_keeps_the_official_splits_and_names_classes(tmp_path):
    data = build_study_data(BREAST_64, class_names=["malignant", "normal_benign"], report_dir=tmp_path, progress=False)
    assert data.data_format == "npz"
    # the official splits (147/399, 21/57, 42/114) less BreastMNIST's one image that is in train as
    # malignant and in test as normal_benign (conflicting_duplicates: exclude, the default)
    assert data.counts() == {
        "train": {"malignant": 146, "normal_benign": 399},
        "val": {"malignant": 21, "normal_benign": 57},
        "test": {"malignant": 42, "normal_benign": 113},
    }
    (conflict,) = data.conflicts
    assert conflict["labels"] == ["malignant", "normal_benign"] and conflict["splits"] == ["test", "train"]
    assert data.leaks == [], "the only copy across splits was the conflicting one"
    entry = data.train[0]
    assert REQUIRED_KEYS <= set(entry)
    assert entry["synthetic"] is False and entry["source"] == "npz"
    image = LoadDatalistImaged("image")(entry)["image"]
    assert tuple(image.shape) == (1, 64, 64) and 0.0 <= float(image.min()) <= float(image.max()) <= 1.0
    assert (tmp_path / "skipped.csv").read_text().strip() == "path,reason"


def test_rgb_npz_is_read_as_gray_or_three_channels(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 255, size=(n, 16, 16, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).reshape(n, 1)
    np.savez(tmp_path / "rgb.npz", **arrays)
    for channels in (1, 3):
        data = build_study_data(tmp_path / "rgb.npz", channels=channels, progress=False)
        assert data.class_names == ["0", "1", "2"]
        assert LoadDatalistImaged("image", channels=channels)(data.test[0])["image"].shape[0] == channels


def test_folder_per_class_is_split_by_seed(png_tree):
    data = build_study_data(png_tree, seed=0, progress=False)
    assert data.data_format == "folder" and data.class_names == ["malignant", "normal_benign"]
    assert sum(sum(c.values()) for c in data.counts().values()) == 60
    assert all(data.counts()[s]["malignant"] > 0 for s in ("train", "val", "test"))
    again = build_study_data(png_tree, seed=0, progress=False)
    assert [e["split"] for e in data.entries] == [e["split"] for e in again.entries]


def test_split_folders_any_case_are_kept(png_split_tree):
    data = build_study_data(png_split_tree, progress=False)
    assert data.counts() == {s: {"malignant": 12, "normal_benign": 12} for s in ("train", "val", "test")}
    assert all(e["split"] in Path(e["image"]).parent.parent.name.lower() for e in data.entries)


def test_hidden_files_and_excluded_masks_are_ignored(tmp_path, png_tree):
    root = Path(shutil.copytree(png_tree, tmp_path / "tree"))
    first = sorted((root / "malignant").glob("*.png"))[0]
    shutil.copy(first, root / "malignant" / "case_mask.png")
    shutil.copy(first, root / "malignant" / ".hidden.png")
    data = build_study_data(root, exclude=["*_mask*"], progress=False)
    assert not any("mask" in e["image"] or ".hidden" in e["image"] for e in data.entries)
    assert len(data.entries) == 60


def test_dicom_folder_with_labels_csv(dicom_folder, tmp_path):
    before = tree_digest(dicom_folder)
    data = build_study_data(dicom_folder, report_dir=tmp_path, progress=False)
    assert data.data_format == "dicom_csv" and data.class_names == ["ct", "mr"]
    assert len(data.entries) == 24
    assert {e["modality"] for e in data.entries} == {"CT", "MR"}
    # patients are pseudonymised, never the PatientID itself
    assert not any(e["patient_id"].startswith("PAT") for e in data.entries)
    skipped = {row["path"]: row["reason"] for row in csv.DictReader(open(tmp_path / "skipped.csv"))}
    assert set(skipped) == {"broken/truncated.dcm", "broken/notes.txt", "broken/SR0001"}
    assert len(set(skipped.values())) == 3, "each kind of failure gets its own reason"
    assert tree_digest(dicom_folder) == before, "the input folder must not change"


@pytest.mark.parametrize("key", ["path", "StudyInstanceUID", "PatientID"])
def test_csv_key_columns(dicom_folder, tmp_path, key):
    import pydicom

    root = Path(shutil.copytree(dicom_folder, tmp_path / "dicoms"))
    rows = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.parent.name == "series1":
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            value = {
                "path": path.relative_to(root).as_posix(),
                "StudyInstanceUID": ds.StudyInstanceUID,
                "PatientID": ds.PatientID,
            }[key]
            rows.append({key.lower() if key == "path" else key: value, "Label": ds.Modality.lower()})
    (root / "labels.csv").unlink()
    with open(root / "my_labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    data = build_study_data(root, labels_csv=str(root / "my_labels.csv"), progress=False)
    assert detect_format(root, "my_labels.csv") == "dicom_csv"
    assert len(data.entries) == 24
    assert all(e["class_name"] == e["modality"].lower() for e in data.entries)


def test_too_few_images_names_the_class_and_folder(tmp_path, png_tree):
    root = Path(shutil.copytree(png_tree, tmp_path / "tree"))
    for path in sorted((root / "malignant").glob("*.png"))[1:]:
        path.unlink()
    with pytest.raises(TooFewImagesError, match=r"class 'malignant'.*" + str(root.name)):
        build_study_data(root, progress=False)


def test_cross_split_duplicates_are_reported(tmp_path, png_split_tree, capsys):
    root = Path(shutil.copytree(png_split_tree, tmp_path / "tree"))
    leaked = sorted((root / "Train" / "malignant").glob("*.png"))[0]
    shutil.copy(leaked, root / "Test" / "malignant" / "copy_of_train.png")
    data = build_study_data(root, progress=False)
    assert len(data.leaks) == 1 and data.leaks[0]["splits"] == ["test", "train"]
    assert cli_main(["data", "info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "leaks): 1" in out and "copy_of_train.png" in out


def test_data_info_on_the_dicom_folder(dicom_folder, capsys):
    assert cli_main(["data", "info", str(dicom_folder)]) == 0
    out = capsys.readouterr().out
    for expected in ("classes: ct, mr", "CT (12)", "MR (12)", "128x128", "64x64", "skipped files: 3", "truncated.dcm"):
        assert expected in out
    assert "PAT0" not in out, "patient identifiers must not be printed"


def test_data_info_reports_a_bad_folder_with_exit_code_2(tmp_path, capsys):
    assert cli_main(["data", "info", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_real_dicom_samples_as_a_folder_per_modality(tmp_path):
    """The shipped samples (JPEG 2000, MONOCHROME1, multi-frame, RGB, palette) all index."""
    for path in DICOM_DIR.glob("*.dcm"):
        folder = "xray" if path.name.startswith("RG") else "other"
        (tmp_path / folder).mkdir(exist_ok=True)
        shutil.copy(path, tmp_path / folder / path.name)
    data = build_study_data(tmp_path, split_fractions=(0.5, 0.25, 0.25), min_train_per_class=0, progress=False)
    assert data.skipped == []
    assert len(data.entries) == len(list(DICOM_DIR.glob("*.dcm")))


def test_frames_all_expands_multiframe_files(tmp_path):
    for name in ("emri_small.dcm", "eCT_Supplemental.dcm", "CT_small.dcm", "MR_small.dcm"):
        folder = tmp_path / ("multi" if name.startswith("e") else "single")
        folder.mkdir(exist_ok=True)
        shutil.copy(DICOM_DIR / name, folder / name)
    data = build_study_data(
        tmp_path, frames="all", split_fractions=(0.5, 0.25, 0.25), min_train_per_class=0, progress=False
    )
    frames = sorted(e.get("frame") for e in data.entries if e["class_name"] == "multi")
    assert frames == sorted(list(range(10)) + list(range(2)))
    assert patients_share_splits_by_file(data.entries)


def patients_share_splits_by_file(entries):
    """All frames of one file belong to one patient, hence to one split."""
    by_file = {}
    for e in entries:
        by_file.setdefault(e["image"], set()).add(e["split"])
    return all(len(s) == 1 for s in by_file.values())


def test_png_orientation_survives_loading(tmp_path):
    pattern = np.zeros((20, 30), dtype=np.uint8)
    pattern[0, -1] = 255
    for k, cls in enumerate(("a", "b")):
        (tmp_path / cls).mkdir()
        for i in range(4):
            pattern[-1, 0] = 4 * k + i  # distinct images: copies of one image would be one group
            Image.fromarray(pattern).save(tmp_path / cls / f"{i}.png")
    data = build_study_data(tmp_path, split_fractions=(0.5, 0.25, 0.25), min_train_per_class=1, progress=False)
    image = LoadDatalistImaged("image")(data.entries[0])["image"]
    assert tuple(image.shape) == (1, 20, 30) and float(image[0, 0, -1]) == 1.0


def test_atomically_written_files_get_the_usual_permissions(tmp_path):
    """Reports are shared with colleagues: an atomic write must not leave them owner-only (mkstemp's 0600)."""
    import os

    from medaug.io.atomic import write_json_atomic

    old = os.umask(0o022)
    try:
        path = write_json_atomic(tmp_path / "report.json", {"ok": True})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
