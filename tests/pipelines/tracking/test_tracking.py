"""MLflow plumbing: where runs go, how a bundle config becomes parameters, and a failed run is
marked FAILED, with the error as a tag, rather than left RUNNING (also one failing in its setup)."""

import mlflow
import pytest
import torch
from ignite.engine import Engine

from medaug.bundle_errors import error_hook
from medaug.pipelines.tracking.tags import ERROR_TAG
from medaug.pipelines.tracking.tracker import RunTracker, artifact_location_for, default_tracking_uri, flatten, safe_key
from medaug.pipelines.train.engine_metrics import epoch_metric, stack_pred_label
from medaug.settings import SettingsError


def test_embedded_store_under_output_dir_unless_the_environment_says_otherwise(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = default_tracking_uri(tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert artifact_location_for(uri) == (tmp_path / "mlruns").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example.org:5000")
    assert default_tracking_uri(tmp_path) == "http://mlflow.example.org:5000"
    assert artifact_location_for("http://mlflow.example.org:5000") is None


def test_flatten_turns_bundle_sections_into_parameter_names():
    config = {
        "rebalance": {"method": "oversample"},
        "image_size": [64, 64],
        "augmentation": [{"prob": 0.5}],
        "imbalance": None,
    }
    assert flatten(config) == {
        "rebalance.method": "oversample",
        "image_size": "[64, 64]",
        "augmentation.0.prob": "0.5",
        "imbalance": "null",
    }
    assert safe_key("train#trainer#max_epochs") == "train.trainer.max_epochs"
    assert safe_key("test_f1_class_normal (benign)") == "test_f1_class_normal _benign_"


def test_a_run_that_raises_is_marked_failed(tmp_path, tracking_uri):
    tracker = RunTracker("unit", tmp_path, "boom", tags={"seed": 3})
    tracker.start()
    engine = Engine(lambda e, b: 1 / 0)
    tracker.attach(engine)
    with pytest.raises(ZeroDivisionError):
        engine.run([1])
    run = mlflow.MlflowClient(tracker.tracking_uri).get_run(tracker.run_id)
    assert run.info.status == "FAILED" and run.data.tags["seed"] == "3"
    assert run.data.tags[ERROR_TAG] == "ZeroDivisionError: division by zero"


def test_a_run_whose_setup_fails_after_it_started_ends_failed_with_the_error(tmp_path, tracking_uri, capsys):
    """Under ``monai.bundle run`` the error hook ends the open run; its log goes to the run folder."""
    tracker = RunTracker("unit", tmp_path, "setup-fails")
    tracker.start()
    error = KeyError("resnet19")  # e.g. a component failing as the trainer is built: no engine runs to catch it
    error_hook(lambda *args: None)(KeyError, error, None)
    run = mlflow.MlflowClient(tracker.tracking_uri).get_run(tracker.run_id)
    assert run.info.status == "FAILED" and run.data.tags[ERROR_TAG] == "KeyError: 'resnet19'"
    mistake = SettingsError("classifier", "not one of resnet18", "did you mean 'resnet18'?", "resnet19")
    tracker = RunTracker("unit", tmp_path, "settings-fail")
    tracker.start()
    with pytest.raises(SystemExit):
        error_hook(lambda *args: None)(SettingsError, mistake, None)
    assert capsys.readouterr().err.strip().endswith(f"(full traceback in {tracker.run_dir / 'error.log'})")
    run = mlflow.MlflowClient(tracker.tracking_uri).get_run(tracker.run_id)
    assert run.info.status == "FAILED" and run.data.tags[ERROR_TAG].startswith("SettingsError: classifier = ")


def test_epoch_metric_scores_a_whole_epoch_of_decollated_outputs():
    outputs = [
        [
            {"pred": torch.tensor([0.9, 0.1]), "label": torch.tensor(0)},
            {"pred": torch.tensor([0.2, 0.8]), "label": torch.tensor(1)},
        ],
        [{"pred": torch.tensor([0.6, 0.4]), "label": torch.tensor(1)}],
    ]
    probs, labels = stack_pred_label(outputs[0])
    assert probs.shape == (2, 2) and labels.tolist() == [0, 1]
    engine = Engine(lambda e, batch: batch)
    epoch_metric("balanced_accuracy").attach(engine, "ba")
    state = engine.run(outputs)
    assert state.metrics["ba"] == pytest.approx((1.0 + 0.5) / 2)  # class 0: 1/1 right, class 1: 1/2 right
