"""Augmentation in the default bundle: train images are augmented by the chosen preset, validation
and test images never are; every preset runs end to end through MONAI's bundle runner and leaves
its augmentation grid in the MLflow run."""

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, Randomizable

from medaug.transforms.presets import AnatomyRuleError
from tests.bundles.test_bundle_e2e import artifact_paths, finished_runs, run_bundle
from tests.conftest import BUNDLE

SUBSET = {"train": 40, "val": 12, "test": 20}  # per split, both classes included
ALWAYS = {"flip_lr": {"prob": 1.0}, "affine": {"prob": 1.0}, "gain": {"prob": 1.0}, "speckle": {"prob": 1.0}}


def bundle_parser(tmp_path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "smoke.json")])
    parser.update({"bundle_root": str(BUNDLE), "output_dir": str(tmp_path / "runs"), **overrides})
    return parser


def test_validation_and_test_images_pass_through_without_augmentation(tmp_path):
    parser = bundle_parser(tmp_path, **{"augment#overrides": ALWAYS})  # every train transform always on
    load = Compose(parser.get_parsed_content("preprocessing"))
    study = parser.get_parsed_content("study_data")
    for section in ("validate", "test"):
        transforms = parser.get_parsed_content(f"{section}#dataset").transform
        assert not any(isinstance(t, Randomizable) for t in transforms.flatten().transforms)
    for section, entries in (("validate", study.val), ("test", study.test)):
        dataset = parser.get_parsed_content(f"{section}#dataset")
        for index in (0, 5, len(entries) - 1):
            expected = load(dict(entries[index]))["image"]
            for _ in range(2):  # the same pixels every time they are read
                assert torch.equal(dataset[index]["image"], expected), f"{section} image {index} was altered"
    train = parser.get_parsed_content("train#dataset")
    assert not torch.equal(train[0]["image"], load(dict(study.train[0]))["image"]), "training images are augmented"
    assert parser.get_parsed_content("augment#plan").name == "ultrasound"


def test_a_vertical_flip_asked_of_the_chest_xray_preset_stops_the_bundle_naming_key_and_rule(tmp_path):
    parser = bundle_parser(
        tmp_path,
        **{
            "augment#preset": "chest_xray",
            "augment#overrides": {"vflip": {"transform": "RandFlipd", "prob": 0.5, "spatial_axis": 0}},
        },
    )
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("augmentation")
    causes, error = [], err.value
    while error is not None:  # MONAI's config parser wraps the error: look down the chain
        causes.append(error)
        error = error.__cause__ or error.__context__
    rule_errors = [e for e in causes if isinstance(e, AnatomyRuleError)]
    assert rule_errors, [repr(e) for e in causes]
    assert str(rule_errors[0]).startswith("augment#overrides#vflip#spatial_axis:")
    assert "'vertical_flip: never'" in str(rule_errors[0])


@pytest.fixture(scope="session")
def small_breast_npz(tmp_path_factory, breast_arrays):
    """The first images of each BreastMNIST split: the preset runs test wiring, not learning."""
    subset = {}
    for split, n in SUBSET.items():
        labels = breast_arrays[f"{split}_labels"].reshape(-1)
        keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[: n // 2] for c in (0, 1)]))
        subset[f"{split}_images"] = breast_arrays[f"{split}_images"][keep]
        subset[f"{split}_labels"] = breast_arrays[f"{split}_labels"][keep]
    path = tmp_path_factory.mktemp("small_breast") / "breastmnist_small.npz"
    np.savez(path, **subset)
    return path


@pytest.mark.slow
# ultrasound with mixup runs in the physics_augmentation study bundle's smoke test.
@pytest.mark.parametrize(
    "preset, mix", [("chest_xray", "cutmix"), ("ct", "none"), ("mri", "manifold_mixup"), ("generic", "none")]
)
def test_the_default_bundle_runs_with_each_preset_and_logs_its_grid(
    bundle_copy, tmp_path, small_breast_npz, preset, mix
):
    out = tmp_path / "out"
    run_bundle(
        bundle_copy,
        out,
        "--augment#preset",
        preset,
        "--augment#mix#method",
        mix,
        "--max_epochs",
        "1",
        "--n_bootstrap",
        "50",
        "--dataset_dir",
        str(small_breast_npz),
    )
    client, runs = finished_runs(out)
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert {"augmentation_grid.png", "augmentation.yaml"} <= artifact_paths(client, run.info.run_id)
    assert run.data.tags["augment_preset"] == preset
    assert run.data.params["augment.preset"] == preset and run.data.params["augment.mix.method"] == mix
