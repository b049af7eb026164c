"""``medaug predict`` on messy DICOM folders: every good file predicted, every bad one skipped with a
reason, the right exit code, the input untouched, TorchScript without training code, usage errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGLSLossless, generate_uid

from medaug.cli import main
from medaug.models import build_classifier
from tests.conftest import BUNDLE, DICOM_DIR, REPO

SAMPLES = sorted(p.name for p in DICOM_DIR.glob("*.dcm"))
CLASSES = ["malignant", "normal_benign"]


def make_bundle(root: Path, *, export: bool = False) -> Path:
    """The default bundle with a small_cnn at 32 px and a fresh checkpoint in models/model.pt
    (and its TorchScript export in models/model.ts when ``export``)."""
    bundle = Path(shutil.copytree(BUNDLE, root / "bundle", ignore=shutil.ignore_patterns("runs", "models")))
    config_file = bundle / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    config.update(classifier="small_cnn", image_size=[32, 32])
    config_file.write_text(json.dumps(config, indent=4))
    torch.manual_seed(0)
    net = build_classifier("small_cnn", 1, 2, (32, 32))
    (bundle / "models").mkdir()
    torch.save({"model": net.state_dict()}, bundle / "models" / "model.pt")
    if export:
        from monai.bundle import ckpt_export

        ckpt_export(
            net_id="network_def",
            filepath=str(bundle / "models" / "model.ts"),
            ckpt_file=str(bundle / "models" / "model.pt"),
            key_in_ckpt="model",
            meta_file=str(bundle / "configs" / "metadata.json"),
            config_file=str(config_file),
            bundle_root=str(bundle),
        )
    return bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("predict_bundle"))


def tree_state(root: Path) -> dict:
    """Content hash of every regular file, the target of every link and each entry's mode: all that
    a write into the input could change. Links are not followed."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            info = path.lstat()
            if path.is_symlink():
                state[rel] = ("link", os.readlink(path))
            elif path.is_file() and os.access(path, os.R_OK) and not name.endswith(".fifo"):
                state[rel] = ("file", info.st_mode, info.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                state[rel] = ("other", info.st_mode)
    return state


def _sr_document(target: Path) -> None:
    ds = pydicom.dcmread(DICOM_DIR / "CT_small.dcm")
    del ds.PixelData
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        delattr(ds, keyword)
    ds.Modality = "SR"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR Storage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(target, enforce_file_format=True)


@pytest.fixture
def messy_input(tmp_path) -> tuple[Path, set[str], dict[str, str]]:
    """The real DICOM samples in nested folders (some without extension) and a PNG, plus every kind of
    bad file a PACS export or a careless copy brings. Returns (root, good paths, {bad path: reason part})."""
    root = tmp_path / "export"
    good = set()
    for i, name in enumerate(SAMPLES):
        rel = f"patient{i % 3}/series{i % 2}/{name if i % 2 else f'IM{i:04d}'}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DICOM_DIR / name, root / rel)
        good.add(rel)
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)).save(root / "photo.png")
    good.add("photo.png")

    bad = root / "bad"
    bad.mkdir()
    whole = (DICOM_DIR / "CT_small.dcm").read_bytes()
    (bad / "truncated.dcm").write_bytes(whole[: len(whole) // 2])
    (bad / "zero.dcm").write_bytes(b"")
    (bad / "random.dcm").write_bytes(np.random.default_rng(0).bytes(4096))
    no_pixels = pydicom.dcmread(DICOM_DIR / "CT_small.dcm")
    del no_pixels.PixelData
    no_pixels.save_as(bad / "NOPIXELS")
    huge = pydicom.dcmread(DICOM_DIR / "CT_small.dcm")
    huge.Rows = huge.Columns = 65000
    huge.save_as(bad / "huge.dcm")
    _sr_document(bad / "report.dcm")
    (bad / "notes.txt").write_text("export log\n")
    jpeg_ls = pydicom.dcmread(DICOM_DIR / "CT_small.dcm")
    jpeg_ls.PixelData = encapsulate([b"\xff\xd8not really JPEG-LS\xff\xd9"])
    jpeg_ls["PixelData"].VR, jpeg_ls["PixelData"].is_undefined_length = "OB", True
    jpeg_ls.file_meta.TransferSyntaxUID = JPEGLSLossless
    jpeg_ls.save_as(bad / "jpeg_ls.dcm", enforce_file_format=True)
    (bad / "deeper" / "deepest").mkdir(parents=True)
    os.symlink("../..", bad / "deeper" / "deepest" / "loop")  # a folder link back up: a loop
    os.symlink("self.dcm", bad / "self.dcm")  # a link to itself
    unreadable = bad / "locked.dcm"
    unreadable.write_bytes(np.random.default_rng(1).bytes(512))
    unreadable.chmod(0)
    os.mkfifo(bad / "pipe.fifo")
    expected = {
        "bad/truncated.dcm": "truncated",
        "bad/zero.dcm": "empty file",
        "bad/random.dcm": "not a DICOM file",
        "bad/NOPIXELS": "no pixel data",
        "bad/huge.dcm": "image too large",
        "bad/report.dcm": "structured report",
        "bad/notes.txt": "not an image",
        "bad/deeper/deepest/loop": "symbolic link loop",
        "bad/self.dcm": "symbolic link loop",
        "bad/pipe.fifo": "not a regular file",
        "bad/jpeg_ls.dcm": "truncated or corrupt"
        if get_decoder(JPEGLSLossless).is_available
        else "unsupported transfer syntax",
        # root reads any file: then the random bytes are what is wrong with it
        "bad/locked.dcm": "not a DICOM file" if os.geteuid() == 0 else "permission denied",
    }
    yield root, good, expected
    unreadable.chmod(0o600)


def read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_messy_folder_every_good_file_predicted_every_bad_one_explained(bundle, messy_input, tmp_path, capsys):
    root, good, bad = messy_input
    before = tree_state(root)
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--bundle",
            str(bundle),
            "--input",
            str(root),
            "--output",
            str(out),
            "--batch-size",
            "4",
            "--workers",
            "2",
            "--no-progress",
        ]
    )
    assert code == 3
    rows = read_csv(out / "predictions.csv")
    assert {r["path"] for r in rows} == good and len(rows) == len(good)
    skipped = {r["path"]: r["reason"] for r in read_csv(out / "skipped.csv")}
    assert set(skipped) == set(bad), skipped
    for path, part in bad.items():
        assert part in skipped[path], (path, skipped[path])
    as_json = json.loads((out / "predictions.json").read_text())
    bundle_version = json.loads((bundle / "configs" / "metadata.json").read_text())["version"]
    assert [(r["path"], r["prob_malignant"]) for r in as_json] == [
        (r["path"], float(r["prob_malignant"])) for r in rows
    ]
    for row in rows:
        probs = [float(row[f"prob_{c}"]) for c in CLASSES]
        assert abs(sum(probs) - 1) < 1e-4 and row["predicted"] == CLASSES[int(np.argmax(probs))]
        assert row["model_name"] == "Imbalance baselines" and row["model_version"] == bundle_version
        assert row["checkpoint_sha256"] == hashlib.sha256((bundle / "models" / "model.pt").read_bytes()).hexdigest()
        if row["path"] != "photo.png":
            assert row["sop_instance_uid"] and row["study_instance_uid"]
    multi = [r for r in rows if r["frame"] != ""]
    assert multi, "multi-frame samples name the frame used"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exit_code"] == 3 and summary["skipped"] == len(bad) and summary["images"] == len(good)
    assert "images/s" in capsys.readouterr().out
    assert tree_state(root) == before, "the input folder must stay exactly as it was"
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temporary files left"


