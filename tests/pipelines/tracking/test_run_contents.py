"""What a run holds so that MLflow can compare runs: the settings as they resolved (no config
expressions, no code sections, not the run's own name and folder), the data as a dataset input,
an experiment MLflow's UI opens on its runs, and, when asked for, the network as a model."""

import json

import mlflow
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

from medaug.pipelines.tracking.tags import CLASSIC_ML_KIND, EXPERIMENT_KIND_TAG, RUN_DIR_TAG
from medaug.pipelines.tracking.tracker import RunTracker, ensure_experiment, monai_tracking_added


@pytest.fixture(autouse=True)
def _store(tracking_uri):
    """Every run here goes to this folder's shared store (see conftest.py)."""


def tiny_bundle(tmp_path) -> dict:
    """A bundle config with what the real one mixes: literals, references, expressions evaluated
    before the run starts, one evaluated only later, an object, and code sections."""
    return {
        "imports": ["$import os"],
        "output_dir": str(tmp_path / "runs"),
        "seed": 3,
        "run_name": "$'unit-seed{}'.format(@seed)",
        "run_dir": "$os.path.join(@output_dir, @run_name)",
        "ckpt_path": "$os.path.join(@run_dir, 'model.pt')",
        "class_names": ["benign", "malignant"],
        "num_classes": "$len(@class_names)",
        "max_epochs": 2,
        "lr_scheduler": {"T_max": "@max_epochs", "eta_min": 1e-05},
        "device": "$torch.device('cpu')",
        "network": "$torch.nn.Linear(4, @num_classes).to(@device)",
        "tracker": {
            "_target_": "medaug.pipelines.tracking.RunTracker",
            "experiment_name": "unit",
            "output_dir": "@output_dir",
            "run_name": "@run_name",
            "run_dir": "@run_dir",
            "tags": {"seed": "@seed"},
        },
        "initialize": ["$@tracker.start()"],
        "run": ["$@network", "$@ckpt_path", "$@tracker.end()"],
    }


def run_tiny_bundle(tmp_path, config: dict):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(config))
    workflow = ConfigWorkflow(config_file=str(path), workflow_type=None, meta_file=None, logging_file=None)
    workflow.initialize()
    tracker = workflow.parser.get_parsed_content("tracker")
    started = dict(tracker.client.get_run(tracker.run_id).data.params)
    workflow.run()
    return tracker, started, tracker.client.get_run(tracker.run_id)


def test_params_are_the_values_the_config_resolved_to_never_its_expressions(tmp_path):
    tracker, started, run = run_tiny_bundle(tmp_path, tiny_bundle(tmp_path))
    params = run.data.params
    assert not [v for v in params.values() if v.startswith(("@", "$"))]
    assert not [k for k in params if k.split(".")[0] in ("imports", "initialize", "run")]
    assert params["max_epochs"] == "2" and params["lr_scheduler.eta_min"] == "1e-05" and params["seed"] == "3"
    assert "lr_scheduler.T_max" not in params, "a reference is logged under what it points to"
    assert params["output_dir"] == str(tmp_path / "runs"), "an expression evaluated before the start"
    assert params["class_names"] == '["benign", "malignant"]'
    assert "network" not in params, "an object is no parameter"
    assert "tracker.tags.seed" not in params and "tracker._target_" in params
    # Evaluated only after the run started: added when it ends.
    assert "num_classes" not in started and params["num_classes"] == "2" and params["device"] == "cpu"
    # The run's own name and folder differ in every run: the run name and a tag hold them.
    assert not {"run_name", "run_dir", "ckpt_path"} & set(params)
    assert run.info.run_name == "unit-seed3" and run.data.tags[RUN_DIR_TAG] == str(tracker.run_dir.resolve())


class StudyDataStub:
    """What RunTracker.start reads from medaug.io.StudyData."""

    def __init__(self, source):
        self.skipped, self.leaks = [], []
        self.report_paths = {}
        self.source = source

    def write_reports(self, _out_dir):
        return {}

    def fingerprint(self):
        return {
            "source": str(self.source),
            "format": "folder",
            "classes": ["benign", "malignant"],
            "counts": {
                "train": {"benign": 6, "malignant": 2},
                "val": {"benign": 2, "malignant": 1},
                "test": {"benign": 2, "malignant": 1},
            },
            "content_hash": "ab" * 32,
            "skipped": 1,
            "cross_split_duplicates": 0,
            "imbalance": None,
        }


def test_the_data_is_a_dataset_input_named_by_its_source_and_content_hash(tmp_path):
    images = tmp_path / "breast ultrasound (2024)"
    images.mkdir()
    tracker = RunTracker("unit", tmp_path, "data", tags={"stage": "train"})
    tracker.start(StudyDataStub(images))
    (dataset_input,) = tracker.client.get_run(tracker.run_id).inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert dataset.name == "breast ultrasound (2024)" and json.loads(dataset.source) == {"uri": str(images)}
    assert dataset.digest == "ab" * 8, "the start of medaug's content hash (the whole one is data.content_hash)"
    profile = json.loads(dataset.profile)
    assert profile["num_images"] == 14 and profile["split_sizes"] == {"train": 8, "val": 3, "test": 3}
    assert profile["counts"]["train"] == {"benign": 6, "malignant": 2} and profile["skipped_files"] == 1
    assert {t.key: t.value for t in dataset_input.tags} == {"mlflow.data.context": "training"}


def test_the_experiment_opens_on_its_runs_unless_someone_chose_another_kind(tmp_path):
    tracker = RunTracker("unit", tmp_path, "kind")
    tracker.start()
    client = tracker.client
    assert client.get_experiment_by_name("unit").tags[EXPERIMENT_KIND_TAG] == CLASSIC_ML_KIND
    untyped = client.create_experiment("made elsewhere")  # e.g. by MONAI's handler, or before this tag existed
    assert ensure_experiment(client, "made elsewhere", tracker.tracking_uri) == untyped
    assert client.get_experiment(untyped).tags[EXPERIMENT_KIND_TAG] == CLASSIC_ML_KIND
    chosen = client.create_experiment("genai", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    ensure_experiment(client, "genai", tracker.tracking_uri)
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_the_network_is_an_mlflow_model_with_its_signature_only_when_asked(tmp_path):
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    off = RunTracker("unit", tmp_path, "no-model")
    off.start()
    assert off.log_trained_model(network, (1, 8, 8)) is None
    assert not off.client.get_run(off.run_id).outputs.model_outputs

    on = RunTracker("unit", tmp_path, "model", log_model=True)
    on.start()
    uri = on.log_trained_model(network, (1, 8, 8))
    (output,) = on.client.get_run(on.run_id).outputs.model_outputs
    model = on.client.get_logged_model(output.model_id)
    assert model.experiment_id == on.client.get_run(on.run_id).info.experiment_id, "not MLflow's Default experiment"
    signature = mlflow.models.get_model_info(uri).signature
    assert signature.inputs.inputs[0].shape == (-1, 1, 8, 8) and signature.outputs.inputs[0].shape == (-1, 3)


def test_monai_own_tracking_handlers_are_recognised(tmp_path):
    parser = ConfigParser({"output_dir": str(tmp_path), "run_name": "r", "train": {"handlers": []}})
    assert not monai_tracking_added(parser)
    ConfigWorkflow.patch_bundle_tracking(parser, DEFAULT_MLFLOW_SETTINGS)
    assert monai_tracking_added(parser)
