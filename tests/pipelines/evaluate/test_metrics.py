"""Behaviour of medaug.pipelines.evaluate.metrics.

The two small cases below have their confusion matrices written out by hand and every
expected number derived by hand in the comments, so the tests double as a worked
example of the conventions (binary positive class, one-vs-rest macro averages, ties).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sklearn.metrics as skm

from medaug.pipelines.evaluate import metrics as M
from medaug.pipelines.evaluate.metrics import (
    METRIC_NAMES,
    PER_CLASS_METRICS,
    accuracy,
    auc,
    balanced_accuracy,
    bootstrap_ci,
    compute_metrics,
    f1,
    format_metrics_table,
    kappa,
    mcc,
    sensitivity,
    specificity,
    youden,
)

approx = pytest.approx

# --------------------------------------------------------------------- binary, N = 10
#
# class 1 = disease (positive), class 0 = healthy.
#
#                 predicted 0   predicted 1
#   true 0 (6)        4 TN          2 FP
#   true 1 (4)        1 FN          3 TP
#
# accuracy          = (4 + 3) / 10                         = 7/10
# sensitivity       = TP / (TP + FN) = 3/4
# specificity       = TN / (TN + FP) = 4/6                  = 2/3
# balanced accuracy = (3/4 + 2/3) / 2                       = 17/24
# F1 (class 1)      = 2*3 / (2*3 + 2 + 1)                   = 2/3
# F1 (class 0)      = 2*4 / (2*4 + 1 + 2)                   = 8/11
# Youden's J        = 3/4 + 2/3 - 1                         = 5/12 (same for both classes)
# MCC               = (3*4 - 2*1) / sqrt(5 * 4 * 6 * 5)     = 10/sqrt(600) = 1/sqrt(6)
# kappa: p_o = 7/10, p_e = (6*5 + 4*5)/100 = 1/2           -> (0.7 - 0.5)/(1 - 0.5) = 2/5
#
# AUC from P(class 1): count, for each positive, the negatives scored lower (+1/2 per tie)
#   positives: 0.7 -> 5 lower (0.1 0.2 0.3 0.4 0.6) + tie with 0.7 -> 5.5
#              0.8 -> 6,   0.9 -> 6,   0.3 -> 2 lower (0.1 0.2) + tie with 0.3 -> 2.5
#   AUC = (5.5 + 6 + 6 + 2.5) / (4 * 6) = 20/24 = 5/6 ; class 0 scored by 1 - p: also 5/6
BIN_TRUE = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
BIN_PRED = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])
BIN_P1 = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.7, 0.8, 0.9, 0.3])
BIN_PROB = np.stack([1.0 - BIN_P1, BIN_P1], axis=1)

# ------------------------------------------------------------------- 3-class, N = 12
#
#                 pred 0  pred 1  pred 2 | true count t
#   true 0           4       1       0   |   5
#   true 1           1       2       1   |   4
#   true 2           1       0       2   |   3
#   predicted p      6       3       3   |  12        trace = 8
#
# one-vs-rest per class: TP, FN = t - TP, FP = p - TP, TN = 12 - t - p + TP
#   class 0: TP 4 FN 1 FP 2 TN 5 -> sens 4/5  spec 5/7  F1 8/11  J 4/5 + 5/7 - 1 = 18/35
#   class 1: TP 2 FN 2 FP 1 TN 7 -> sens 1/2  spec 7/8  F1 4/7   J 1/2 + 7/8 - 1 = 3/8
#   class 2: TP 2 FN 1 FP 1 TN 8 -> sens 2/3  spec 8/9  F1 2/3   J 2/3 + 8/9 - 1 = 5/9
# accuracy = 8/12 = 2/3; balanced accuracy = macro sensitivity = (4/5 + 1/2 + 2/3)/3 = 59/90
# macro specificity = (5/7 + 7/8 + 8/9)/3 = 1249/1512 ; macro F1 = (8/11 + 4/7 + 2/3)/3 = 454/693
# macro J = (18/35 + 3/8 + 5/9)/3 = 3641/7560
# MCC = (trace*N - t.p) / sqrt((N^2 - p.p)(N^2 - t.t)), t.p = 30+12+9 = 51, p.p = 54, t.t = 50
#     = (96 - 51) / sqrt(90 * 94) = 45 / sqrt(8460)
# kappa: p_o = 8/12, p_e = t.p / N^2 = 51/144 -> (96 - 51) / (144 - 51) = 45/93 = 15/31
#
# Probabilities: the predicted class gets 0.6, the others 0.2. Each class column then has
# only two score values (massive ties), the ROC curve has a single interior point
# (1 - spec, sens) and the trapezoid area is (sens + spec)/2 = (1 + J)/2:
#   AUC0 = (1 + 18/35)/2 = 53/70, AUC1 = (1 + 3/8)/2 = 11/16, AUC2 = (1 + 5/9)/2 = 7/9
#   macro AUC = (1 + 3641/7560)/2 = 11201/15120
TRI_TRUE = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
TRI_PRED = np.array([0, 0, 0, 0, 1, 0, 1, 1, 2, 0, 2, 2])
TRI_PROB = np.full((12, 3), 0.2)
TRI_PROB[np.arange(12), TRI_PRED] = 0.6


def test_hand_cases_have_the_confusion_matrices_written_above():
    assert skm.confusion_matrix(BIN_TRUE, BIN_PRED).tolist() == [[4, 2], [1, 3]]
    assert skm.confusion_matrix(TRI_TRUE, TRI_PRED).tolist() == [[4, 1, 0], [1, 2, 1], [1, 0, 2]]
    assert (BIN_PROB.argmax(1) == BIN_PRED).all() and (TRI_PROB.argmax(1) == TRI_PRED).all()


# ------------------------------------------------------------------ single functions


def test_binary_single_metrics_match_hand_computation():
    assert accuracy(BIN_TRUE, BIN_PRED) == approx(7 / 10)
    assert balanced_accuracy(BIN_TRUE, BIN_PRED) == approx(17 / 24)
    assert sensitivity(BIN_TRUE, BIN_PRED) == approx(3 / 4)
    assert specificity(BIN_TRUE, BIN_PRED) == approx(2 / 3)
    assert f1(BIN_TRUE, BIN_PRED) == approx(2 / 3)
    assert youden(BIN_TRUE, BIN_PRED) == approx(5 / 12)
    assert mcc(BIN_TRUE, BIN_PRED) == approx(1 / math.sqrt(6))
    assert kappa(BIN_TRUE, BIN_PRED) == approx(2 / 5)
    assert auc(BIN_TRUE, BIN_PROB) == approx(5 / 6)
    # a 1-D score is read as P(class 1)
    assert auc(BIN_TRUE, BIN_P1) == approx(5 / 6)


def test_binary_average_none_gives_per_class_values():
    np.testing.assert_allclose(sensitivity(BIN_TRUE, BIN_PRED, average=None), [2 / 3, 3 / 4])
    np.testing.assert_allclose(specificity(BIN_TRUE, BIN_PRED, average=None), [3 / 4, 2 / 3])
    np.testing.assert_allclose(f1(BIN_TRUE, BIN_PRED, average=None), [8 / 11, 2 / 3])
    np.testing.assert_allclose(youden(BIN_TRUE, BIN_PRED, average=None), [5 / 12, 5 / 12])
    np.testing.assert_allclose(auc(BIN_TRUE, BIN_PROB, average=None), [5 / 6, 5 / 6])


def test_switching_positive_class_swaps_sensitivity_and_specificity():
    # with class 0 as "positive", its recall 4/6 is the sensitivity and class 1's recall 3/4
    # becomes the specificity
    assert sensitivity(BIN_TRUE, BIN_PRED, positive_class=0) == approx(2 / 3)
    assert specificity(BIN_TRUE, BIN_PRED, positive_class=0) == approx(3 / 4)
    assert f1(BIN_TRUE, BIN_PRED, positive_class=0) == approx(8 / 11)

    as1 = compute_metrics(BIN_TRUE, BIN_PROB, positive_class=1)
    as0 = compute_metrics(BIN_TRUE, BIN_PROB, positive_class=0)
    assert as0["sensitivity"] == approx(as1["specificity"])
    assert as0["specificity"] == approx(as1["sensitivity"])
    assert as0["f1"] == approx(8 / 11)
    # symmetric metrics do not depend on which class is called positive
    for name in ("accuracy", "balanced_accuracy", "mcc", "kappa", "youden"):
        assert as0[name] == approx(as1[name])


def test_three_class_single_metrics_match_hand_computation():
    assert accuracy(TRI_TRUE, TRI_PRED) == approx(2 / 3)
    assert balanced_accuracy(TRI_TRUE, TRI_PRED) == approx(59 / 90)
    np.testing.assert_allclose(sensitivity(TRI_TRUE, TRI_PRED, average=None), [4 / 5, 1 / 2, 2 / 3])
    np.testing.assert_allclose(specificity(TRI_TRUE, TRI_PRED, average=None), [5 / 7, 7 / 8, 8 / 9])
    np.testing.assert_allclose(f1(TRI_TRUE, TRI_PRED, average=None), [8 / 11, 4 / 7, 2 / 3])
    np.testing.assert_allclose(youden(TRI_TRUE, TRI_PRED, average=None), [18 / 35, 3 / 8, 5 / 9])
    np.testing.assert_allclose(auc(TRI_TRUE, TRI_PROB, average=None), [53 / 70, 11 / 16, 7 / 9])
    assert sensitivity(TRI_TRUE, TRI_PRED, average="macro") == approx(59 / 90)
    assert specificity(TRI_TRUE, TRI_PRED, average="macro") == approx(1249 / 1512)
    assert f1(TRI_TRUE, TRI_PRED, average="macro") == approx(454 / 693)
    assert youden(TRI_TRUE, TRI_PRED, average="macro") == approx(3641 / 7560)
    assert auc(TRI_TRUE, TRI_PROB, average="macro") == approx(11201 / 15120)
    assert mcc(TRI_TRUE, TRI_PRED) == approx(45 / math.sqrt(8460))
    assert kappa(TRI_TRUE, TRI_PRED) == approx(15 / 31)


def test_binary_average_is_refused_for_more_than_two_classes():
    with pytest.raises(ValueError, match="average='binary' needs 2 classes"):
        sensitivity(TRI_TRUE, TRI_PRED)
    with pytest.raises(ValueError, match="average must be one of"):
        f1(BIN_TRUE, BIN_PRED, average="weighted")


# ------------------------------------------------------------------- compute_metrics


def test_compute_metrics_binary_reports_positive_class_and_per_class_entries():
    m = compute_metrics(BIN_TRUE, BIN_PROB, class_names=["healthy", "disease"])
    expected = {
        "accuracy": 7 / 10,
        "balanced_accuracy": 17 / 24,
        "auc": 5 / 6,
        "sensitivity": 3 / 4,
        "specificity": 2 / 3,
        "f1": 2 / 3,
        "mcc": 1 / math.sqrt(6),
        "kappa": 2 / 5,
        "youden": 5 / 12,
        "sensitivity_class_healthy": 2 / 3,
        "sensitivity_class_disease": 3 / 4,
        "specificity_class_healthy": 3 / 4,
        "specificity_class_disease": 2 / 3,
        "f1_class_healthy": 8 / 11,
        "f1_class_disease": 2 / 3,
        "auc_class_healthy": 5 / 6,
        "auc_class_disease": 5 / 6,
        "youden_class_healthy": 5 / 12,
        "youden_class_disease": 5 / 12,
    }
    assert set(m) == set(expected) | {"n"}
    assert m["n"] == 10 and isinstance(m["n"], int)
    for key, value in expected.items():
        assert m[key] == approx(value), key
        assert isinstance(m[key], float)


def test_compute_metrics_three_class_uses_macro_averages_and_index_names():
    m = compute_metrics(TRI_TRUE, TRI_PROB)
    assert m["accuracy"] == approx(2 / 3)
    assert m["balanced_accuracy"] == approx(59 / 90)
    assert m["sensitivity"] == approx(59 / 90)
    assert m["specificity"] == approx(1249 / 1512)
    assert m["f1"] == approx(454 / 693)
    assert m["youden"] == approx(3641 / 7560)
    assert m["auc"] == approx(11201 / 15120)
    assert m["mcc"] == approx(45 / math.sqrt(8460))
    assert m["kappa"] == approx(15 / 31)
    per_class = {
        "sensitivity": [4 / 5, 1 / 2, 2 / 3],
        "specificity": [5 / 7, 7 / 8, 8 / 9],
        "f1": [8 / 11, 4 / 7, 2 / 3],
        "youden": [18 / 35, 3 / 8, 5 / 9],
        "auc": [53 / 70, 11 / 16, 7 / 9],
    }
    for metric, values in per_class.items():
        for c, value in enumerate(values):
            assert m[f"{metric}_class_{c}"] == approx(value), (metric, c)
    assert m["n"] == 12


def test_compute_metrics_key_set():
    m = compute_metrics(TRI_TRUE, TRI_PROB, class_names=["a", "b", "c"])
    per_class = {f"{metric}_class_{c}" for metric in PER_CLASS_METRICS for c in "abc"}
    assert set(m) == set(METRIC_NAMES) | per_class | {"n"}


@pytest.mark.parametrize("k", [2, 3])
def test_perfect_predictions_score_one_everywhere(k):
    y = np.arange(12) % k
    prob = np.eye(k)[y] * 0.8 + 0.2 / k
    m = compute_metrics(y, prob)
    for key, value in m.items():
        if key != "n":
            assert value == approx(1.0), key


def test_only_one_class_present_gives_nan_not_an_exception():
    y = np.zeros(6, dtype=int)
    prob = np.tile([0.7, 0.3], (6, 1))
    assert math.isnan(auc(y, prob))
    assert math.isnan(sensitivity(y, prob.argmax(1)))  # no positives to detect
    assert math.isnan(kappa(y, prob.argmax(1)))  # a single shared label: undefined
    assert mcc(y, prob.argmax(1)) == 0.0  # scikit-learn's convention for undefined MCC

    m = compute_metrics(y, prob)
    assert math.isnan(m["auc"]) and math.isnan(m["auc_class_0"]) and math.isnan(m["auc_class_1"])
    assert math.isnan(m["sensitivity"]) and math.isnan(m["youden"])
    assert m["specificity"] == 1.0 and m["accuracy"] == 1.0
    ci = bootstrap_ci(y, prob, n_resamples=50)
    assert all(math.isnan(x) for x in ci["auc"])


def test_empty_input_gives_nan():
    m = compute_metrics(np.array([], dtype=int), np.zeros((0, 3)))
    assert m["n"] == 0
    assert all(math.isnan(v) for key, v in m.items() if key != "n")


def test_multiclass_macro_skips_a_class_absent_from_the_test_set():
    # class 2 exists in the model (3 probability columns) but not among the labels:
    # its sensitivity and AUC are undefined and the macro means use the other two classes
    y = np.array([0, 0, 1, 1])
    prob = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])
    m = compute_metrics(y, prob)
    assert math.isnan(m["sensitivity_class_2"]) and math.isnan(m["auc_class_2"])
    assert m["sensitivity"] == approx((1 / 2 + 1) / 2)
    assert m["balanced_accuracy"] == approx(m["sensitivity"])


# -------------------------------------- vectorised path agrees with scikit-learn itself


def _random_case(k: int, n: int, seed: int, decimals: int | None = 2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if decimals is not None:
        prob = np.round(prob, decimals)  # creates many ties in the scores
    return y, prob


def _sklearn_reference(y, prob, positive_class=1):
    k = prob.shape[1]
    yp = prob.argmax(1)
    labels = np.arange(k)
    sens = skm.recall_score(y, yp, labels=labels, average=None, zero_division=np.nan)
    mcm = skm.multilabel_confusion_matrix(y, yp, labels=labels)
    spec = mcm[:, 0, 0] / (mcm[:, 0, 0] + mcm[:, 0, 1])
    f1_ = skm.f1_score(y, yp, labels=labels, average=None, zero_division=np.nan)
    auc_ = np.array([skm.roc_auc_score(y == c, prob[:, c]) for c in range(k)])
    pick = (lambda a: a[positive_class]) if k == 2 else np.mean
    ref = {
        "accuracy": skm.accuracy_score(y, yp),
        "balanced_accuracy": skm.balanced_accuracy_score(y, yp),
        "auc": pick(auc_),
        "sensitivity": pick(sens),
        "specificity": pick(spec),
        "f1": pick(f1_),
        "mcc": skm.matthews_corrcoef(y, yp),
        "kappa": skm.cohen_kappa_score(y, yp),
        "youden": pick(sens + spec - 1),
    }
    if k > 2 and np.allclose(prob.sum(1), 1.0):  # sklearn's ovr wants rows summing to 1
        ref_ovr = skm.roc_auc_score(y, prob, multi_class="ovr")
        assert ref["auc"] == approx(ref_ovr, abs=1e-12)
    for name, arr in (
        ("sensitivity", sens),
        ("specificity", spec),
        ("f1", f1_),
        ("auc", auc_),
        ("youden", sens + spec - 1),
    ):
        for c in range(k):
            ref[f"{name}_class_{c}"] = arr[c]
    return ref


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("decimals", [None, 2, 1])
def test_vectorised_metrics_match_sklearn(k, decimals):
    y, prob = _random_case(k, 400, seed=k * 10 + (decimals or 0), decimals=decimals)
    assert decimals is None or len(np.unique(prob[:, 0])) < 400 / 2  # ties present
    m = compute_metrics(y, prob)
    ref = _sklearn_reference(y, prob)
    for key, value in ref.items():
        assert m[key] == approx(value, abs=1e-10), key


def test_vectorised_binary_matches_sklearn_with_positive_class_zero():
    y, prob = _random_case(2, 300, seed=7)
    m = compute_metrics(y, prob, positive_class=0)
    ref = _sklearn_reference(y, prob, positive_class=0)
    for key in METRIC_NAMES:
        assert m[key] == approx(ref[key], abs=1e-10), key


@pytest.mark.parametrize("k", [2, 3])
def test_vectorised_resamples_match_sklearn_on_each_resampled_dataset(k):
    # the bootstrap path counts how often each sample was drawn; a resample must score
    # exactly like the materialised dataset y[idx], duplicates and tied scores included
    y, prob = _random_case(k, 120, seed=3, decimals=1)
    idx = np.random.default_rng(0).integers(0, 120, size=(5, 120))
    values = M._metrics_for_resamples(y, prob, idx, positive_class=1)
    for r in range(idx.shape[0]):
        ref = _sklearn_reference(y[idx[r]], prob[idx[r]])
        for name in METRIC_NAMES:
            assert values[name][r] == approx(ref[name], abs=1e-10), (r, name)


# ---------------------------------------------------------------------- bootstrap_ci


def test_bootstrap_has_compute_metrics_keys_without_n():
    ci = bootstrap_ci(TRI_TRUE, TRI_PROB, n_resamples=20)
    assert set(ci) == set(compute_metrics(TRI_TRUE, TRI_PROB)) - {"n"}
    assert all(isinstance(v, tuple) and len(v) == 2 for v in ci.values())


def test_bootstrap_is_reproducible_for_a_seed():
    y, prob = _random_case(3, 200, seed=1)
    a = bootstrap_ci(y, prob, n_resamples=200, seed=42)
    b = bootstrap_ci(y, prob, n_resamples=200, seed=42)
    c = bootstrap_ci(y, prob, n_resamples=200, seed=43)
    assert a == b
    assert a != c


@pytest.mark.parametrize("k", [2, 3])
def test_point_estimate_lies_within_its_interval(k):
    y, prob = _random_case(k, 300, seed=5)
    point = compute_metrics(y, prob)
    ci = bootstrap_ci(y, prob, n_resamples=500)
    for key, (lo, hi) in ci.items():
        assert lo <= hi
        assert lo <= point[key] <= hi, (key, lo, point[key], hi)


def test_interval_narrows_with_more_data():
    small = bootstrap_ci(*_random_case(3, 100, seed=2), n_resamples=400)
    large = bootstrap_ci(*_random_case(3, 1600, seed=2), n_resamples=400)
    for name in METRIC_NAMES:
        width_small = small[name][1] - small[name][0]
        width_large = large[name][1] - large[name][0]
        assert width_large < width_small / 2, name  # ~ 1/sqrt(16) = 1/4 expected


def test_stratified_resampling_keeps_class_counts():
    y = np.array([0] * 90 + [1] * 10)
    rng = np.random.default_rng(0)
    idx = M.draw_indices(y, 200, rng, stratified=True)
    assert idx.shape == (200, 100)
    assert (np.sum(y[idx] == 1, axis=1) == 10).all()

    # observable consequence: a model that always says "healthy" has accuracy 0.9 in every
    # stratified resample (the CI collapses to a point) but not in a plain bootstrap
    prob = np.tile([0.9, 0.1], (100, 1))
    stratified = bootstrap_ci(y, prob, n_resamples=300, stratified=True)
    plain = bootstrap_ci(y, prob, n_resamples=300, stratified=False)
    assert stratified["accuracy"] == approx((0.9, 0.9))
    assert plain["accuracy"][0] < 0.9 < plain["accuracy"][1]


def test_confidence_level_controls_width():
    y, prob = _random_case(2, 200, seed=9)
    ci90 = bootstrap_ci(y, prob, n_resamples=400, confidence=0.90)
    ci99 = bootstrap_ci(y, prob, n_resamples=400, confidence=0.99)
    assert ci99["auc"][0] <= ci90["auc"][0] and ci90["auc"][1] <= ci99["auc"][1]


# -------------------------------------------------------------- format_metrics_table


def test_table_lists_every_metric_with_value_and_interval():
    m = compute_metrics(BIN_TRUE, BIN_PROB)
    ci = bootstrap_ci(BIN_TRUE, BIN_PROB, n_resamples=100)
    table = format_metrics_table(m, ci)
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "value", "95%", "CI"]
    for name in METRIC_NAMES:
        row = next(line for line in lines if line.split()[0] == name)
        assert f"{m[name]:.3f}" in row
        assert f"[{ci[name][0]:.3f}, {ci[name][1]:.3f}]" in row
    assert lines[-1].split() == ["n", "10"]


def test_table_without_intervals_markdown_and_nan():
    m = {"accuracy": 0.5, "auc": float("nan"), "n": 4}
    plain = format_metrics_table(m, names=("accuracy", "auc", "mcc"), digits=2)
    assert "CI" not in plain
    assert "0.50" in plain and "nan" in plain and "n/a" in plain  # mcc missing

    md = format_metrics_table(m, {"accuracy": (0.25, 0.75)}, names=("accuracy", "auc"), markdown=True)
    lines = md.splitlines()
    assert lines[0] == "| metric | value | 95% CI |"
    assert lines[2] == "| accuracy | 0.500 | [0.250, 0.750] |"
    assert lines[3] == "| auc | nan | n/a |"
