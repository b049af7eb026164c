"""No patient identifiers out: known PatientName/PatientID (and other PS3.15 Basic Profile values) put
into sample files appear in no output file, console or log line, or MLflow record."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from medaug.io import build_study_data
from medaug.io.phi import IDENTIFYING_ATTRIBUTES, PseudonymKeyError, hash_uid, pseudonym, pseudonym_key_file
from tests.conftest import DICOM_DIR, REPO, derived_dicom
from tests.pipelines.test_predict import make_bundle

PHI = {
    "PatientName": "Zyxwvut^Qponmlk",
    "PatientID": "PHI-ID-98765",
    "PatientBirthDate": "19010203",
    "OtherPatientIDs": "OTHER-4242",
    "PatientAddress": "12 Quuxstreet",
    "InstitutionName": "Hospital Xyzzy",
    "ReferringPhysicianName": "Doctor^Plugh",
    "AccessionNumber": "ACC777111",
    "StudyID": "STUDY31337",
}
NEEDLES = [v.encode() for v in PHI.values()] + [b"Zyxwvut", b"Qponmlk", b"Plugh"]


def phi_folder(root: Path, n: int = 12) -> tuple[Path, list[str]]:
    """``n`` CT/MR files (half each) carrying the PHI values, a truncated one and one whose header
    claims a huge image (their skip reasons must not quote the header), and labels.csv by SOPInstanceUID."""
    uids, rows = [], []
    for i in range(n):
        source = DICOM_DIR / ("CT_small.dcm" if i % 2 == 0 else "MR_small.dcm")
        path = root / f"series{i % 3}" / f"IM{i:04d}"
        derived_dicom(source, path, f"{PHI['PatientID']}-{i}", seed=i)
        ds = pydicom.dcmread(path)
        for keyword, value in PHI.items():
            setattr(ds, keyword, f"{value}-{i}" if keyword == "PatientID" else value)  # 12 patients
        ds.save_as(path, enforce_file_format=True)
        uids += [ds.SOPInstanceUID, ds.StudyInstanceUID]
        rows.append({"SOPInstanceUID": ds.SOPInstanceUID, "label": "ct" if i % 2 == 0 else "mr"})
    whole = (root / "series0" / "IM0000").read_bytes()
    (root / "broken").mkdir()
    (root / "broken" / "half").write_bytes(whole[: len(whole) * 2 // 3])
    huge = pydicom.dcmread(root / "series0" / "IM0000")
    huge.Rows = huge.Columns = 60000
    huge.save_as(root / "broken" / "huge")
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["SOPInstanceUID", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return root, uids


def leaks(blobs: dict[str, bytes], needles=NEEDLES) -> list[tuple[str, bytes]]:
    return [(name, needle) for name, blob in blobs.items() for needle in needles if needle in blob]


def files_below(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_profile_list_and_salted_uid_hashes():
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "OtherPatientIDs",
        "PatientAddress",
        "ReferringPhysicianName",
        "InstitutionName",
        "AccessionNumber",
        "StudyID",
    ):
        assert keyword in IDENTIFYING_ATTRIBUTES
        assert pydicom.datadict.tag_for_keyword(keyword) is not None, keyword
    uid = "1.2.826.0.1.3680043.8.498.1"
    assert hash_uid(uid, "a") == hash_uid(uid, "a") != hash_uid(uid, "b")
    assert uid not in hash_uid(uid, "a") and hash_uid("", "a") == ""
    with pytest.raises(ValueError):
        hash_uid(uid, "")


def test_a_pseudonym_cannot_be_recomputed_without_the_key(monkeypatch):
    record_numbers = [f"{n:09d}" for n in range(123456000, 123457000)]  # an attacker's candidates
    monkeypatch.setenv("MEDAUG_PSEUDONYM_KEY", "project secret")
    value = pseudonym("123456789")
    assert value.startswith("p-") and len(value) == 18 and int(value[2:], 16) >= 0
    assert value == pseudonym("123456789"), "stable for one key"
    unkeyed = {"p-" + hashlib.sha256(c.encode()).hexdigest()[:16]: c for c in record_numbers}
    assert value not in unkeyed, "hashing candidates without the key finds nothing"
    assert {pseudonym(c, key=b"project secret") for c in record_numbers} >= {value}, "with the key it does"
    monkeypatch.setenv("MEDAUG_PSEUDONYM_KEY", "another project")
    assert pseudonym("123456789") != value


def test_the_key_file_is_created_once_for_its_owner_only_and_reused(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("MEDAUG_PSEUDONYM_KEY")
    key_file = tmp_path / "config" / "medaug" / "pseudonym.key"
    monkeypatch.setenv("MEDAUG_PSEUDONYM_KEY_FILE", str(key_file))
    first = pseudonym("PAT-1")
    assert key_file.stat().st_mode & 0o777 == 0o600 and key_file.parent.stat().st_mode & 0o777 == 0o700
    key, mtime = key_file.read_text().strip(), key_file.stat().st_mtime_ns
    assert len(key) == 64 and first == pseudonym("PAT-1", key=key.encode())
    assert pseudonym("PAT-1") == first and key_file.stat().st_mtime_ns == mtime, "read again, not made again"
    assert [p.name for p in key_file.parent.iterdir()] == ["pseudonym.key"], "no temporary file left"

    monkeypatch.setenv("MEDAUG_PSEUDONYM_KEY_FILE", str(tmp_path / "other.key"))
    assert pseudonym("PAT-1") != first, "another key file, another key"

    key_file.chmod(0o644)
    monkeypatch.setenv("MEDAUG_PSEUDONYM_KEY_FILE", str(key_file))
    with caplog.at_level(logging.WARNING, logger="medaug.data"):
        assert pseudonym("PAT-1") == first
    assert "can be read by others" in caplog.text and key not in caplog.text
    key_file.write_text("")
    with pytest.raises(PseudonymKeyError, match="is empty.*MEDAUG_PSEUDONYM_KEY"):
        pseudonym("PAT-1")


def test_the_default_key_file_lives_in_the_user_config_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("MEDAUG_PSEUDONYM_KEY_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert pseudonym_key_file() == tmp_path / "xdg" / "medaug" / "pseudonym.key"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert pseudonym_key_file() == tmp_path / "home" / ".config" / "medaug" / "pseudonym.key"


def test_another_key_builds_another_index_never_reuses_old_pseudonyms(png_tree, tmp_path, monkeypatch):
    cache = tmp_path / "cache"

    def patients():
        return sorted(e["patient_id"] for e in build_study_data(png_tree, index_cache=cache, progress=False).entries)

    first = patients()
    monkeypatch.setenv("MEDAUG_PSEUDONYM_KEY", "a new key")
    assert set(patients()).isdisjoint(first)
    assert len(list(cache.glob("index-*.json"))) == 2
    monkeypatch.undo()
    assert patients() == first, "the first key reads its own index again"


def test_predict_outputs_and_console_carry_no_identifiers_and_uids_hash_on_request(tmp_path):
    bundle = make_bundle(tmp_path)
    source, uids = phi_folder(tmp_path / "export")
    assert len({needle for _, needle in leaks(files_below(source))}) == len(NEEDLES), "the search finds them"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MEDAUG_UID_SALT": "site-secret"}
    runs = {}
    for name, extra in (("plain", []), ("hashed", ["--hash-uids"])):
        out = tmp_path / name
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "medaug.cli",
                "-v",
                "predict",
                "--bundle",
                str(bundle),
                "--input",
                str(source),
                "--output",
                str(out),
                *extra,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            timeout=120,
        )
        assert result.returncode == 3, result.stderr[-3000:]
        blobs = {**files_below(out), "stdout": result.stdout, "stderr": result.stderr}
        assert not leaks(blobs), leaks(blobs)
        runs[name] = blobs
    skipped = runs["plain"]["skipped.csv"].decode()
    assert "broken/half" in skipped and "image too large" in skipped and "labels.csv" in skipped
    assert any(uid.encode() in runs["plain"]["predictions.csv"] for uid in uids), "UIDs kept by default"
    assert not leaks(runs["hashed"], [u.encode() for u in uids]), "--hash-uids leaves no UID"
    assert hash_uid(uids[0], "site-secret").encode() in runs["hashed"]["predictions.csv"]


@pytest.mark.slow
def test_training_run_logs_no_identifiers_to_mlflow(tmp_path, bundle_copy):
    """One smoke training run on the PHI-laden folder: the MLflow store (database and artifacts), the
    run folder and the console carry none of the values."""
    source, _ = phi_folder(tmp_path / "export", n=16)
    out = tmp_path / "runs"
    config_files = str([str(bundle_copy / "configs" / c) for c in ("train.json", "smoke.json")])
    env = {**os.environ, "PYTHONHASHSEED": "0", "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            config_files,
            "--bundle_root",
            str(bundle_copy),
            "--output_dir",
            str(out),
            "--dataset_dir",
            str(source),
            "--class_names",
            "['ct','mr']",
            "--positive_class",
            "mr",
            "--max_epochs",
            "1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    blobs = {**files_below(out), "stdout": result.stdout, "stderr": result.stderr}
    assert "mlflow.db" in blobs and any("mlruns" in name for name in blobs)
    assert any(b"skipped.csv" in name.encode() for name in blobs)
    assert not leaks(blobs), leaks(blobs)


def test_labels_csv_by_patient_id_never_echoes_an_unmatched_id(tmp_path):
    from medaug.io.sources import dicom_csv_entries

    root = tmp_path / "data"
    derived_dicom(DICOM_DIR / "CT_small.dcm", root / "a" / "IM1", "PHI-ID-98765-1", seed=0)
    (root / "labels.csv").write_text("PatientID,label\nPHI-ID-98765-1,ct\nPHI-ID-98765-2,mr\n")
    entries, _, skipped = dicom_csv_entries(root)
    assert len(entries) == 1 and len(skipped) == 1
    assert "matches no file" in skipped[0]["reason"]
    assert not leaks({"skipped": repr(skipped).encode()})
