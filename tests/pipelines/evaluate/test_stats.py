"""The statistics of the study report, against cases worked by hand and a published example
(pROC's ``roc.test`` on the aSAH data)."""

import csv
import math

import numpy as np
import pytest

from medaug.pipelines.evaluate.stats import (
    delong_auc_covariance,
    delong_test,
    holm,
    mcnemar_test,
    mean_sd_ci,
    paired_bootstrap,
    paired_seed_test,
)
from tests.conftest import REPO


def test_mean_sd_and_t_interval_over_seeds():
    s = mean_sd_ci([0.7, 0.8, 0.9, math.nan])  # an undefined value is left out
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, df=2) * sd / sqrt(n)
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.8) and s["sd"] == pytest.approx(0.1)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((0.8 - half, 0.8 + half))
    one = mean_sd_ci([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["sd"]) and math.isnan(one["ci_low"])


def test_mcnemar_counts_only_discordant_pairs_exact_below_25():
    # 10 images only strategy a gets right, 2 only b, 5 both: exact binomial, 2 * P(X <= 2 | 12, 1/2)
    a = [True] * 10 + [False] * 2 + [True] * 5
    b = [False] * 10 + [True] * 2 + [True] * 5
    r = mcnemar_test(a, b)
    assert (r["b"], r["c"], r["exact"]) == (10, 2, True)
    assert r["p"] == pytest.approx(2 * (1 + 12 + 66) / 2**12)


def test_mcnemar_chi_square_with_continuity_correction_from_25_discordant_pairs():
    a = [True] * 30 + [False] * 12 + [False] * 7
    b = [False] * 30 + [True] * 12 + [False] * 7
    r = mcnemar_test(a, b)
    statistic = (abs(30 - 12) - 1) ** 2 / 42  # (|b - c| - 1)^2 / (b + c)
    assert not r["exact"] and r["statistic"] == pytest.approx(statistic)
    assert r["p"] == pytest.approx(math.erfc(math.sqrt(statistic / 2)))  # chi-square, 1 df
    assert mcnemar_test([True, False], [True, False])["p"] == 1.0  # no discordant pair


def test_holm_step_down_by_hand():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> kept monotone: 0.06
    adjusted = holm([0.01, 0.04, 0.03, 0.005, math.nan])
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adjusted[4])  # a missing test is not counted as a comparison


# Two positives and three negatives scored by two classifiers. By hand (psi = 1 if pos > neg):
# A: V10 = [1, 2/3], V01 = [1, 1/2, 1], AUC 5/6;  B: V10 = [1, 1/3], V01 = [1/2, 1, 1/2], AUC 2/3.
# S10 = [[1/18, 1/9], [1/9, 2/9]], S01 = [[1/12, -1/12], [-1/12, 1/12]]; S = S10/2 + S01/3
# = [[1/18, 1/36], [1/36, 5/36]]; var(A - B) = 5/36, z = (1/6) / sqrt(5/36) = 1/sqrt(5).
Y_HAND = np.array([1, 1, 0, 0, 0])
A_HAND = np.array([0.9, 0.6, 0.5, 0.7, 0.1])
B_HAND = np.array([0.8, 0.3, 0.4, 0.2, 0.6])


def test_delong_structural_components_by_hand():
    aucs, cov = delong_auc_covariance(Y_HAND, np.stack([A_HAND, B_HAND]))
    assert aucs == pytest.approx([5 / 6, 2 / 3])
    assert cov == pytest.approx(np.array([[1 / 18, 1 / 36], [1 / 36, 5 / 36]]))
    r = delong_test([(Y_HAND, A_HAND, B_HAND)])
    assert r["diff"] == pytest.approx(1 / 6) and r["statistic"] == pytest.approx(1 / math.sqrt(5))
    assert r["p"] == pytest.approx(math.erfc(1 / math.sqrt(5) / math.sqrt(2)))


def test_delong_seeds_that_agree_exactly_add_no_information():
    once = delong_test([(Y_HAND, A_HAND, B_HAND)])
    twice = delong_test([(Y_HAND, np.stack([A_HAND, A_HAND]), np.stack([B_HAND, B_HAND]))])
    assert twice["statistic"] == pytest.approx(once["statistic"]) and twice["seeds"] == 2
    same = delong_test([(Y_HAND, A_HAND, A_HAND)])
    assert same["statistic"] == 0.0 and same["p"] == 1.0


