"""End to end through MONAI's bundle runner, the way users run a study: the smoke overlay trains a
tiny model for two epochs, scores the test split and leaves a finished MLflow run behind."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.conftest import DICOM_DIR, REPO

pytestmark = pytest.mark.slow
CONFIGS = ("configs/train.json", "configs/smoke.json")
EXPECTED_ARTIFACTS = {
    "metrics.json",
    "predictions.csv",
    "confusion_matrix.png",
    "roc.png",
    "skipped.csv",
    "leaks.csv",
    "conflicting_duplicates.csv",
    "config.json",
    "training_curves.png",
    "checkpoint/model.pt",
}


def run_bundle(
    bundle: Path, out: Path, *overrides: str, configs=CONFIGS, env_uri=True, tracking_uri: str | None = None
) -> subprocess.CompletedProcess:
    config_files = str([str(bundle / c) for c in configs])
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        config_files,
        "--bundle_root",
        str(bundle),
        "--output_dir",
        str(out),
        *overrides,
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    if tracking_uri or env_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri or f"sqlite:///{out / 'mlflow.db'}"
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def finished_runs(out: Path):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("imbalance_baselines")
    return client, client.search_runs([experiment.experiment_id])


def artifact_paths(client, run_id, path=None):
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_smoke_run_on_the_shipped_data_leaves_a_finished_mlflow_run(bundle_copy, tmp_path, monkeypatch):
    """Also the leak settings: BreastMNIST's one image in train as malignant and in test as
    normal_benign (npz#train/115 = npz#test/76) is reported, kept as asked, and its test copy dropped;
    the MLflow model, asked for with tracker#log_model; and a SimCLR pretraining of the smoke budget
    (pretrain#method simclr): cached, with an MLflow run of its own, and the network built from it."""
    out = tmp_path / "out"
    shipped = REPO / "data" / "breastmnist_64.npz"
    before = hashlib.sha256(shipped.read_bytes()).hexdigest()
    result = run_bundle(
        bundle_copy,
        out,
        "--leaks",
        "drop_test",
        "--conflicting_duplicates",
        "keep",
        "--tracker#log_model",
        "true",
        "--pretrain#method",
        "simclr",
        "--evaluate#robustness#enabled",
        "true",
        "--evaluate#robustness#corruptions",
        "['speckle', 'jpeg']",
        "--evaluate#robustness#severities",
        "[1, 3]",
    )
    client, runs = finished_runs(out)
    by_stage = {r.data.tags["stage"]: r for r in runs}
    assert len(runs) == 2 and set(by_stage) == {"train", "pretrain"}
    run = client.get_run(by_stage["train"].info.run_id)  # with its dataset input and model
    (cached,) = (out / "pretrain_cache").iterdir()
    pretrained = json.loads((cached / "pretrain.json").read_text())
    assert len(pretrained["loss"]) == 2 and pretrained["pool"]["size"] == 32
    assert (run.data.params["pretrain_method"], run.data.params["pretrain_cache_key"]) == ("simclr", cached.name)
    assert run.data.params["pretrained_path"] == str(cached / "model.pt")
    assert f"from {cached / 'model.pt'}; 0 missing, 0 unexpected, 0 with mismatched shapes" in result.stdout
    assert "pretrain/pretrain.json" in artifact_paths(client, run.info.run_id)
    fit = by_stage["pretrain"]
    assert fit.info.status == "FINISHED" and len(client.get_metric_history(fit.info.run_id, "pretrain_loss")) == 2
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    for name in ("balanced_accuracy", "auc", "sensitivity", "specificity", "f1", "mcc", "kappa", "youden"):
        assert f"test_{name}" in metrics
        assert metrics[f"test_{name}_ci_low"] <= metrics[f"test_{name}"] <= metrics[f"test_{name}_ci_high"]
    assert "test_sensitivity_class_malignant" in metrics
    assert run.data.tags["strategy"] == "class_weight" and run.data.tags["seed"] == "0"
    assert run.data.params["data.counts.test.malignant"] == "42"
    assert run.data.params["rebalance.method"] == "class_weight"
    params = run.data.params
    assert not [k for k, v in params.items() if v.startswith(("@", "$")) or k.startswith(("imports", "run."))]
    assert params["num_classes"] == "2" and "run_dir" not in params
    (data,) = run.inputs.dataset_inputs
    assert json.loads(data.dataset.source)["uri"] == params["dataset_dir"]
    assert data.dataset.digest == params["data.content_hash"][:16]
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    (model,) = run.outputs.model_outputs
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)  # models:/ URIs resolve in the global store
    signature = mlflow.models.get_model_info(f"models:/{model.model_id}").signature
    assert signature.inputs.inputs[0].shape == (-1, 1, 32, 32) and signature.outputs.inputs[0].shape == (-1, 2)
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    assert len(client.get_metric_history(run.info.run_id, "val_balanced_accuracy")) == 2
    assert EXPECTED_ARTIFACTS <= artifact_paths(client, run.info.run_id)
    assert "test metrics on 155 real test images" in result.stdout
    assert (
        "leaked test images (identical pixels to a train/val image): 1, dropped before scoring (leaks: drop_test); "
        "1 group(s) of identical images with conflicting labels (2 images) kept as labelled"
    ) in result.stdout
    assert metrics["data_leaked_test_images"] == 1 and metrics["data_leaked_test_images_dropped"] == 1
    run_dir = out / run.info.run_name
    saved = json.loads((run_dir / "metrics.json").read_text())["data_leaks"]
    assert (saved["leaked_test_images"], saved["dropped_test_images"], saved["conflicting_groups"]) == (1, 1, 1)
    predictions = (run_dir / "predictions.csv").read_text()
    assert "#test/76," not in predictions and "#test/75," in predictions
    assert (
        "#test/76" in (run_dir / "leaks.csv").read_text()
        and "#train/115" in (run_dir / "conflicting_duplicates.csv").read_text()
    )
    assert not (REPO / "mlruns").exists() and not (bundle_copy / "runs").exists()
    # robustness: the test split under the ultrasound suite's speckle and JPEG, in MLflow and metrics.json
    for cell in ("speckle_s1", "speckle_s3", "jpeg_s1", "jpeg_s3"):
        assert 0.0 <= metrics[f"robust_balanced_accuracy_{cell}"] <= 1.0 and f"robust_auc_{cell}" in metrics
    low, high = metrics["robust_mean_balanced_accuracy_ci_low"], metrics["robust_mean_balanced_accuracy_ci_high"]
    assert low <= metrics["robust_mean_balanced_accuracy"] <= high
    assert (
        run.data.tags["robust_worst_corruption"] in ("speckle", "jpeg")
        and run.data.tags["robust_suite"] == "ultrasound"
    )
    assert {"robustness_curves.png", "robustness.csv"} <= artifact_paths(client, run.info.run_id)
    assert "robustness (ultrasound suite, severities 1, 3" in result.stdout
    robust = json.loads((run_dir / "metrics.json").read_text())["robustness"]
    scored = [line.split(",")[0] for line in predictions.splitlines()[1:]]
    assert robust["images"] == ["/".join(ref.split("/")[-3:]) for ref in scored]  # the test split, in its order
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == before  # corrupted in memory only
    train_val = {e["image"] for e in json.loads((run_dir / "datalist.json").read_text()) if e["split"] != "test"}
    assert all("#test/" in ref for ref in robust["images"]) and not any("#test/" in ref for ref in train_val)


def test_same_seed_same_metrics_and_strategies_swap_by_override(bundle_copy, tmp_path):
    out = tmp_path / "out"
    for _ in range(2):
        run_bundle(bundle_copy, out, "--rebalance#method", "oversample")
    _, runs = finished_runs(out)
    # the override swapped the bundle's default strategy (class_weight) in tags and parameters
    assert [(r.data.tags["strategy"], r.data.params["rebalance.method"]) for r in runs] == [("oversample",) * 2] * 2
    first, second = (r.data.metrics for r in runs)
    assert {k: v for k, v in first.items() if k.startswith("test_")} == {
        k: v for k, v in second.items() if k.startswith("test_")
    }


def test_png_tree_and_dicom_folder_as_dataset_dir(bundle_copy, tmp_path, png_tree, dicom_folder):
    out = tmp_path / "png"
    run_bundle(bundle_copy, out, "--dataset_dir", str(png_tree))
    _, runs = finished_runs(out)
    assert runs[0].info.status == "FINISHED" and runs[0].data.params["data.format"] == "folder"

    out = tmp_path / "dicom"
    run_bundle(
        bundle_copy, out, "--dataset_dir", str(dicom_folder), "--class_names", "['ct','mr']", "--positive_class", "mr"
    )
    client, runs = finished_runs(out)
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["data.format"] == "dicom_csv"
    assert run.data.metrics["data_skipped_files"] == 3
    local = client.download_artifacts(run.info.run_id, "skipped.csv", str(tmp_path))
    assert "truncated.dcm" in Path(local).read_text()
    assert "PAT0" not in json.dumps(run.data.params), "no patient identifier in MLflow params"


def test_a_labels_csv_beside_dataset_dir_stops_the_bundle_before_training_naming_labels_csv(bundle_copy, tmp_path):
    from tests.io.test_sources import site_folders

    images = site_folders(tmp_path / "export")
    config_files = str([str(bundle_copy / c) for c in CONFIGS])
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
            str(tmp_path / "out"),
            "--dataset_dir",
            str(images),
        ],
        cwd=REPO,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert f"--labels_csv '{tmp_path / 'export' / 'labels.csv'}'" in result.stderr, result.stderr[-3000:]
    assert not list((tmp_path / "out").rglob("model.pt")), "no training started"


