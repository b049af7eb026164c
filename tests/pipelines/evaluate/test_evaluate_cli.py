"""``medaug evaluate``: a saved checkpoint scored on a dataset through the bundle's configs/evaluate.json,
clean and under the corruption suite, the network's settings taken from the checkpoint's record."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from medaug.cli import main
from medaug.io import build_model_record, write_model_record
from medaug.models import build_classifier
from tests.conftest import BREAST_64, BUNDLE, REPO

CLASSES = ["malignant", "normal_benign"]


@pytest.fixture
def checkpoint(tmp_path):
    """A small_cnn at 32 px as training leaves it: model.pt and its record model.json (nothing trained)."""
    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    torch.save({"model": build_classifier("small_cnn", 1, 2, (32, 32)).state_dict()}, run / "model.pt")
    record = build_model_record(
        classifier="small_cnn", image_size=[32, 32], channels=1, class_names=CLASSES, positive_class="malignant"
    )
    write_model_record(run / "model.pt", record)
    return run / "model.pt"


@pytest.mark.slow
def test_evaluate_scores_a_checkpoint_clean_and_under_the_asked_corruptions(checkpoint, tmp_path):
    """The bundle's defaults are resnet18 at 64 px: the record's small_cnn at 32 px is what loads."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medaug.cli", "evaluate", "--bundle", str(BUNDLE), "--checkpoint", str(checkpoint)]
    cmd += ["--dataset-dir", str(BREAST_64), "--output-dir", str(out), "--robustness"]
    cmd += ["--corruptions", "jpeg", "brightness", "--severities", "1", "3"]
    cmd += ["--max_images_per_split", "24", "--n_bootstrap", "100", "--study_data#progress", "false"]
    cmd += ["--evaluate#robustness#progress", "false"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONHASHSEED": "0"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "channels, class_names, classifier, frames, image_size, positive_class" in result.stderr  # from model.json
    (run_dir,) = out.glob("evaluate-small_cnn-seed0-*")
    assert f"metrics: {run_dir / 'metrics.json'}" in result.stdout
    assert f"robustness: {run_dir / 'robustness.csv'}" in result.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["class_names"] == CLASSES and metrics["positive_class"] == "malignant"
    cells = {(c["corruption"], c["severity"]) for c in metrics["robustness"]["cells"]}
    assert cells == {("jpeg", 1), ("jpeg", 3), ("brightness", 1), ("brightness", 3)}
    with open(run_dir / "robustness.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) >= 4
    assert json.loads(checkpoint.with_suffix(".json").read_text())["classifier"] == "small_cnn", "record untouched"


def test_a_missing_checkpoint_or_bundle_is_a_usage_error(tmp_path, capsys):
    assert main(["evaluate", "--bundle", str(BUNDLE), "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert f"--checkpoint: file '{tmp_path / 'none.pt'}' not found" in capsys.readouterr().err
    assert main(["evaluate", "--bundle", str(tmp_path), "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "--bundle: " in capsys.readouterr().err


def test_flags_and_overrides_that_contradict_the_record_or_the_bundle_are_refused(checkpoint, capsys):
    base = ["evaluate", "--bundle", str(BUNDLE), "--checkpoint", str(checkpoint)]
    assert main([*base, "--classifier", "resnet18"]) == 2
    assert "--classifier: 'resnet18' contradicts the checkpoint's record" in capsys.readouterr().err
    assert main([*base, "--corruptions", "jpg"]) == 2
    assert "--corruptions: unknown corruption 'jpg'" in capsys.readouterr().err
    assert main([*base, "--max_epoch", "3"]) == 2
    assert "did you mean --max_epochs?" in capsys.readouterr().err
    assert main([*base, "--ckpt_path", "x.pt"]) == 2
    assert "--ckpt_path: set by --checkpoint" in capsys.readouterr().err