def _asah():
    with open(REPO / "tests" / "data" / "asah.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    poor = np.array([r["outcome"] == "Poor" for r in rows], dtype=int)
    return poor, {k: np.array([float(r[k]) for r in rows]) for k in ("wfns", "s100b", "ndka")}


def test_delong_matches_proc_roc_test_on_the_asah_data():
    """pROC documentation (Robin et al. 2011, BMC Bioinformatics 12:77), ``roc.test`` example:
    roc1 = roc(aSAH$outcome, aSAH$s100b), roc2 = roc(aSAH$outcome, aSAH$wfns):
    "DeLong's test for two correlated ROC curves: Z = -2.209, p-value = 0.02718;
    AUC of roc1 0.7314, AUC of roc2 0.8237". wfns is an ordinal score, so ties are exercised."""
    outcome, marker = _asah()
    assert outcome.size == 113 and outcome.sum() == 41
    r = delong_test([(outcome, marker["s100b"], marker["wfns"])])
    assert r["auc_a"] == pytest.approx(0.7314, abs=5e-5) and r["auc_b"] == pytest.approx(0.8237, abs=5e-5)
    assert r["statistic"] == pytest.approx(-2.209, abs=5e-4)
    assert r["p"] == pytest.approx(0.02718, abs=5e-6)


def test_paired_bootstrap_difference_interval_and_p():
    y = np.array([0, 0, 0, 1, 1, 1] * 10)
    perfect, constant = np.stack([y, y]), np.zeros((2, y.size), dtype=int)
    r = paired_bootstrap([(y, perfect, constant)], "balanced_accuracy", n_resamples=500)
    # balanced accuracy 1.0 vs 0.5 on every resample (stratified: both classes always present)
    assert r["diff"] == pytest.approx(0.5) and (r["ci_low"], r["ci_high"]) == pytest.approx((0.5, 0.5))
    assert r["p"] == pytest.approx(1 / 501)
    j = paired_bootstrap([(y, perfect, constant)], "youden", n_resamples=200)
    assert j["diff"] == pytest.approx(1.0)  # J = 1 vs J = 0
    same = paired_bootstrap([(y, perfect, perfect)], "youden", n_resamples=200)
    assert same["diff"] == 0.0 and same["p"] == 1.0


def test_paired_bootstrap_is_seeded_and_resamples_both_strategies_together():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    a = np.where(rng.random(80) < 0.8, y, 1 - y)[None]
    b = np.where(rng.random(80) < 0.7, y, 1 - y)[None]
    first = paired_bootstrap([(y, a, b)], n_resamples=300, seed=3)
    assert first == paired_bootstrap([(y, a, b)], n_resamples=300, seed=3)
    assert first["ci_low"] <= first["diff"] <= first["ci_high"] and 0 < first["p"] <= 1
    with pytest.raises(ValueError, match="metric must be one of"):
        paired_bootstrap([(y, a, b)], "auc")


def test_paired_seed_test_is_a_paired_t_test_over_seeds():
    from scipy.stats import ttest_rel

    a, b = [0.70, 0.71, 0.75, math.nan], [0.60, 0.62, 0.64, 0.61]  # the last seed has no value for a: left out
    result = paired_seed_test(a, b)
    assert result["seeds"] == 3 and result["diff"] == pytest.approx(0.1)
    assert result["p"] == pytest.approx(ttest_rel(a[:3], b[:3]).pvalue)
    spread = mean_sd_ci([0.10, 0.09, 0.11])  # the interval is the t-interval of the per-seed differences
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((spread["ci_low"], spread["ci_high"]))
    one = paired_seed_test([0.7], [0.6])
    assert math.isnan(one["p"]) and one["diff"] == pytest.approx(0.1) and "no test over seeds" in one["note"]
    assert paired_seed_test([0.5, 0.6], [0.5, 0.6])["p"] == 1.0  # identical on every seed
