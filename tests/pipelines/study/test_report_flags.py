"""What the report's sanity marks call a smoke or short run, a collapsed or chance-level model, and
when a comparison keeps its verdict (no MLflow: the functions that decide)."""

import numpy as np
import pytest

from medaug.pipelines.study import report_flags as F

Y = np.array([0] * 20 + [1] * 40)


def _prob(pred: np.ndarray, k: int = 2) -> np.ndarray:
    """Probabilities whose argmax is ``pred``, with scores that rank images by it."""
    prob = np.full((pred.size, k), 0.2 / (k - 1))
    prob[np.arange(pred.size), pred] = 0.8
    return prob


def test_a_run_is_smoke_by_its_config_files_and_short_by_its_epochs():
    smoke = F.run_setup({"max_epochs": "2"}, {}, {"configs": '["b/configs/train.json", "b/configs/smoke.json"]'})
    assert smoke.smoke and smoke.max_epochs == 2
    plain = F.run_setup({"max_epochs": "1"}, {})  # a bundle run outside a study: no config list recorded
    assert not plain.smoke and plain.max_epochs == 1
    assert F.run_setup({"max_epochs": "@epochs"}, {}).max_epochs is None  # not resolved: not known
    assert F.run_setup({}, {"max_epochs": 30}).max_epochs == 30  # set by the grid
    assert F.setup_reasons([smoke, smoke]) == ["smoke runs (2 epochs)"]
    assert F.setup_reasons([plain, F.RunSetup([], 40)]) == ["1 of 2 runs short (1 epoch < 3)"]
    assert F.setup_reasons([F.RunSetup([], 40)] * 3) == []
    assert F.setup_reasons([F.RunSetup([], 4)], min_epochs=10) == ["short runs (4 epochs < 10)"]


def test_a_model_that_calls_every_image_one_class_is_collapsed():
    health = F.run_health(Y, np.ones(60, int), _prob(np.ones(60, int)), ["benign", "malignant"], 0)
    assert health["collapsed"] and health["predicted_classes"] == ["malignant"]
    assert health["balanced_accuracy"] == 0.5
    assert F.health_reasons([health, health]) == ["every run predicted one class (malignant)"]


def test_chance_is_a_balanced_accuracy_interval_holding_one_over_k_or_an_auc_interval_holding_half():
    right = np.arange(60) % 2 == 0  # every other image right, in each class: half right
    pred = np.where(right, Y, 1 - Y)
    chance = F.run_health(Y, pred, _prob(pred), ["a", "b"], 1)
    assert not chance["collapsed"]
    assert chance["at_chance"] == ["balanced accuracy CI contains 1/2", "AUC CI contains 0.5"]
    good = F.run_health(Y, Y, _prob(Y), ["a", "b"], 1)
    assert good["at_chance"] == [] and good["balanced_accuracy_ci"][0] > 0.9
    assert F.health_reasons([good, chance, good]) == [
        "1 of 3 runs at chance (balanced accuracy CI contains 1/2; AUC CI contains 0.5)"
    ]
    y3 = np.arange(60) % 3
    pred3 = np.where(np.arange(60) % 6 < 2, y3, (y3 + 1) % 3)  # a third right
    three = F.run_health(y3, pred3, _prob(pred3, 3), ["a", "b", "c"], 1)
    assert three["at_chance"] == ["balanced accuracy CI contains 1/3"]  # no AUC interval with three classes


def test_a_comparison_keeps_its_verdict_unless_its_runs_or_the_strategys_models_are_no_answer():
    full = [F.RunSetup([], 40)] * 5
    healthy, collapsed = F.CellFlags([], []), F.CellFlags([], ["every run predicted one class (b)"])
    assert F.comparison_flags(healthy, healthy, full, full, 5) == {"mark": "ok", "reasons": [], "verdict": True}
    assert F.comparison_flags(collapsed, healthy, full, full, 5)["verdict"] is False
    caution = F.comparison_flags(healthy, collapsed, full, full, 5)  # beating a collapsed baseline: marked, shown
    assert caution == {"mark": "⚠", "reasons": ["baseline: every run predicted one class (b)"], "verdict": True}
    few = F.comparison_flags(healthy, healthy, full, full, 3)  # 5 seeds each, 3 of them in common
    assert few["reasons"] == ["3 seeds < 5"] and not few["verdict"]
    assert F.comparison_text(few) == "✗ not an answer: 3 seeds < 5"
    assert F.comparison_flags(healthy, healthy, full, full, 3, min_seeds=3)["verdict"]
    smoke_base = F.comparison_flags(healthy, healthy, full, [F.RunSetup(["smoke.json"], 2)] * 5, 5)
    assert smoke_base["reasons"] == ["5 of 10 runs smoke (2 epochs)"]


@pytest.mark.parametrize("positive", [0, 1])
def test_two_classes_leave_only_the_negative_class_f1_among_per_class_metrics(positive):
    names = ["normal", "tumour (left)"]
    per_class = [f"test_{m}_class_{c}" for m in ("sensitivity", "specificity", "f1", "auc", "youden") for c in names]
    metrics = ["test_auc", "test_f1", "test_mcc", *per_class, "test_f1_class_tumour _left_"]  # MLflow-safe key
    kept = set(metrics) - F.redundant_binary_metrics(metrics, names, positive)
    negative = names[1 - positive]
    expected = {f"test_f1_class_{negative}"} | ({"test_f1_class_tumour _left_"} if positive == 0 else set())
    assert kept == {"test_auc", "test_f1", "test_mcc"} | expected
    assert F.redundant_binary_metrics(per_class, ["a", "b", "c"], 1) == set()
