"""Robustness evaluation: the test split scored under each corruption x severity, summarised as a
user compares augmentation chains (mean corruption balanced accuracy, drop from clean, worst
corruption), without touching the clean images or the clean metrics."""

import json

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.inferers import SimpleInferer
from monai.transforms import Activationsd

from medaug.pipelines.evaluate import compute_metrics, test_split
from medaug.pipelines.evaluate.robustness import RobustnessEvaluation, robustness_metrics
from medaug.settings import SettingsError


class BrightIsPositive(torch.nn.Module):
    """Class 1 when the image is brighter than 0.5 on average: brightness and gamma corruptions push
    its positives to class 0, so its robustness can be predicted by hand."""

    def forward(self, x):
        score = 20.0 * (x.mean(dim=(1, 2, 3)) - 0.5)
        return torch.stack([-score, score], dim=1)


def items(n=24):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        label = i % 2
        level = 0.62 if label else 0.38  # class 1 bright, class 0 dark, well away from 0.5
        image = np.clip(level + 0.05 * rng.standard_normal((1, 16, 16)), 0, 1).astype(np.float32)
        out.append(
            {
                "image": MetaTensor(torch.from_numpy(image), meta={"filename_or_obj": f"d/x.npz#test/{i}"}),
                "label": label,
            }
        )
    return out


def score(settings, dataset=None):
    return settings.score(
        BrightIsPositive(),
        SimpleInferer(),
        items() if dataset is None else dataset,
        clean={"balanced_accuracy": 1.0, "auc": 1.0, "sensitivity": 1.0},
        class_names=["dark", "bright"],
        positive_class=1,
        n_bootstrap=200,
    )


def test_every_cell_is_scored_and_the_summary_names_the_worst_corruption():
    settings = RobustnessEvaluation(
        suite="generic", corruptions=["brightness", "jpeg"], severities=[1, 3, 5], progress=False
    )
    result = score(settings)
    cells = {(c["corruption"], c["severity"]): c for c in result["cells"]}
    assert set(cells) == {(n, s) for n in ("brightness", "jpeg") for s in (1, 3, 5)}
    assert cells[("jpeg", 1)]["balanced_accuracy"] == 1.0  # mild compression leaves the means alone
    # darker by 0.15 (s3) moves the bright class (0.62) below 0.5: every positive is missed
    assert cells[("brightness", 3)]["sensitivity"] == 0.0 and cells[("brightness", 3)]["balanced_accuracy"] == 0.5
    summary = result["summary"]
    assert summary["worst_corruption"] == "brightness"
    values = [c["balanced_accuracy"] for c in result["cells"]]
    assert summary["mean_balanced_accuracy"] == pytest.approx(np.mean(values))
    assert summary["relative_drop_balanced_accuracy"] == pytest.approx(1.0 - np.mean(values))
    low, high = summary["mean_balanced_accuracy_ci95"]
    assert low <= summary["mean_balanced_accuracy"] <= high
    assert result["n_images"] == 24 and result["images"][0] == "d/x.npz#test/0"


def test_the_mlflow_names_follow_the_robust_metric_corruption_severity_pattern():
    settings = RobustnessEvaluation(corruptions=["brightness"], severities=[2], progress=False)
    logged = robustness_metrics(score(settings))
    assert {
        "robust_balanced_accuracy_brightness_s2",
        "robust_auc_brightness_s2",
        "robust_sensitivity_brightness_s2",
        "robust_balanced_accuracy_brightness_mean",
        "robust_mean_balanced_accuracy",
        "robust_relative_drop_balanced_accuracy",
        "robust_worst_balanced_accuracy",
        "robust_mean_balanced_accuracy_ci_low",
        "robust_mean_balanced_accuracy_ci_high",
    } <= set(logged)


def test_scoring_leaves_the_clean_images_untouched():
    dataset = items()
    before = [item["image"].clone() for item in dataset]
    score(RobustnessEvaluation(corruptions=["gaussian_noise", "contrast"], severities=[5], progress=False), dataset)
    assert all(torch.equal(item["image"], copy) for item, copy in zip(dataset, before))


def test_the_same_image_gets_the_same_corruption_in_any_order():
    settings = RobustnessEvaluation(corruptions=["gaussian_noise"], progress=False)
    images = [item["image"] for item in items(6)]
    forward = settings.corrupted(images, "gaussian_noise", 3)
    backward = settings.corrupted(images[::-1], "gaussian_noise", 3)
    assert torch.equal(forward, backward.flip(0))


def test_bad_settings_are_errors_naming_the_key():
    with pytest.raises(SettingsError, match="evaluate#robustness#severity.*did you mean 'severities'"):
        RobustnessEvaluation.from_config({"severity": [1]})
    with pytest.raises(SettingsError, match="unknown corruption 'blur'"):
        RobustnessEvaluation.from_config({"corruptions": ["blur"]})
    with pytest.raises(SettingsError, match="severities"):
        RobustnessEvaluation.from_config({"severities": [0, 6]})
    assert RobustnessEvaluation.from_config({"enabled": False}) is None
    assert RobustnessEvaluation.from_config(None) is None


def evaluator_over(dataset):
    loader = DataLoader(Dataset(dataset), batch_size=8)
    return SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=BrightIsPositive(),
        postprocessing=Activationsd(keys="pred", softmax=True),
    )


def test_the_test_evaluation_adds_robustness_without_changing_the_clean_metrics(tmp_path):
    dataset = items()
    plain = test_split.TestEvaluation(
        evaluator_over(dataset), ["dark", "bright"], tmp_path / "plain", n_bootstrap=50
    ).run()
    settings = {"corruptions": ["brightness", "gamma"], "severities": [1, 4], "progress": False}
    robust = test_split.TestEvaluation(
        evaluator_over(dataset), ["dark", "bright"], tmp_path / "robust", n_bootstrap=50, robustness=settings
    ).run()
    assert robust["metrics"] == plain["metrics"] and robust["ci95"] == plain["ci95"]
    saved = json.loads((tmp_path / "robust" / "metrics.json").read_text())
    assert saved["robustness"]["summary"]["clean"]["balanced_accuracy"] == plain["metrics"]["balanced_accuracy"]
    assert len(saved["robustness"]["cells"]) == 4 and "robustness" not in json.loads(
        (tmp_path / "plain" / "metrics.json").read_text()
    )
    rows = (tmp_path / "robust" / "robustness.csv").read_text().splitlines()
    assert rows[1].startswith("clean,0,") and len(rows) == 1 + 1 + 4
    assert (tmp_path / "robust" / "robustness_curves.png").stat().st_size > 0
    # the clean row is the clean test metrics, recomputed here from the predictions
    probs = np.array(
        [
            [float(v) for v in line.split(",")[4:6]]
            for line in (tmp_path / "robust" / "predictions.csv").read_text().splitlines()[1:]
        ]
    )
    labels = [item["label"] for item in dataset]
    assert compute_metrics(labels, probs, positive_class=1)["balanced_accuracy"] == pytest.approx(
        saved["robustness"]["summary"]["clean"]["balanced_accuracy"], abs=1e-6
    )
