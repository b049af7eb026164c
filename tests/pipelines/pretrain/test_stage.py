"""The pretraining stage: a checkpoint in the study network's own layout for every zoo network (it
loads with nothing missing, unexpected or mismatched; the head stays freshly initialised), cached
under the pool fingerprint + config so that a second study seed reuses it and a changed setting
does not, and what the training run's MLflow run is told."""

import numpy as np
import pytest
from PIL import Image

from medaug.io import build_study_data
from medaug.models import CLASSIFIERS, build_classifier, load_pretrained
from medaug.models.classifiers import MIN_INPUT_SIZE
from medaug.pipelines.pretrain import PretrainStage
from medaug.pipelines.pretrain import stage as pretrain_stage
from medaug.settings import SettingsError
from tests.conftest import BREAST_64


@pytest.fixture(scope="module")
def png_pool(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unlabeled")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(folder / f"scan{i}.png")
    return folder


# VGG-16-BN's two 4096-wide hidden layers (120 M parameters) would take most of the test's time; their width
# changes no name and no head, so they are narrowed here
NARROW = {"vgg16-bn": {"hidden_features": 64}}


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_a_pretrained_checkpoint_loads_into_its_zoo_network_with_nothing_missing(name, png_pool, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain_stage, "plot_curves", lambda *args: None)  # the cache test draws it
    size = [MIN_INPUT_SIZE.get(name, 16)] * 2
    kwargs = NARROW.get(name, {})
    stage = PretrainStage(
        network_kwargs=kwargs,
        method="simclr",
        network=name,
        image_size=size,
        num_classes=2,
        preset="none",
        steps=1,
        batch_size=2,
        embedding_dim=16,
        projection_dim=8,
        pool={"study_train": False, "shipped": False, "folders": [str(png_pool)]},
        cache_dir=tmp_path,
        progress=False,
    )
    path = stage.checkpoint()
    network = build_classifier(name, 1, 2, size, **kwargs)
    assert load_pretrained(network, path) == {"missing": [], "unexpected": [], "mismatched": []}
    head = stage.info["head_keys"]  # left at the study network's fresh initialisation
    assert head and all(network.state_dict()[k].shape[0] == 2 for k in head)
    assert len(stage.info["loss"]) == 1 and stage.info["pool"]["size"] == 4


@pytest.fixture(scope="module")
def studies():
    """The same official train split under two study seeds (BreastMNIST fixes its splits)."""
    return [build_study_data(BREAST_64, seed=seed, progress=False) for seed in (0, 1)]


class FakeTracker:
    """What the stage tells MLflow, recorded."""

    def __init__(self):
        self.run_id, self.params, self.tags, self.artifacts, self.stage_runs = "run", {}, {}, [], []

    def log_params(self, params):
        self.params.update(params)

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_metrics(self, metrics, step=0):
        pass

    def log_metric_history(self, name, values):
        self.params[f"history:{name}"] = len(values)

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append((str(path), artifact_path))

    def stage_run(self, run_name, run_dir, tags):
        run = FakeTracker()
        run.tags.update(tags)
        self.stage_runs.append(run)
        return run

    def end(self, status="FINISHED"):
        self.ended = status


def small_stage(study, tmp_path, tracker=None, **changes):
    settings = dict(
        method="simclr",
        network="small_cnn",
        image_size=(16, 16),
        preset="ultrasound",
        steps=2,
        batch_size=8,
        embedding_dim=16,
        projection_dim=8,
        probe_every=1,
        pool={"shipped": False},
        cache_dir=tmp_path / "cache",
        tracker=tracker,
        progress=False,
    )
    return PretrainStage(study, **{**settings, **changes})


def test_a_second_study_seed_reuses_the_cached_pretraining_and_a_new_setting_does_not(studies, tmp_path, monkeypatch):
    first_tracker = FakeTracker()
    first = small_stage(studies[0], tmp_path, first_tracker)
    path = first.checkpoint()
    assert first_tracker.params["pretrain_cache_hit"] is False and len(first_tracker.stage_runs) == 1
    fit_run = first_tracker.stage_runs[0]
    assert fit_run.tags["stage"] == "pretrain" and fit_run.params["history:pretrain_loss"] == 2
    assert [p["step"] for p in first.info["probe"]] == [0, 1, 2]  # before training, then per probe_every
    assert 0 <= first.info["probe"][0]["knn_balanced_accuracy"] <= 1
    assert {p.name for p in path_folder(path).iterdir()} == {
        "model.pt",
        "pretrain.json",
        "pretrain_curves.png",
        "skipped.csv",
    }

    def no_second_fit(*args, **kwargs):
        raise AssertionError("fitted again")

    monkeypatch.setitem(pretrain_stage.PRETRAIN_METHODS, "simclr", no_second_fit)
    second_tracker = FakeTracker()
    second = small_stage(studies[1], tmp_path, second_tracker)
    assert second.checkpoint() == path and second.info["key"] == first.info["key"]
    assert second_tracker.params == {
        "pretrain_method": "simclr",
        "pretrain_cache_key": first.info["key"],
        "pretrain_cache_hit": True,
    }
    assert not second_tracker.stage_runs and (str(path_folder(path) / "pretrain.json"), "pretrain") in (
        second_tracker.artifacts
    )
    assert small_stage(studies[1], tmp_path, temperature=0.2).cache_key() != first.info["key"]
    assert small_stage(studies[1], tmp_path, network="resnet18").cache_key() != first.info["key"]
    with pytest.raises(AssertionError, match="fitted again"):
        small_stage(studies[1], tmp_path, seed=5).checkpoint()  # the pretraining's own seed is in the key


def path_folder(path):
    from pathlib import Path

    return Path(path).parent


def test_method_none_pretrains_nothing_and_a_misspelled_method_is_named(studies, tmp_path):
    tracker = FakeTracker()
    assert small_stage(studies[0], tmp_path, tracker, method="none").checkpoint() is None
    assert tracker.params == {"pretrain_method": "none", "pretrain_cache_key": "", "pretrain_cache_hit": False}
    assert not (tmp_path / "cache").exists()
    with pytest.raises(SettingsError, match=r"^pretrain#method = 'simclrr': .*did you mean 'simclr'\?$"):
        small_stage(studies[0], tmp_path, method="simclrr")
