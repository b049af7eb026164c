"""Shared fixtures: small datasets in the three layouts a bundle accepts, made from the real data
shipped in the repository (BreastMNIST and the DICOM samples in tests/data/dicom)."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
DICOM_DIR = REPO / "tests" / "data" / "dicom"
BREAST_64 = REPO / "data" / "breastmnist_64.npz"
BUNDLE = REPO / "bundles" / "imbalance_baselines"


def pytest_report_header(config) -> list[str]:
    """The numerics this run depends on, so a failure on another machine is readable: CPU model,
    BLAS/OpenMP libraries with their threads and kernels (threadpoolctl), torch's BLAS and SIMD."""
    import platform

    import threadpoolctl
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            cpu,
        )
    pools = [
        f"{p['internal_api']} {p.get('version') or ''} ({p['num_threads']} threads"
        f"{', ' + p['architecture'] if p.get('architecture') else ''})"
        for p in threadpoolctl.threadpool_info()
    ]
    torch_blas = next(
        (
            part.split("=", 1)[1]
            for part in torch.__config__.show().replace(",", " ").split()
            if part.startswith("BLAS_INFO=")
        ),
        "?",
    )
    return [
        f"cpu: {cpu}; {os.cpu_count()} logical cores",
        f"thread pools: {'; '.join(pools) or 'none loaded'}",
        f"torch {torch.__version__}: BLAS {torch_blas}, {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads",
    ]


@pytest.fixture(scope="session", autouse=True)
def pseudonym_key(tmp_path_factory):
    """One pseudonym key for the whole suite, in its environment (child processes inherit it), and a
    key file path in a temporary folder: no test reads or creates ~/.config/medaug/pseudonym.key."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDAUG_PSEUDONYM_KEY", "test-suite-pseudonym-key")
        patch.setenv("MEDAUG_PSEUDONYM_KEY_FILE", str(tmp_path_factory.mktemp("pseudonym") / "pseudonym.key"))
        yield "test-suite-pseudonym-key"


@pytest.fixture(scope="session")
def breast_arrays():
    with np.load(BREAST_64) as archive:
        return {k: archive[k] for k in archive.files}


def write_png_tree(root: Path, arrays: dict, per_class: int, with_splits: bool) -> Path:
    """BreastMNIST images as PNG files, one folder per class (optionally below split folders)."""
    names = {0: "malignant", 1: "normal_benign"}
    splits = ("train", "val", "test") if with_splits else ("train",)
    for split in splits:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"][:, 0]
        for label, name in names.items():
            folder = root / (split.capitalize() if with_splits else "") / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(labels == label)[:per_class]:
                Image.fromarray(images[i]).save(folder / f"{split}_{i}.png")
    return root


@pytest.fixture(scope="session")
def png_tree(tmp_path_factory, breast_arrays) -> Path:
    """A folder per class, no split folders: 30 PNGs per class."""
    return write_png_tree(tmp_path_factory.mktemp("png_tree"), breast_arrays, 30, with_splits=False)


@pytest.fixture(scope="session")
def png_split_tree(tmp_path_factory, breast_arrays) -> Path:
    """Train/Val/Test folders (capitalised, as some datasets ship them) with class folders inside."""
    return write_png_tree(tmp_path_factory.mktemp("png_split_tree"), breast_arrays, 12, with_splits=True)


def derived_dicom(source: Path, target: Path, patient: str, seed: int) -> pydicom.Dataset:
    """A copy of a real DICOM with new UIDs, a new patient and slightly altered pixels (so that each
    copy is a distinct image), as a site's export of several patients would look."""
    ds = pydicom.dcmread(source)
    rng = np.random.default_rng(seed)
    pixels = ds.pixel_array.astype(np.int32)
    pixels = pixels + rng.integers(-20, 21, size=pixels.shape)
    info = np.iinfo(ds.pixel_array.dtype)
    ds.PixelData = np.clip(pixels, info.min, info.max).astype(ds.pixel_array.dtype).tobytes()
    ds.PatientID = patient
    ds.PatientName = f"Test^{patient}"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return ds


@pytest.fixture(scope="session")
def dicom_folder(tmp_path_factory) -> Path:
    """A nested DICOM export (files with and without .dcm) of 24 patients, CT vs MR, labelled by
    SOPInstanceUID in labels.csv, plus a truncated file, a text file and a DICOM without pixels."""
    root = tmp_path_factory.mktemp("dicom_folder")
    rows = []
    for i in range(24):
        kind, source = ("ct", DICOM_DIR / "CT_small.dcm") if i % 2 == 0 else ("mr", DICOM_DIR / "MR_small.dcm")
        name = f"IM{i:04d}" if i % 3 else f"img_{i}.dcm"
        ds = derived_dicom(source, root / f"PAT{i:02d}" / "series1" / name, f"PAT{i:02d}", seed=i)
        rows.append({"SOP_Instance_UID": ds.SOPInstanceUID, "label": kind})
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["SOP_Instance_UID", "label"])
        writer.writeheader()
        writer.writerows(rows)
    whole = (DICOM_DIR / "CT_small.dcm").read_bytes()
    (root / "broken").mkdir()
    (root / "broken" / "truncated.dcm").write_bytes(whole[: len(whole) // 2])
    (root / "broken" / "notes.txt").write_text("scanner export log, not an image\n")
    no_pixels = pydicom.dcmread(DICOM_DIR / "CT_small.dcm")
    del no_pixels.PixelData
    no_pixels.SOPInstanceUID = generate_uid()
    no_pixels.save_as(root / "broken" / "SR0001")
    return root


@pytest.fixture
def bundle_copy(tmp_path) -> Path:
    """The default bundle copied away, so a test run can never write into the repository."""
    return Path(shutil.copytree(BUNDLE, tmp_path / "bundle", ignore=shutil.ignore_patterns("runs")))
