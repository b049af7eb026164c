"""The honest baselines: inverse-frequency class weights and a seeded class-balancing sampler."""

from collections import Counter

import numpy as np
import pytest
import torch

from medaug.pipelines.train.rebalance import class_weights, make_loss, make_sampler


def test_class_weights_are_inverse_frequency():
    labels = [0] * 10 + [1] * 30
    np.testing.assert_allclose(class_weights(labels, 2), [40 / (2 * 10), 40 / (2 * 30)])
    np.testing.assert_allclose(class_weights([0, 0, 2, 2], 3), [1.0, 0.0, 1.0])  # absent class: weight 0


def test_loss_is_weighted_only_for_class_weight():
    labels = [0] * 10 + [1] * 30
    assert make_loss("none", labels, 2).weight is None
    assert make_loss("oversample", labels, 2).weight is None
    torch.testing.assert_close(make_loss("class_weight", labels, 2).weight, torch.tensor([2.0, 2 / 3]))
    with pytest.raises(ValueError, match="class_weight"):
        make_loss("smote", labels, 2)


def test_oversampling_draws_classes_equally_often_and_is_seeded():
    labels = [0] * 50 + [1] * 950
    assert make_sampler("class_weight", labels) is None
    draws = list(make_sampler("oversample", labels, seed=1))
    assert len(draws) == 1000
    share = Counter(labels[i] for i in draws)[0] / len(draws)
    assert share == pytest.approx(0.5, abs=0.05)
    assert draws == list(make_sampler("oversample", labels, seed=1))
    assert draws != list(make_sampler("oversample", labels, seed=2))