def test_embedded_store_lands_under_output_dir_without_env(bundle_copy, tmp_path):
    out = tmp_path / "out"
    run_bundle(bundle_copy, out, env_uri=False)
    assert (out / "mlflow.db").is_file() and (out / "mlruns").is_dir()


def test_evaluate_and_inference_configs_reuse_the_trained_checkpoint(bundle_copy, tmp_path, dicom_folder):
    """Trained with the fine-tuning recipe's options on (selection on validation loss, the weights'
    moving average, flip TTA, warm-up): the EMA checkpoint loads strictly into the network of the
    evaluate and inference configs, and flip TTA gives the same test numbers when evaluated again."""
    out = tmp_path / "out"
    recipe = ("--select_on", "loss", "--ema#enabled", "true", "--tta", "flip", "--warmup_epochs", "1")
    run_bundle(bundle_copy, out, *recipe)
    client, runs = finished_runs(out)
    trained = runs[0]
    for name in ("val_loss", "val_balanced_accuracy", "val_auc"):
        assert len(client.get_metric_history(trained.info.run_id, name)) == 2
    checkpoint = out / trained.info.run_name / "model.pt"
    record = json.loads(checkpoint.with_name("model.json").read_text())  # what inference needs, beside it
    assert (record["classifier"], record["image_size"], record["channels"]) == ("small_cnn", [32, 32], 1)
    assert record["class_names"] == ["malignant", "normal_benign"] and record["modalities"] == ["US"]
    assert record["flip_axes"] == [1], "the ultrasound preset flips left-right only"

    run_bundle(
        bundle_copy,
        out,
        "--ckpt_path",
        str(checkpoint),
        "--tta",
        "flip",
        configs=("configs/train.json", "configs/smoke.json", "configs/evaluate.json"),
    )
    _, runs = finished_runs(out)
    evaluated = next(r for r in runs if r.data.tags.get("stage") == "evaluate")
    assert evaluated.info.status == "FINISHED"
    assert evaluated.data.metrics["test_auc"] == pytest.approx(trained.data.metrics["test_auc"])

    before = sorted(p.stat().st_mtime_ns for p in dicom_folder.rglob("*") if p.is_file())
    predictions = tmp_path / "predictions"
    config = str([str(bundle_copy / "configs" / "inference.json")])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            config,
            "--bundle_root",
            str(bundle_copy),
            "--input_dir",
            str(dicom_folder),
            "--output_dir",
            str(predictions),
            "--ckpt_path",
            str(checkpoint),
            "--classifier",
            "small_cnn",
            "--image_size",
            "[32,32]",
            "--modalities",
            "any",  # the record says US (the ultrasound preset); these are CT and MR
            "--tta",
            "flip",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rows = json.loads((predictions / "predictions.json").read_text())
    assert len(rows) == 24 and all(r["sop_instance_uid"] for r in rows)
    assert {r["predicted"] for r in rows} <= {"malignant", "normal_benign"}
    skipped = (predictions / "skipped.csv").read_text()
    assert all(name in skipped for name in ("truncated.dcm", "notes.txt", "SR0001", "labels.csv"))
    assert "Test^" not in (predictions / "predictions.csv").read_text(), "no PatientName in the outputs"
    assert sorted(p.stat().st_mtime_ns for p in dicom_folder.rglob("*") if p.is_file()) == before

    # medaug export fills the bundle's models/; medaug predict then needs no checkpoint, network or modality flag
    from medaug.cli import main

    assert main(["export", str(checkpoint.parent), "--bundle", str(bundle_copy)]) == 0
    exported = tmp_path / "exported"
    argv = ["predict", "--bundle", str(bundle_copy), "--input", str(DICOM_DIR), "--output", str(exported)]
    assert main([*argv, "--no-progress", "--parallel", "thread"]) == 3
    assert "US1_UNCR.dcm" in {r["path"] for r in json.loads((exported / "predictions.json").read_text())}
    assert "CT_small.dcm,wrong modality for this model (CT; the model takes US)" in (
        (exported / "skipped.csv").read_text()
    )
