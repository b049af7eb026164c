"""Reading a training folder: nothing hangs, nothing is dropped silently, no label is misread.

Named pipes, sockets and devices are never opened; hidden files and folders are listed as skipped
with a reason; a labels.csv beside the folder, a label outside ``class_names`` and two rows that
give one file different labels stop the run before any image is decoded, naming the file, rows and
the setting that fixes it.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medaug.cli import main as cli_main
from medaug.io import build_study_data
from medaug.io.sources import LabelsError

GUARD_S = 60  # a healthy run takes about a second; a run blocked in open() never ends


def write_pngs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` distinct 8x8 gray PNGs in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img_{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def class_tree(root: Path, classes=("benign", "malignant"), per_class: int = 10) -> Path:
    for k, name in enumerate(classes):
        write_pngs(root / name, per_class, seed=k)
    return root


def csv_folder(root: Path, rows: list[tuple[str, str]], per_folder: int = 10) -> Path:
    """PNGs in ``root/a`` and ``root/b`` and a labels.csv of ``(path, label)`` rows."""
    for k, name in enumerate(("a", "b")):
        write_pngs(root / name, per_folder, seed=10 + k)
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return root


def labelled_rows(per_folder: int = 10) -> list[tuple[str, str]]:
    return [
        (f"{folder}/img_{i}.png", label)
        for folder, label in (("a", "benign"), ("b", "malignant"))
        for i in range(per_folder)
    ]


def skipped_rows(report_dir: Path) -> dict[str, str]:
    return {row["path"]: row["reason"] for row in csv.DictReader(open(report_dir / "skipped.csv"))}


def guarded(fn, fifos: list[Path]):
    """Run ``fn`` in a thread; if it is still running after GUARD_S (blocked opening a named pipe),
    open the pipes for writing so that the blocked reader sees end-of-file and returns, then fail:
    a regression fails the test instead of hanging the suite."""
    outcome = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as err:  # re-raised in the test's thread
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(GUARD_S)
    if thread.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        thread.join(10)
        pytest.fail(f"reading the folder blocked for {GUARD_S} s: a named pipe was opened")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# ------------------------------------------------------------------------ what the walk leaves out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_a_named_pipe_in_a_training_folder_is_skipped_with_a_reason_and_never_opened(tmp_path, capsys):
    root = class_tree(tmp_path / "data")
    fifo = root / "benign" / "pipe"
    os.mkfifo(fifo)
    report = tmp_path / "report"
    data = guarded(lambda: build_study_data(root, report_dir=report, progress=False), [fifo])
    assert len(data.entries) == 20
    assert skipped_rows(report) == {"benign/pipe": "not a regular file (named pipe, socket or device)"}
    assert guarded(lambda: cli_main(["data", "info", str(root)]), [fifo]) == 0
    assert "benign/pipe: not a regular file" in capsys.readouterr().out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_a_named_pipe_beside_a_labels_csv_is_skipped_too(tmp_path):
    root = csv_folder(tmp_path / "data", labelled_rows())
    fifo = root / "a" / "pipe.dcm"
    os.mkfifo(fifo)
    report = tmp_path / "report"
    data = guarded(lambda: build_study_data(root, report_dir=report, progress=False), [fifo])
    assert len(data.entries) == 20
    assert skipped_rows(report) == {"a/pipe.dcm": "not a regular file (named pipe, socket or device)"}


@pytest.mark.parametrize("layout", ["folder", "dicom_csv"])
def test_hidden_files_and_folders_are_listed_as_skipped_not_dropped(tmp_path, layout):
    root = tmp_path / "data"
    if layout == "folder":
        class_tree(root)
    else:
        csv_folder(root, labelled_rows())
    sample = next((root / ("benign" if layout == "folder" else "a")).glob("*.png"))
    shutil.copy(sample, sample.parent / ".hidden.png")
    write_pngs(root / ".dir", 3)
    write_pngs(root / sample.parent.name / ".ipynb_checkpoints", 2)
    report = tmp_path / "report"
    data = build_study_data(root, report_dir=report, progress=False)
    assert len(data.entries) == 20 and not any("/." in e["image"] for e in data.entries)
    folder = sample.parent.name
    hidden_folder = "hidden folder (name starts with '.'), not searched; rename it to use its files"
    assert skipped_rows(report) == {
        f"{folder}/.hidden.png": "hidden file (name starts with '.'), not read; rename it to use it",
        ".dir": hidden_folder,
        f"{folder}/.ipynb_checkpoints": hidden_folder,
    }


def test_files_outside_the_class_folders_are_listed_as_skipped(tmp_path):
    root = class_tree(tmp_path / "data")
    shutil.copy(next((root / "benign").glob("*.png")), root / "stray.png")
    report = tmp_path / "report"
    build_study_data(root, report_dir=report, progress=False)
    assert skipped_rows(report) == {"stray.png": "not inside a class folder, so it has no class"}


def test_an_excluded_glob_is_left_out_silently_as_asked(tmp_path):
    root = class_tree(tmp_path / "data")
    shutil.copy(next((root / "benign").glob("*.png")), root / "benign" / "x_mask.png")
    report = tmp_path / "report"
    data = build_study_data(root, exclude=["*_mask*"], report_dir=report, progress=False)
    assert len(data.entries) == 20 and skipped_rows(report) == {}


# ------------------------------------------------------------------------- a labels.csv beside it


def site_folders(parent: Path) -> Path:
    """``parent/images/site{0,1,2}/*.png`` and ``parent/labels.csv`` labelling them by path."""
    images = parent / "images"
    rows = []
    for site in range(3):
        for path in write_pngs(images / f"site{site}", 8, seed=site):
            rows.append((path.relative_to(images).as_posix(), "malignant" if path.stem[-1] in "02468" else "benign"))
    with open(parent / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    return images


def test_a_labels_csv_beside_dataset_dir_is_an_error_that_names_labels_csv(tmp_path, monkeypatch, capsys):
    images = site_folders(tmp_path / "export")
    monkeypatch.setattr("medaug.io.study_data.scan_entries", lambda *a, **k: pytest.fail("images were decoded"))
    with pytest.raises(LabelsError) as caught:
        build_study_data(images, progress=False)
    message = str(caught.value)
    assert str(tmp_path / "export" / "labels.csv") in message and "beside" in message
    assert "--labels_csv" in message and "--data_format folder" in message
    monkeypatch.undo()
    assert cli_main(["data", "info", str(images)]) == 2
    assert "--labels_csv" in capsys.readouterr().err


def test_the_labels_csv_beside_is_used_once_named_and_site_folders_are_read_only_when_asked(tmp_path):
    images = site_folders(tmp_path / "export")
    data = build_study_data(images, labels_csv=str(tmp_path / "export" / "labels.csv"), progress=False)
    assert data.data_format == "dicom_csv" and data.class_names == ["benign", "malignant"]
    assert len(data.entries) == 24
    sites = build_study_data(images, data_format="folder", progress=False)
    assert sites.class_names == ["site0", "site1", "site2"], "an explicit data_format reads the folders as classes"


def test_a_labels_csv_further_up_is_an_error_too(tmp_path):
    images = site_folders(tmp_path / "export")
    deeper = tmp_path / "export" / "more" / "images"
    deeper.parent.mkdir()
    images.rename(deeper)
    with pytest.raises(LabelsError, match=r"sits above it.*--labels_csv"):
        build_study_data(deeper, progress=False)


def test_a_cached_index_does_not_hide_a_labels_csv_added_beside(tmp_path):
    images = class_tree(tmp_path / "export" / "images")
    cache = tmp_path / "cache"
    build_study_data(images, index_cache=cache, progress=False)
    (tmp_path / "export" / "labels.csv").write_text("path,label\nbenign/img_0.png,benign\n")
    with pytest.raises(LabelsError, match="--labels_csv"):
        build_study_data(images, index_cache=cache, progress=False)


# ---------------------------------------------------------------------------- labels and classes


def test_a_label_outside_class_names_stops_the_run_listing_it_and_its_lines(tmp_path, monkeypatch):
    rows = labelled_rows()
    rows[3] = (rows[3][0], "maligant")  # line 5 of the file (the header is line 1)
    rows[7] = (rows[7][0], "maligant")
    rows[12] = (rows[12][0], "other")
    root = csv_folder(tmp_path / "data", rows)
    monkeypatch.setattr("medaug.io.study_data.scan_entries", lambda *a, **k: pytest.fail("images were decoded"))
    with pytest.raises(LabelsError) as caught:
        build_study_data(root, class_names=["benign", "malignant"], progress=False)
    message = str(caught.value)
    assert "2 class(es) not in class_names ['benign', 'malignant']" in message
    assert "'maligant' (lines 5, 9; did you mean 'malignant'?)" in message and "'other' (line 14)" in message
    assert "--class_names null" in message and str(root / "labels.csv") in message


def test_without_class_names_every_label_found_is_a_class(tmp_path):
    rows = labelled_rows()
    rows[3] = (rows[3][0], "maligant")
    root = csv_folder(tmp_path / "data", rows)
    data = build_study_data(root, min_train_per_class=0, progress=False)
    assert data.class_names == ["benign", "maligant", "malignant"]


def test_class_names_give_the_label_order_and_a_class_without_images_is_named(tmp_path):
    root = csv_folder(tmp_path / "data", labelled_rows())
    data = build_study_data(root, class_names=["malignant", "benign"], progress=False)
    assert data.class_names == ["malignant", "benign"]
    assert {(e["class_name"], e["label"]) for e in data.entries} == {("malignant", 0), ("benign", 1)}
    with pytest.raises(ValueError, match="class 'normal' has 0 usable training image"):
        build_study_data(root, class_names=["benign", "malignant", "normal"], progress=False)


def test_class_folders_outside_class_names_stop_the_run_listing_them(tmp_path):
    root = class_tree(tmp_path / "data", classes=("benign", "malignant", "site0"))
    with pytest.raises(LabelsError, match=r"1 class\(es\) not in class_names.*'site0' \(folder site0\).*--exclude"):
        build_study_data(root, class_names=["benign", "malignant"], progress=False)


def test_conflicting_labels_for_one_file_stop_the_run_naming_the_rows(tmp_path, monkeypatch, capsys):
    rows = labelled_rows()
    rows.append(("a/img_2.png", "malignant"))  # line 22; a/img_2.png is 'benign' on line 4
    root = csv_folder(tmp_path / "data", rows)
    monkeypatch.setattr("medaug.io.study_data.scan_entries", lambda *a, **k: pytest.fail("images were decoded"))
    with pytest.raises(LabelsError) as caught:
        build_study_data(root, progress=False)
    message = str(caught.value)
    assert "path 'a/img_2.png' on lines 4 (label 'benign'), 22 (label 'malignant') differ in label" in message
    assert str(root / "labels.csv") in message
    monkeypatch.undo()
    assert cli_main(["data", "info", str(root)]) == 2
    assert "lines 4 (label 'benign'), 22" in capsys.readouterr().err


def test_a_file_listed_twice_with_the_same_label_is_used_once_with_a_warning(tmp_path, caplog):
    rows = labelled_rows()
    rows.append(("./a/img_2.png", "benign"))  # the same path, spelt differently
    root = csv_folder(tmp_path / "data", rows)
    with caplog.at_level(logging.WARNING, logger="medaug.data"):
        data = build_study_data(root, progress=False)
    assert len(data.entries) == 20
    assert "path 'a/img_2.png' (lines 4, 22)" in caplog.text


def test_patient_rows_that_conflict_are_named_by_line_and_pseudonym_never_by_id(tmp_path):
    from medaug.io.sources import dicom_csv_entries

    root = tmp_path / "data"
    write_pngs(root, 1)
    (root / "labels.csv").write_text("PatientID,label\nMRN-0042,benign\nMRN-0042,malignant\n")
    with pytest.raises(LabelsError) as caught:
        dicom_csv_entries(root)
    assert re.search(r"PatientID 'p-\w+' on lines 2 \(label 'benign'\), 3 \(label 'malignant'\)", str(caught.value))
    assert "MRN-0042" not in str(caught.value)


def test_an_empty_label_is_a_skipped_file_with_its_line(tmp_path):
    rows = labelled_rows()
    rows[0] = (rows[0][0], "")
    root = csv_folder(tmp_path / "data", rows)
    report = tmp_path / "report"
    build_study_data(root, report_dir=report, progress=False)
    assert skipped_rows(report) == {"a/img_0.png": "its row in labels.csv (line 2) has an empty label"}


def test_data_info_accepts_class_names_in_both_spellings(tmp_path, capsys):
    rows = labelled_rows()
    rows[3] = (rows[3][0], "maligant")
    root = csv_folder(tmp_path / "data", rows)
    assert cli_main(["data", "info", str(root), "--class-names", "benign", "malignant"]) == 2
    assert cli_main(["data", "info", str(root), "--class_names", "['benign','malignant']"]) == 2
    assert capsys.readouterr().err.count("'maligant' (line 5; did you mean 'malignant'?)") == 2
