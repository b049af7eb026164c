"""The five study bundles: generated from the default bundle without drift, grids whose keys exist,
and each bundle's smoke overlay run through ``python -m monai.bundle run`` on the shipped data,
checking what its study is about (compute cost, paired-test metrics, FID, four classes, presets)."""

import importlib.util
import json

import mlflow
import numpy as np
import pytest
from monai.bundle import ConfigParser

from medaug.pipelines.study import load_grid, validate_grid_keys
from tests.bundles.test_bundle_e2e import artifact_paths, run_bundle
from tests.bundles.test_oversample_bundle import check_manifest
from tests.conftest import REPO

STUDIES = (
    "hybrid_gan_augmentation",
    "ldm_pediatric_cxr",
    "generative_model_comparison",
    "vae_latent_interpolation",
    "physics_augmentation",
)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_study_configs_are_what_the_generator_writes(capsys):
    """Edit scripts/study_bundles/<study>.yaml (or the default bundle) and rerun the generator."""
    build = _script("build_study_bundles")
    assert sorted(s["name"] for s in build.load_specs()) == sorted(STUDIES)
    assert build.main(["--check"]) == 0, capsys.readouterr().err


def test_a_study_override_of_a_section_the_default_bundle_lacks_is_an_error():
    build = _script("build_study_bundles")
    with pytest.raises(KeyError, match="'augmentz' is not in the default config"):
        build.overlay({"augment": {"preset": "x"}}, {"augmentz#preset": "y"})
    assert build.overlay({"augment": {"preset": "x"}}, {"augment#preset": "y"}) == {"augment": {"preset": "y"}}


@pytest.mark.parametrize("study", STUDIES)
def test_each_study_grid_overrides_only_keys_its_bundle_has(study):
    bundle = REPO / "bundles" / study
    grid = load_grid(bundle / "configs" / "grid.yaml")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    validate_grid_keys(grid, parser)
    assert grid.baseline in grid.strategies and len(grid.seeds) >= 3


def test_the_shipped_four_class_archive_is_what_its_script_builds():
    arrays = _script("build_multiclass_npz").build(REPO / "data")
    with np.load(REPO / "data" / "breast_chest_4class.npz") as shipped:
        assert sorted(shipped.files) == sorted(arrays)
        for key, value in arrays.items():
            np.testing.assert_array_equal(shipped[key], value)
    assert np.bincount(arrays["train_labels"][:, 0]).tolist() == [40, 100, 70, 110]


def _smoke(study: str, tmp_path, *overrides: str):
    bundle = REPO / "bundles" / study
    out = tmp_path / "out"
    run_bundle(bundle, out, *overrides)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(study)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and "test_balanced_accuracy" in run.data.metrics
    return client, run, out


@pytest.mark.slow
def test_hybrid_gan_smoke_logs_the_cost_of_each_part_next_to_accuracy(tmp_path):
    client, run, out = _smoke("hybrid_gan_augmentation", tmp_path)
    m = run.data.metrics
    # 121 normal vs 48 pneumonia train images: 73 new pneumonia images, half GAN, half geometric copies.
    assert m["oversample_synthetic_pneumonia"] == 73 and m["oversample_synthetic_normal"] == 0
    assert {
        "oversample_fit_seconds",
        "oversample_sample_seconds",
        "oversample_augmented_copies_seconds",
        "oversample_fit_peak_memory_mb",
    } <= set(m)
    assert run.data.tags["strategy"] == "hybrid" and run.data.params["data.counts.train.pneumonia"] == "48"
    rows = check_manifest(client, run, out, tmp_path, "pneumonia", 73, {"gan", "augmentation"})
    assert sum(r["generator"] == "gan" for r in rows) == round(0.5 * 73)


@pytest.mark.slow
def test_ldm_pediatric_cxr_smoke_reports_the_metrics_of_the_original(tmp_path):
    client, run, out = _smoke("ldm_pediatric_cxr", tmp_path)
    m = run.data.metrics
    # 25% of 1214 normal, then 0.25 x as many pneumonia (304 + 76), cut in proportion to smoke.json's 200 images
    assert m["oversample_synthetic_pneumonia"] == 159 - 41
    rows = check_manifest(client, run, out, tmp_path, "pneumonia", 159 - 41, {"ldm_img2img"})
    assert all(len(r["parent_ids"].split()) == 1 for r in rows)  # each starts from one real train image
    for name in ("balanced_accuracy", "sensitivity", "specificity", "f1", "mcc", "kappa", "youden"):
        assert np.isfinite(m[f"test_{name}"]) and f"test_{name}_ci_low" in m
    # the official test split (234 normal, 390 pneumonia), cut to 200 in proportion by the smoke overlay
    assert run.data.params["data.counts.test.pneumonia"] == "125"


@pytest.mark.slow
def test_generative_model_comparison_smoke_logs_an_amount_and_the_fid(tmp_path):
    client, run, out = _smoke(
        "generative_model_comparison", tmp_path, "--oversample#method", "vae", "--oversample#multiplier", "3.0"
    )
    m = run.data.metrics
    assert m["oversample_synthetic_pneumonia"] == 2 * 60 and np.isfinite(m["synthetic_fid"])


@pytest.mark.slow
def test_vae_latent_interpolation_smoke_runs_on_four_classes_and_reports_the_rarest(tmp_path):
    client, run, out = _smoke("vae_latent_interpolation", tmp_path)
    m = run.data.metrics
    # Every class topped up to the largest by interpolation: train [39, 100, 70, 110] (one conflicting copy out) cut to
    # smoke.json's 200 images is [25, 62, 44, 69].
    assert [
        m[f"oversample_synthetic_{c}"]
        for c in ("breast_malignant", "breast_normal_benign", "chest_normal", "chest_pneumonia")
    ] == [44, 7, 25, 0]
    assert "test_sensitivity_class_breast_malignant" in m and "test_accuracy" in m
    meta = json.loads((tmp_path / "out" / run.info.run_name / "metrics.json").read_text())
    assert meta["class_names"] == ["breast_malignant", "breast_normal_benign", "chest_normal", "chest_pneumonia"]


@pytest.mark.slow
def test_physics_augmentation_smoke_switches_dataset_and_logs_the_preset_grid(tmp_path):
    client, run, out = _smoke(
        "physics_augmentation", tmp_path, "--dataset", "ultrasound", "--augment#mix#method", "mixup"
    )
    assert run.data.tags["augment_preset"] == "ultrasound" and run.data.tags["strategy"] == "mixup"
    assert run.data.params["data.counts.test.malignant"] == "42"
    assert {"augmentation_grid.png", "augmentation.yaml"} <= artifact_paths(client, run.info.run_id)
