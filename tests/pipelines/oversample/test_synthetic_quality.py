"""Quality and memorization of synthetic images, checked on real BreastMNIST ultrasound (64 px and
28 px): the metrics behave as their definitions say, and the memorization check finds copies of
train images planted among "synthetic" ones."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from medaug.pipelines.oversample.quality import (
    assess_synthetic,
    fit_feature_network,
    frechet_distance,
    knn_precision_recall,
    load_feature_network,
    ms_ssim_diversity,
    ms_ssim_settings,
    near_copy_threshold_from_real,
    nearest_real,
)
from tests.conftest import REPO

CLASSES = ["malignant", "normal_benign"]


def as_batch(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float().div(255).unsqueeze(1)


@pytest.fixture(scope="module")
def breast(breast_arrays):
    """BreastMNIST 64 px train (546) and val (78) images as (N, 1, 64, 64) in [0, 1]."""
    return {
        split: (as_batch(breast_arrays[f"{split}_images"]), breast_arrays[f"{split}_labels"][:, 0])
        for split in ("train", "val")
    }


@pytest.fixture(scope="module")
def feature_net(breast):
    images, labels = breast["train"]
    return fit_feature_network(images, labels, num_classes=2, seed=0, epochs=3, progress=False)


def noisy(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images + sigma * noise).clamp(0, 1)


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


# --- FID ---------------------------------------------------------------------------------------


def test_fid_of_a_set_with_itself_is_about_zero(breast, feature_net):
    features = feature_net.features(breast["train"][0])
    assert features.shape == (546, 128)  # the default network's penultimate layer
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    # fewer images than feature dimensions (singular covariances) still gives 0
    assert frechet_distance(features[:50], features[:50]) == pytest.approx(0.0, abs=1e-6)


def test_fid_grows_with_added_noise(breast, feature_net):
    """Noise steps far apart compared with how much the FID of one set moves between CPUs: the
    feature network's training depends on the machine's BLAS kernels, and noise of 0.05 changed the
    FID by less than that (0.003 of 2.5) while 0.1 more noise moves it by about 0.7."""
    images = breast["train"][0]
    reference = feature_net.features(images[::2])
    other_half = images[1::2]
    fids = [frechet_distance(reference, feature_net.features(noisy(other_half, s))) for s in (0.0, 0.2, 0.3, 0.4)]
    assert all(later > earlier * 1.05 for earlier, later in zip(fids, fids[1:])), fids
    assert fids[-1] > fids[0] * 1.5, fids


def test_fid_needs_two_images_per_set(breast, feature_net):
    features = feature_net.features(breast["train"][0][:5])
    assert math.isnan(frechet_distance(features, features[:1]))


def ill_conditioned_features() -> tuple[torch.Tensor, torch.Tensor]:
    """ReLU-like features with a few dominant dimensions and many near-dead ones."""
    g = torch.Generator().manual_seed(1)
    real = torch.relu(torch.randn(200, 256, generator=g) * torch.rand(256, generator=g) ** 4 * 100).double()
    synth = torch.relu(torch.randn(200, 256, generator=g) * torch.rand(256, generator=g) ** 4 * 300).double()
    return real, synth


def fid_by_symmetric_eigendecomposition(real: torch.Tensor, synth: torch.Tensor) -> float:
    """The same distance computed only with symmetric eigen-decompositions, which stay real on
    any BLAS: tr(S_r) + tr(S_s) - 2 tr((S_r^1/2 S_s S_r^1/2)^1/2) + |mu_r - mu_s|^2."""
    cov_r, cov_s = torch.cov(real.T), torch.cov(synth.T)
    w, v = torch.linalg.eigh(cov_r)
    root = (v * w.clamp(min=0).sqrt()) @ v.T
    middle = torch.linalg.eigvalsh(root @ cov_s @ root).clamp(min=0).sqrt().sum()
    mean_gap = real.mean(0) - synth.mean(0)
    return float(mean_gap @ mean_gap + cov_r.trace() + cov_s.trace() - 2 * middle)


def test_fid_of_ill_conditioned_features_agrees_with_an_eigendecomposition():
    """Whether MONAI's matrix square root succeeds on these features depends on the CPU's BLAS
    kernels; the distance medaug reports must agree with the eigen-decomposition either way."""
    real, synth = ill_conditioned_features()
    assert frechet_distance(real, synth) == pytest.approx(fid_by_symmetric_eigendecomposition(real, synth), rel=1e-3)


def test_fid_falls_back_to_a_ridge_when_monais_square_root_is_complex(monkeypatch):
    """The ridge-regularised retry (taken when MONAI rejects an imaginary square root, as it does
    for these features on some CPUs) is forced here, so it is exercised on every machine."""
    import medaug.pipelines.oversample.quality_metrics as synthetic_metrics

    class ComplexSquareRoot:
        def __call__(self, y_pred, y):
            raise ValueError("Imaginary component 1e+03 too large")

    monkeypatch.setattr(synthetic_metrics, "FIDMetric", ComplexSquareRoot)
    real, synth = ill_conditioned_features()
    value = frechet_distance(real, synth)
    assert math.isfinite(value)
    assert value == pytest.approx(fid_by_symmetric_eigendecomposition(real, synth), rel=1e-3)


# --- k-NN precision and recall -------------------------------------------------------------------


def test_precision_and_recall_of_identical_sets_are_one(breast, feature_net):
    features = feature_net.features(breast["train"][0])
    assert knn_precision_recall(features, features, k=3) == (1.0, 1.0)
    assert knn_precision_recall(features[:40], features[:40], k=5) == (1.0, 1.0)


def test_images_of_another_modality_score_worse_than_held_out_real_ones(breast, feature_net):
    """Held-out BreastMNIST val images are what a perfect generator would produce; chest X-rays
    (PneumoniaMNIST) are what a wrong one would. A set collapsed onto one image covers nothing."""
    real = feature_net.features(breast["train"][0])
    with np.load(REPO / "data" / "pneumoniamnist.npz") as archive:
        chest = feature_net.features(as_batch(archive["train_images"][:100]))
    held_out = feature_net.features(breast["val"][0])
    good_precision, good_recall = knn_precision_recall(real, held_out, k=3)
    bad_precision, bad_recall = knn_precision_recall(real, chest, k=3)
    assert good_precision > 0.7 and good_recall > 0.7
    assert bad_precision < good_precision and bad_recall < 0.05
    assert frechet_distance(real, chest) > 3 * frechet_distance(real, held_out)
    collapsed = held_out[:1].repeat(50, 1)
    assert knn_precision_recall(real, collapsed, k=3)[1] < 0.01


def test_precision_and_recall_are_nan_with_k_or_fewer_points(breast, feature_net):
    features = feature_net.features(breast["train"][0][:10])
    assert all(math.isnan(v) for v in knn_precision_recall(features, features[:3], k=3))


# --- MS-SSIM diversity ---------------------------------------------------------------------------


def test_ms_ssim_is_one_for_identical_images_and_lower_for_real_variety(breast):
    images = breast["train"][0][:40]
    assert ms_ssim_diversity(images[:1].repeat(10, 1, 1, 1)) == pytest.approx(1.0, abs=1e-5)
    varied = ms_ssim_diversity(images)
    collapsed = ms_ssim_diversity(images[:3].repeat(14, 1, 1, 1))  # a generator stuck on 3 modes
    assert varied < collapsed < 1.0


@pytest.mark.parametrize("size, scales, kernel", [(28, 3, 7), (64, 4, 7), (128, 5, 7), (256, 5, 11)])
def test_ms_ssim_uses_fewer_scales_and_a_smaller_window_on_small_images(size, scales, kernel):
    settings = ms_ssim_settings(size, size)
    assert (len(settings["weights"]), settings["kernel_size"]) == (scales, kernel)
    assert sum(settings["weights"]) == pytest.approx(1.0)
    images = torch.rand((4, 1, size, size), generator=torch.Generator().manual_seed(0))
    assert 0.0 <= ms_ssim_diversity(images) < 0.5  # independent noise images share no structure


# --- memorization --------------------------------------------------------------------------------


def test_nearest_real_finds_the_source_across_sizes_and_channels(breast):
    real = breast["train"][0][:200]
    picked = torch.tensor([5, 77, 150])
    small_rgb = torch.nn.functional.interpolate(real[picked], size=(32, 32), mode="area").repeat(1, 3, 1, 1)
    indices, distances = nearest_real(small_rgb, real)
    assert indices.tolist() == picked.tolist()
    assert (distances < 0.05).all()  # resampling differences only; unrelated images are ~0.12 apart


def test_nearest_real_gives_the_same_answer_in_any_chunk_size(breast):
    real, synth = breast["train"][0][:120], breast["val"][0][:50]
    whole = nearest_real(synth, real, chunk_size=1000)
    chunked = nearest_real(synth, real, chunk_size=7)
    assert torch.equal(whole[0], chunked[0]) and torch.allclose(whole[1], chunked[1])
    # and it agrees with the brute-force definition
    brute = ((synth.flatten(1)[:, None].double() - real.flatten(1)[None].double()) ** 2).mean(-1).sqrt()
    assert torch.equal(whole[0], brute.argmin(1)) and torch.allclose(whole[1], brute.min(1).values)


def test_real_to_real_threshold_excludes_each_image_itself(breast):
    real = breast["train"][0][:100]
    threshold = near_copy_threshold_from_real(real, quantile=0.05)
    assert threshold > 0  # an image is at distance 0 from itself; that must not count
    assert near_copy_threshold_from_real(real, quantile=0.5) > threshold


def planted_set(breast):
    """Held-out val images as stand-ins for synthetic ones, plus exact and near copies of train
    images. BreastMNIST's own val split holds a few near-duplicates of train images (nearest train
    RMSE down to 0.005), so only val images clearly unlike any train image (RMSE > 0.05) are used."""
    train, train_y = breast["train"]
    val, val_y = breast["val"]
    _, distance_to_train = nearest_real(val, train)
    distinct = distance_to_train > 0.05
    sources = torch.tensor([3, 40, 101, 250, 399, 500])
    exact = train[sources[:3]]
    near = torch.cat(
        [
            noisy(train[sources[3:5]], 0.01, seed=2),  # sensor noise
            (train[sources[5:]] * 0.98 + 0.01),
        ]
    )  # a 2% contrast change
    images = torch.cat([val[distinct], exact, near])
    labels = np.concatenate([val_y[distinct.numpy()], train_y[sources.numpy()]])
    synth_ids = ids("val", int(distinct.sum())) + [f"copy_of_{i}" for i in sources.tolist()]
    return images, labels, synth_ids, sources


def test_memorization_check_flags_exact_and_near_copies_planted_among_synthetic_images(breast, feature_net):
    train, train_y = breast["train"]
    images, labels, synth_ids, sources = planted_set(breast)
    before = images.clone()
    report = assess_synthetic(
        train,
        train_y,
        ids("train", len(train)),
        images,
        labels,
        synth_ids,
        CLASSES,
        feature_network=feature_net,
        seed=0,
    )
    planted = {f"copy_of_{i}" for i in sources.tolist()}
    assert set(report.near_copy_ids) == planted
    assert report.metrics["synthetic_near_copies"] == 6
    assert report.metrics["synthetic_near_copy_fraction"] == pytest.approx(6 / len(images))
    rows = {row["synthetic_id"]: row for row in report.memorization}
    for i in sources.tolist():  # each copy is traced back to the train image it came from
        assert rows[f"copy_of_{i}"]["nearest_real_id"] == f"train{i}" and rows[f"copy_of_{i}"]["near_copy"]
    assert all(rows[f"copy_of_{i}"]["distance"] == 0.0 for i in sources[:3].tolist())
    assert torch.equal(images, before)  # inputs are never modified


def test_copies_saved_smaller_or_in_colour_are_still_copies(breast, feature_net):
    """A generator working at 32 px RGB is compared at 32 px grey: its copies of train images stay
    flagged, and no synthetic images at all is a report of NaNs, not an error."""
    train, train_y = breast["train"]
    copies = torch.nn.functional.interpolate(train[:4], size=(32, 32), mode="bilinear", antialias=True)
    report = assess_synthetic(
        train,
        train_y,
        ids("t", len(train)),
        copies.repeat(1, 3, 1, 1),
        train_y[:4],
        ids("s", 4),
        CLASSES,
        feature_network=feature_net,
        near_copy_threshold=0.01,
    )
    assert report.near_copy_ids == ids("s", 4)
    assert [row["nearest_real_id"] for row in report.memorization] == ids("t", 4)
    empty = assess_synthetic(
        train,
        train_y,
        ids("t", len(train)),
        torch.zeros((0, 1, 64, 64)),
        [],
        [],
        CLASSES,
        feature_network=feature_net,
        near_copy_threshold=0.01,
    )
    assert empty.metrics["synthetic_count"] == 0 and math.isnan(empty.metrics["synthetic_fid"])


def test_a_given_threshold_replaces_the_derived_one(breast, feature_net):
    train, train_y = breast["train"]
    images, labels, synth_ids, _ = planted_set(breast)
    report = assess_synthetic(
        train,
        train_y,
        ids("train", len(train)),
        images,
        labels,
        synth_ids,
        CLASSES,
        feature_network=feature_net,
        near_copy_threshold=0.0,
    )
    assert sorted(report.near_copy_ids) == ["copy_of_101", "copy_of_3", "copy_of_40"]  # the exact copies only
    assert report.metrics["synthetic_near_copy_threshold"] == 0.0


# --- the report ----------------------------------------------------------------------------------


def test_report_metrics_and_files(breast, feature_net, tmp_path):
    train, train_y = breast["train"]
    images, labels, synth_ids, _ = planted_set(breast)
    report = assess_synthetic(
        train, train_y, ids("train", len(train)), images, labels, synth_ids, CLASSES, feature_network=feature_net
    )
    for key in ("fid", "precision", "recall", "ms_ssim", "ms_ssim_real", "count", "near_copies"):
        for name in CLASSES:
            assert math.isfinite(report.metrics[f"synthetic_{key}_{name}"])
    assert all(name.startswith("synthetic_") for name in report.metrics)
    per_class = [report.metrics[f"synthetic_fid_{name}"] for name in CLASSES]
    assert report.metrics["synthetic_fid_class_mean"] == pytest.approx(sum(per_class) / 2)
    # held-out real images are realistic: most fall inside the train manifold
    assert report.metrics["synthetic_precision"] > 0.5

    paths = report.save(tmp_path)
    assert sorted(p.name for p in paths) == sorted(
        ["quality.json", "memorization.csv", "real_vs_synthetic_malignant.png", "real_vs_synthetic_normal_benign.png"]
    )
    summary = json.loads((tmp_path / "quality.json").read_text())
    assert summary["metrics"]["synthetic_fid"] == pytest.approx(report.metrics["synthetic_fid"])
    assert sorted(summary["near_copy_ids"]) == sorted(report.near_copy_ids)
    with open(tmp_path / "memorization.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(images)
    assert list(rows[0])[:4] == ["synthetic_id", "nearest_real_id", "distance", "near_copy"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_classes_with_zero_or_one_synthetic_image_give_nan_not_a_crash(tmp_path):
    """28 px images (the smallest supported), one synthetic malignant image, no benign ones."""
    with np.load(REPO / "data" / "breastmnist.npz") as archive:
        real, real_y = as_batch(archive["train_images"][:150]), archive["train_labels"][:150, 0]
    net = fit_feature_network(real, real_y, num_classes=2, epochs=1, progress=False)
    synth = noisy(real[real_y == 0][:1], 0.1)
    report = assess_synthetic(real, real_y, ids("r", 150), synth, [0], ["s0"], CLASSES, feature_network=net)
    for key in ("fid", "precision", "recall", "ms_ssim"):
        assert math.isnan(report.metrics[f"synthetic_{key}_malignant"])
        assert key == "ms_ssim" or math.isnan(report.metrics[f"synthetic_{key}_class_mean"])
        assert math.isnan(report.metrics[f"synthetic_{key}_normal_benign"])
    assert report.metrics["synthetic_count_normal_benign"] == 0
    assert math.isfinite(report.metrics["synthetic_ms_ssim_real_malignant"])
    paths = report.save(tmp_path)
    assert json.loads((tmp_path / "quality.json").read_text())["metrics"]["synthetic_fid_malignant"] is None
    assert (tmp_path / "real_vs_synthetic_normal_benign.png").stat().st_size > 0 and len(paths) == 4


def test_bad_input_is_named(breast, feature_net):
    train, train_y = breast["train"]
    train_ids = ids("t", len(train))
    with pytest.raises(ValueError, match=r"synth_images must hold intensities in \[0, 1\]"):
        assess_synthetic(train, train_y, train_ids, train[:4] * 255, [0] * 4, ids("s", 4), CLASSES, feature_net)
    with pytest.raises(ValueError, match=r"synth_images must have shape \(N, C, H, W\)"):
        assess_synthetic(train, train_y, train_ids, train[:4, 0], [0] * 4, ids("s", 4), CLASSES, feature_net)
    with pytest.raises(ValueError, match="synth_ids are not unique"):
        assess_synthetic(train, train_y, train_ids, train[:2], [0, 0], ["a", "a"], CLASSES, feature_net)
    with pytest.raises(ValueError, match=r"synth_labels must lie in \[0, 2\)"):
        assess_synthetic(train, train_y, train_ids, train[:2], [0, 2], ["a", "b"], CLASSES, feature_net)


# --- the feature network -------------------------------------------------------------------------


def test_feature_network_is_seeded_and_survives_save_and_load(breast, feature_net, tmp_path):
    images, labels = breast["train"]
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = fit_feature_network(images[:120], labels[:120], num_classes=2, seed=7, epochs=1, progress=False)
    assert torch.equal(torch.rand(1), expected_next)  # the caller's random stream is left alone
    b = fit_feature_network(images[:120], labels[:120], num_classes=2, seed=7, epochs=1, progress=False)
    probe = breast["val"][0][:16]
    assert torch.equal(a.features(probe), b.features(probe))

    loaded = load_feature_network(feature_net.save(tmp_path / "features.ts"))
    assert loaded.image_size == (32, 32) and loaded.in_channels == 1
    assert torch.allclose(loaded.features(probe), feature_net.features(probe), atol=1e-5)
    # RGB images go through a grey-scale network as their luma
    assert torch.allclose(feature_net.features(probe.repeat(1, 3, 1, 1)), feature_net.features(probe), atol=1e-5)


def test_a_fitted_network_is_cached_by_data_and_settings(breast, tmp_path):
    images, labels = breast["train"][0][:100], breast["train"][1][:100]
    first = fit_feature_network(images, labels, num_classes=2, epochs=1, progress=False, cache_dir=tmp_path)
    cached = list(tmp_path.glob("feature_network_*.ts"))
    assert len(cached) == 1
    written = cached[0].stat()
    again = fit_feature_network(images, labels, num_classes=2, epochs=1, progress=False, cache_dir=tmp_path)
    probe = breast["val"][0][:8]
    assert torch.allclose(again.features(probe), first.features(probe), atol=1e-5)
    assert list(tmp_path.glob("feature_network_*.ts")) == cached
    assert (cached[0].stat().st_ino, cached[0].stat().st_mtime_ns) == (
        written.st_ino,
        written.st_mtime_ns,
    )  # not rewritten
    fit_feature_network(images[:99], labels[:99], num_classes=2, epochs=1, progress=False, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("feature_network_*.ts"))) == 2  # other train images, other network


def test_a_users_state_dict_loads_by_classifier_name(breast, feature_net, tmp_path):
    from medaug.models import build_classifier

    model = build_classifier("small_cnn", in_channels=1, num_classes=2, spatial_size=(32, 32))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "mine.pt")
    net = load_feature_network(
        tmp_path / "mine.pt", name="small_cnn", num_classes=2, in_channels=1, image_size=(32, 32)
    )
    assert net.features(breast["val"][0][:4]).shape == (4, 512)  # the input of small_cnn's linear layer at 32 px
    with pytest.raises(ValueError, match="not a TorchScript file"):
        load_feature_network(tmp_path / "mine.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_feature_network(tmp_path / "missing.ts")