def test_clean_folder_exits_0_and_all_frames_and_modalities(bundle, tmp_path):
    clean = tmp_path / "clean"
    clean.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm"):
        shutil.copyfile(DICOM_DIR / name, clean / name)
    out = tmp_path / "out"
    assert main(["predict", "--bundle", str(bundle), "--input", str(clean), "--output", str(out), "--no-progress"]) == 0
    assert len(read_csv(out / "predictions.csv")) == 3 and read_csv(out / "skipped.csv") == []

    frames = pydicom.dcmread(clean / "emri_small.dcm", stop_before_pixels=True).NumberOfFrames
    out_all = tmp_path / "all"
    assert (
        main(
            [
                "predict",
                "--bundle",
                str(bundle),
                "--input",
                str(clean),
                "--output",
                str(out_all),
                "--frames",
                "all",
                "--no-progress",
            ]
        )
        == 0
    )
    rows = read_csv(out_all / "predictions.csv")
    assert [int(r["frame"]) for r in rows if r["path"] == "emri_small.dcm"] == list(range(int(frames)))

    out_proc = tmp_path / "proc"
    assert (
        main(
            [
                "predict",
                "--bundle",
                str(bundle),
                "--input",
                str(clean),
                "--output",
                str(out_proc),
                "--parallel",
                "process",
                "--workers",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    assert read_csv(out_proc / "predictions.csv") == read_csv(out / "predictions.csv"), "same results in processes"

    out_ct = tmp_path / "ct"
    assert (
        main(
            [
                "predict",
                "--bundle",
                str(bundle),
                "--input",
                str(clean),
                "--output",
                str(out_ct),
                "--modalities",
                "CT",
                "--no-progress",
            ]
        )
        == 3
    )
    assert [r["path"] for r in read_csv(out_ct / "predictions.csv")] == ["CT_small.dcm"]
    reasons = {r["path"]: r["reason"] for r in read_csv(out_ct / "skipped.csv")}
    assert reasons["MR_small.dcm"] == "wrong modality for this model (MR; the model takes CT)"


def test_torchscript_export_predicts_the_same_without_training_code(tmp_path):
    bundle = make_bundle(tmp_path, export=True)
    out_pt, out_ts = tmp_path / "pt", tmp_path / "ts"
    assert (
        main(
            [
                "predict",
                "--bundle",
                str(bundle),
                "--checkpoint",
                str(bundle / "models" / "model.pt"),
                "--input",
                str(DICOM_DIR),
                "--output",
                str(out_pt),
                "--no-progress",
            ]
        )
        == 3
    )
    # the default checkpoint is models/model.ts; a fresh interpreter shows what it imports
    code = (
        "import sys; from medaug.cli import main; "
        f"rc = main(['predict', '--bundle', {str(bundle)!r}, '--input', {str(DICOM_DIR)!r}, "
        f"'--output', {str(out_ts)!r}, '--no-progress']); "
        "print(sorted(m for m in sys.modules if m.startswith('medaug'))); sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 3, result.stderr[-3000:]
    loaded = eval(result.stdout.strip().splitlines()[-1])
    assert not [
        m
        for m in loaded
        if m.startswith(("medaug.models", "medaug.pipelines."))
        and m not in ("medaug.pipelines.predict", "medaug.pipelines.tta")
    ]
    pt, ts = read_csv(out_pt / "predictions.csv"), read_csv(out_ts / "predictions.csv")
    assert [r["path"] for r in pt] == [r["path"] for r in ts]
    for a, b in zip(pt, ts):
        assert float(a["prob_malignant"]) == pytest.approx(float(b["prob_malignant"]), abs=1e-5)
    assert ts[0]["checkpoint_sha256"] == hashlib.sha256((bundle / "models" / "model.ts").read_bytes()).hexdigest()


def test_usage_errors_exit_2_and_name_the_argument(bundle, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MEDAUG_BUNDLE", raising=False)
    monkeypatch.delenv("MEDAUG_UID_SALT", raising=False)
    src = tmp_path / "in"
    src.mkdir()
    shutil.copyfile(DICOM_DIR / "CT_small.dcm", src / "a.dcm")
    no_ckpt = Path(shutil.copytree(bundle, tmp_path / "no_ckpt", ignore=shutil.ignore_patterns("models")))
    wrong = Path(shutil.copytree(bundle, tmp_path / "wrong_net"))
    config = json.loads((wrong / "configs" / "inference.json").read_text())
    config["classifier"] = "resnet18"
    (wrong / "configs" / "inference.json").write_text(json.dumps(config))
    cases = {
        "--bundle": ["predict", "--input", str(src), "--output", str(tmp_path / "o")],
        "--bundle: ": ["predict", "--bundle", str(tmp_path), "--input", str(src), "--output", str(tmp_path / "o")],
        "--input": [
            "predict",
            "--bundle",
            str(bundle),
            "--input",
            str(tmp_path / "nope"),
            "--output",
            str(tmp_path / "o"),
        ],
        "--output": ["predict", "--bundle", str(bundle), "--input", str(src), "--output", str(src / "out")],
        "--checkpoint": ["predict", "--bundle", str(no_ckpt), "--input", str(src), "--output", str(tmp_path / "o")],
        "--checkpoint: ": ["predict", "--bundle", str(wrong), "--input", str(src), "--output", str(tmp_path / "o")],
        "--hash-uids": [
            "predict",
            "--bundle",
            str(bundle),
            "--input",
            str(src),
            "--output",
            str(tmp_path / "o"),
            "--hash-uids",
        ],
    }
    for argument, argv in cases.items():
        assert main(argv) == 2, argument
        assert f"error: {argument.strip()}" in capsys.readouterr().err, argument
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "predict",
                "--bundle",
                str(bundle),
                "--input",
                str(src),
                "--output",
                str(tmp_path / "o"),
                "--batch-size",
                "0",
            ]
        )
    assert exit_info.value.code == 2 and "--batch-size" in capsys.readouterr().err
    assert not (src / "out").exists() and sorted(p.name for p in src.iterdir()) == ["a.dcm"]


def test_unexpected_failure_exits_1_and_leaves_no_half_written_output(bundle, tmp_path, monkeypatch, capsys):
    import medaug.pipelines.predict as P

    def broken(*args, **kwargs):
        raise RuntimeError("model exploded")

    out = tmp_path / "out"
    monkeypatch.setattr(P, "_Decoder", lambda *a, **k: broken)
    assert (
        main(["predict", "--bundle", str(bundle), "--input", str(DICOM_DIR), "--output", str(out), "--no-progress"])
        == 1
    )
    assert "unexpected failure (RuntimeError)" in capsys.readouterr().err
    assert not out.exists() or not list(out.iterdir())


def test_a_bundle_whose_config_would_run_code_is_refused_unless_trusted(bundle, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    evil = Path(shutil.copytree(bundle, tmp_path / "evil"))
    config = json.loads((evil / "configs" / "inference.json").read_text())
    config["frames"] = f"$open({str(marker)!r}, 'w').close() or 'middle'"  # a key predict reads
    (evil / "configs" / "inference.json").write_text(json.dumps(config))
    argv = [
        "predict",
        "--bundle",
        str(evil),
        "--input",
        str(DICOM_DIR),
        "--output",
        str(tmp_path / "o"),
        "--no-progress",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: --bundle:" in err and "frames: expression" in err and "--trust-bundle" in err
    assert not marker.exists() and not (tmp_path / "o").exists()

    component = Path(shutil.copytree(bundle, tmp_path / "component"))  # code through a _target_, no '$'
    config = json.loads((component / "configs" / "inference.json").read_text())
    config["preprocessing"]["transforms"].append({"_target_": "os.system", "command": f"touch {marker}"})
    (component / "configs" / "inference.json").write_text(json.dumps(config))
    assert main(["predict", "--bundle", str(component), *argv[3:]]) == 2
    assert "'os.system' (os.system) is outside monai and medaug" in capsys.readouterr().err
    assert not marker.exists()

    assert main([*argv, "--trust-bundle"]) == 3, "trusted: evaluated as MONAI would"  # ATTRIBUTION.md is no image
    assert marker.exists() and "--trust-bundle" in capsys.readouterr().err


def test_help_documents_exit_codes_and_default_checkpoint(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = capsys.readouterr().out
    for part in (
        "exit codes",
        "0  every file was used",
        "3  finished",
        "2  usage",
        "1  unexpected",
        "models/model.ts",
        "models/model.pt",
        "skipped.csv",
        "--hash-uids",
        "--trust-bundle",
    ):
        assert part in text, part


def test_inference_config_runs_the_same_path(bundle, tmp_path):
    """``python -m monai.bundle run --config_file configs/inference.json`` uses FolderPrediction, the same
    path as the CLI (checked in-process here; tests/bundles/test_bundle_e2e.py runs it as users do)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update(
        {
            "bundle_root": str(bundle),
            "input_dir": str(DICOM_DIR),
            "output_dir": str(tmp_path / "b"),
            "ckpt_path": str(bundle / "models" / "model.pt"),
            "prediction#progress": False,
        }
    )
    summary = parser.get_parsed_content("prediction").run()
    assert summary.exit_code == 3 and summary.images == len(SAMPLES)
    assert (
        main(
            [
                "predict",
                "--bundle",
                str(bundle),
                "--input",
                str(DICOM_DIR),
                "--output",
                str(tmp_path / "c"),
                "--no-progress",
            ]
        )
        == 3
    )
    b, c = read_csv(tmp_path / "b" / "predictions.csv"), read_csv(tmp_path / "c" / "predictions.csv")
    assert [(r["path"], r["prob_malignant"]) for r in b] == [(r["path"], r["prob_malignant"]) for r in c]
    assert (tmp_path / "b" / "predictions.csv").read_text() == (tmp_path / "c" / "predictions.csv").read_text()


FEW = ("CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm")
#: logits times (1 - 2) before the softmax: each image's two probabilities swap, its predicted class flips
REVERSED_LOGITS = [
    {"_target_": "ScaleIntensityd", "keys": "pred", "minv": None, "maxv": None, "factor": -2.0},
    {"_target_": "Activationsd", "keys": "pred", "softmax": True},
]


def _few_images(root: Path) -> Path:
    root.mkdir()
    for name in FEW:
        shutil.copyfile(DICOM_DIR / name, root / name)
    return root


def _with_postprocessing(bundle: Path, root: Path, transforms: list[dict]) -> Path:
    """A copy of ``bundle`` whose inference.json has ``transforms`` as its ``postprocessing``."""
    copy = Path(shutil.copytree(bundle, root))
    config_file = copy / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    config["postprocessing"]["transforms"] = transforms
    config_file.write_text(json.dumps(config, indent=4))
    return copy


def _monai_bundle_run(bundle: Path, source: Path, out: Path) -> None:
    """``python -m monai.bundle run --config_file <bundle>/configs/inference.json --bundle_root ...``, in this
    process (its logging.conf left out: it would reconfigure the test run's logging)."""
    from monai.bundle import run

    run(
        config_file=str(bundle / "configs" / "inference.json"),
        logging_file=False,
        bundle_root=str(bundle),
        input_dir=str(source),
        output_dir=str(out),
        ckpt_path=str(bundle / "models" / "model.pt"),
        **{"prediction#progress": False},
    )


def _medaug_predict(bundle: Path, source: Path, out: Path) -> int:
    return main(["predict", "--bundle", str(bundle), "--input", str(source), "--output", str(out), "--no-progress"])


def test_the_postprocessing_of_inference_json_makes_the_predictions_of_both_paths(bundle, tmp_path):
    """inference.json's ``postprocessing`` is what turns the network's outputs into the probabilities and the
    predicted class, through ``monai.bundle run`` and ``medaug predict`` alike: reversing the logits before
    the softmax swaps every image's probabilities and flips its prediction, in both."""
    source = _few_images(tmp_path / "in")
    assert _medaug_predict(bundle, source, tmp_path / "softmax") == 0
    default = {r["path"]: r for r in read_csv(tmp_path / "softmax" / "predictions.csv")}
    assert sorted(default) == sorted(FEW)

    reversed_bundle = _with_postprocessing(bundle, tmp_path / "reversed", REVERSED_LOGITS)
    _monai_bundle_run(reversed_bundle, source, tmp_path / "by_monai")
    assert _medaug_predict(reversed_bundle, source, tmp_path / "by_medaug") == 0
    for out in ("by_monai", "by_medaug"):
        rows = read_csv(tmp_path / out / "predictions.csv")
        assert sorted(r["path"] for r in rows) == sorted(FEW), out
        for row in rows:
            before = default[row["path"]]
            assert float(row["prob_malignant"]) == pytest.approx(float(before["prob_normal_benign"]), abs=2e-6), out
            assert float(row["prob_normal_benign"]) == pytest.approx(float(before["prob_malignant"]), abs=2e-6), out
            assert {row["predicted"], before["predicted"]} == set(CLASSES), (out, row["path"])
    by_monai, by_medaug = (read_csv(tmp_path / out / "predictions.csv") for out in ("by_monai", "by_medaug"))
    assert by_monai == by_medaug


def test_a_postprocessing_that_gives_no_value_per_class_is_a_bundle_error(bundle, tmp_path, capsys):
    """``AsDiscreted(argmax=True)`` leaves one class index per image, not the per-class values the
    ``prob_<class>`` columns need: exit 2 naming the bundle, and no output set."""
    source = _few_images(tmp_path / "in")
    argmax = _with_postprocessing(
        bundle, tmp_path / "argmax", [{"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]
    )
    assert _medaug_predict(argmax, source, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "error: --bundle:" in err and "postprocessing gives 1 value(s) per image, not one per class (2)" in err
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_walk_input_follows_folder_links_once_and_reports_the_rest(tmp_path):
    from medaug.io.sources import walk_input

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.dcm").write_bytes(b"x")
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "b.dcm").write_bytes(b"y")
    (root / ".hidden").write_bytes(b"z")
    os.symlink(outside, root / "again")  # followed: a site may link its exports together
    os.symlink(outside, root / "linked")  # the same folder a second time: reported, not read twice
    os.symlink(root / "missing.dcm", root / "dangling.dcm")
    files, problems = walk_input(root)
    assert [rel for _, rel in files] == ["again/a.dcm", "sub/b.dcm"]
    assert {p["path"]: p["reason"] for p in problems} == {
        "linked": "same folder as another path already read (through a symbolic link), not read twice",
        "dangling.dcm": "broken symbolic link (target does not exist)",
        ".hidden": "hidden file (name starts with '.'), not read; rename it to use it",
    }


def test_hidden_files_and_folders_are_listed_in_skipped_csv_not_predicted(bundle, tmp_path):
    source = tmp_path / "in"
    (source / ".dir").mkdir(parents=True)
    shutil.copyfile(DICOM_DIR / "CT_small.dcm", source / "CT_small.dcm")
    shutil.copyfile(DICOM_DIR / "CT_small.dcm", source / ".hidden.dcm")
    shutil.copyfile(DICOM_DIR / "CT_small.dcm", source / ".dir" / "x.dcm")
    out = tmp_path / "out"
    code = main(["predict", "--bundle", str(bundle), "--input", str(source), "--output", str(out), "--no-progress"])
    assert code == 3
    assert [r["path"] for r in read_csv(out / "predictions.csv")] == ["CT_small.dcm"]
    assert {r["path"]: r["reason"] for r in read_csv(out / "skipped.csv")} == {
        ".hidden.dcm": "hidden file (name starts with '.'), not read; rename it to use it",
        ".dir": "hidden folder (name starts with '.'), not searched; rename it to use its files",
    }


def test_file_names_that_are_not_utf8_are_escaped_not_fatal(bundle, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    raw = os.fsencode(source) + b"/scan_\xff.dcm"
    with open(raw, "wb") as handle:
        handle.write((DICOM_DIR / "CT_small.dcm").read_bytes())
    out = tmp_path / "out"
    assert (
        main(["predict", "--bundle", str(bundle), "--input", str(source), "--output", str(out), "--no-progress"]) == 0
    )
    assert [r["path"] for r in read_csv(out / "predictions.csv")] == ["scan_\\xff.dcm"]


# ------------------------------------------------------------------------------------ multi-frame


def _bundle_preprocessing(bundle: Path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    return parser.get_parsed_content("preprocessing")


def _last_frame_corrupt(target: Path) -> None:
    """emri_small in RLE with its last frame overwritten (item lengths intact): decoding every frame fails."""
    from pydicom.encaps import generate_frames
    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(DICOM_DIR / "emri_small.dcm")
    ds.compress(RLELossless)
    frames = list(generate_frames(ds.PixelData, number_of_frames=10))
    frames[9] = b"\xff" * len(frames[9])
    ds.PixelData = encapsulate(frames)
    ds.save_as(target)


def test_all_frames_are_decoded_once_per_chunk_with_the_inputs_of_one_frame_at_a_time(bundle):
    """With --frames all a multi-frame file is decoded a chunk of frames per task (the first task hands out
    the others) and the bundle's transforms after the loader run per frame: the model inputs are those of
    the bundle's preprocessing called once per frame, as before."""
    from medaug.pipelines.predict import _Decoder

    preprocessing = _bundle_preprocessing(bundle)
    for name, chunks in (("emri_small.dcm", [[4, 5, 6, 7], [8, 9]]), ("eCT_Supplemental.dcm", [])):
        path = DICOM_DIR / name
        first = _Decoder(preprocessing, "all", None, chunk=4)((path, name))
        assert first.skipped is None and [frames for _, _, frames in first.more] == chunks
        items = first.items + [item for task in first.more for item in _Decoder(preprocessing, "all", None)(task).items]
        assert [fields["frame"] for fields, _ in items] == list(range(len(items)))
        for fields, image in items:
            one_frame = preprocessing({"image": str(path), "frame": fields["frame"]})["image"]
            np.testing.assert_array_equal(image, one_frame.numpy())


@pytest.mark.parametrize("parallel", ["thread", "process"])
def test_all_frames_predicted_in_order_and_a_file_failing_in_a_later_chunk_is_skipped_whole(bundle, tmp_path, parallel):
    from medaug.pipelines.predict import load_model

    source = tmp_path / "in"
    source.mkdir()
    for name in ("CT_small.dcm", "emri_small.dcm", "eCT_Supplemental.dcm"):
        shutil.copyfile(DICOM_DIR / name, source / name)
    _last_frame_corrupt(source / "corrupt_last_frame.dcm")
    out = tmp_path / "out"
    # batch 3: emri_small's 10 frames are 4 tasks; the corrupt file fails in its last one, after 3 good ones
    assert (
        main(
            [
                "predict",
                "--bundle",
                str(bundle),
                "--input",
                str(source),
                "--output",
                str(out),
                "--frames",
                "all",
                "--batch-size",
                "3",
                "--workers",
                "2",
                "--parallel",
                parallel,
                "--no-progress",
            ]
        )
        == 3
    )
    rows = read_csv(out / "predictions.csv")
    assert [(r["path"], r["frame"]) for r in rows] == [
        ("CT_small.dcm", ""),
        *[("eCT_Supplemental.dcm", str(k)) for k in range(2)],
        *[("emri_small.dcm", str(k)) for k in range(10)],
    ]
    assert read_csv(out / "skipped.csv") == [
        {"path": "corrupt_last_frame.dcm", "reason": "truncated or corrupt pixel data"}
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["predicted_files"], summary["skipped"], summary["images"]) == (3, 1, 13)

    preprocessing = _bundle_preprocessing(bundle)
    model = load_model(bundle / "models" / "model.pt", build_classifier("small_cnn", 1, 2, (32, 32)))
    images = torch.stack(
        [
            preprocessing({"image": str(source / r["path"]), "frame": int(r["frame"]) if r["frame"] else None})["image"]
            for r in rows
        ]
    )
    with torch.inference_mode():
        expected = torch.softmax(model(images), dim=1)[:, 0].numpy()
    np.testing.assert_allclose([float(r["prob_malignant"]) for r in rows], expected, atol=1e-5)

    middle = tmp_path / "middle"  # the middle frame alone decodes: the file is predicted
    assert (
        main(
            [
                "predict",
                "--bundle",
                str(bundle),
                "--input",
                str(source),
                "--output",
                str(middle),
                "--parallel",
                parallel,
                "--no-progress",
            ]
        )
        == 0
    )
    assert {r["path"]: r["frame"] for r in read_csv(middle / "predictions.csv")}["corrupt_last_frame.dcm"] == "5"
