"""Behaviour of medaug.pipelines.evaluate.plots: headless PNGs, written atomically."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from medaug.pipelines.evaluate.plots import plot_confusion_matrix, plot_roc_curves, plot_training_curves


def _case(k: int, n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.5
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, prob


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


NAMES = {2: ["healthy", "disease"], 3: ["benign", "malignant", "normal"]}


def _assert_png(path, folder):
    assert path.exists()
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()  # raises on a truncated or corrupt file
    with Image.open(path) as img:
        assert img.size[0] > 100 and img.size[1] > 100
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # an ordinary, shareable file
    # the temporary file used for the atomic write is gone: only the final image remains
    assert sorted(p.name for p in folder.iterdir()) == [path.name]


@pytest.mark.parametrize("k", [2, 3])
def test_confusion_matrix_png(tmp_path, k):
    y, prob = _case(k)
    out = plot_confusion_matrix(y, prob.argmax(1), NAMES[k], tmp_path / "cm.png")
    assert out == tmp_path / "cm.png"
    _assert_png(out, tmp_path)


def test_confusion_matrix_counts_only_and_empty_row(tmp_path):
    # class 2 never occurs: its row is all zeros and must not divide by zero
    y = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 2])
    out = plot_confusion_matrix(y, pred, NAMES[3], tmp_path / "counts.png", normalize=False, title="counts")
    _assert_png(out, tmp_path)


@pytest.mark.parametrize("k", [2, 3])
def test_roc_curves_png(tmp_path, k):
    y, prob = _case(k)
    out = plot_roc_curves(y, prob, NAMES[k], tmp_path / "roc.png", title="ROC")
    _assert_png(out, tmp_path)


def test_roc_binary_with_other_positive_class_and_undefined_curve(tmp_path):
    y, prob = _case(2)
    _assert_png(plot_roc_curves(y, prob, NAMES[2], tmp_path / "roc.png", positive_class=0), tmp_path)
    # only one class in the labels: the AUC is undefined, the figure is still written
    single = tmp_path / "single"
    out = plot_roc_curves(np.zeros(5, int), prob[:5], NAMES[2], single / "roc.png")
    _assert_png(out, single)


def test_training_curves_png_with_any_number_of_series(tmp_path):
    history = {
        "train_loss": [(1, 0.7), (2, 0.6), (3, 0.55)],
        "val_loss": [(1, 0.8), (2, 0.7), (3, 0.72)],
        "val_balanced_accuracy": [(1, 0.5), (2, 0.61), (3, 0.66)],
        "val_auc": [(1, 0.6), (2, 0.7), (3, float("nan"))],
        "val_f1": [],  # an empty series is skipped
    }
    out = plot_training_curves(history, tmp_path / "curves.png", title="run 1")
    _assert_png(out, tmp_path)


@pytest.mark.parametrize("history", [{}, {"train_loss": [(1, 0.5)]}, {"val_auc": [(1, 0.9)]}])
def test_training_curves_tolerate_missing_series(tmp_path, history):
    _assert_png(plot_training_curves(history, tmp_path / "curves.png"), tmp_path)


def test_nested_folder_is_created_and_existing_file_replaced(tmp_path):
    y, prob = _case(2)
    target = tmp_path / "a" / "b" / "cm.png"
    plot_confusion_matrix(y, prob.argmax(1), NAMES[2], target)
    first = target.read_bytes()
    plot_confusion_matrix(y, prob.argmax(1), NAMES[2], target, title="second version")
    assert target.read_bytes() != first
    _assert_png(target, target.parent)


def test_failed_save_leaves_no_temp_file(tmp_path):
    y, prob = _case(2)
    with pytest.raises(ValueError):
        plot_confusion_matrix(y, prob.argmax(1), NAMES[2], tmp_path / "cm.notaformat")
    assert list(tmp_path.iterdir()) == []


def test_no_pyplot_figures_are_left_open(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    y, prob = _case(3)
    plot_confusion_matrix(y, prob.argmax(1), NAMES[3], tmp_path / "cm.png")
    plot_roc_curves(y, prob, NAMES[3], tmp_path / "roc.png")
    plot_training_curves({"train_loss": [(1, 1.0)]}, tmp_path / "c.png")
    assert plt.get_fignums() == before
