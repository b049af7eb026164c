"""The oversampling stage on a tiny real dataset (BreastMNIST 64 px, 8 malignant vs 20 benign train
images): every method adds exactly the requested images, files and manifest are complete, only
train images are ever read, results are cached and reproducible."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from monai.transforms import RandAffined, RandFlipd
from PIL import Image

import medaug.pipelines.oversample.stage as oversample_module
from medaug.io import build_study_data
from medaug.models import GENERATORS, GeneratorSpec
from medaug.models.diff_augment import diff_augment
from medaug.models.generator_base import ImageGenerator, SampleBatch
from medaug.models.latent_diffusion import ClassConditionalLDM
from medaug.pipelines.oversample.stage import MANIFEST_COLUMNS, METHODS, OversampleStage, real_id, requested_counts

TINY = {
    "image_size": [16, 16],
    "gan": {"iterations": 2, "batch_size": 8, "channels": [16, 8], "latent_size": 8},
    "vae_interp": {"iterations": 2, "batch_size": 8, "channels": [8, 16], "latent_size": 4},
    "ldm": {
        "ae_iterations": 2,
        "unet_iterations": 2,
        "batch_size": 8,
        "ae_channels": [16, 16],
        "unet_channels": [16, 32],
        "ddim_steps": 3,
        "num_train_timesteps": 100,
    },
    "quality": {"enabled": False},  # quality has its own tests; one test below runs it through the stage
    "progress": False,
}
AUGMENTATION = [
    RandFlipd(keys="image", prob=0.5, spatial_axis=1),
    RandAffined(keys="image", prob=1.0, rotate_range=0.3),
]


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory, breast_arrays):
    """Train 8 malignant (minority) + 20 benign; val and test 4 + 4; real BreastMNIST images."""
    out = {}
    for split, (n0, n1) in {"train": (8, 20), "val": (4, 4), "test": (4, 4)}.items():
        labels = breast_arrays[f"{split}_labels"][:, 0]
        idx = np.concatenate([np.flatnonzero(labels == 0)[:n0], np.flatnonzero(labels == 1)[:n1]])
        out[f"{split}_images"], out[f"{split}_labels"] = breast_arrays[f"{split}_images"][idx], labels[idx, None]
    path = tmp_path_factory.mktemp("tiny") / "tiny_breast.npz"
    np.savez(path, **out)
    return path


@pytest.fixture(scope="module")
def study(tiny_npz):
    return build_study_data(tiny_npz, class_names=["malignant", "normal_benign"], progress=False)


def stage(study, tmp_path, method, **kwargs):
    args = {**TINY, "augmentation": AUGMENTATION, "cache_dir": tmp_path / "cache", **kwargs}
    return OversampleStage(study, method=method, **args)


def manifest(result) -> list[dict]:
    with open(result.manifest_path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("method", [m for m in METHODS if m != "none"])
def test_each_method_adds_exactly_the_requested_images_with_a_complete_manifest(study, tmp_path, method):
    result = stage(study, tmp_path, method).run()
    # balance: the 8 malignant images are topped up to the 20 benign ones.
    assert [e["label"] for e in result.synthetic].count(0) == 12 and len(result.synthetic) == 12
    assert len(result.train) == 28 + 12 and result.train_labels.tolist().count(0) == 20
    rows = manifest(result)
    assert len(rows) == 12 and list(rows[0]) == list(MANIFEST_COLUMNS)
    for row, entry in zip(rows, result.synthetic):
        image = np.asarray(Image.open(result.manifest_path.parent / row["file"]))
        assert image.shape == (64, 64) and image.dtype == np.uint8  # the train images' own size, 1 channel
        assert row["class"] == "malignant" and entry["label"] == 0 and entry["class_name"] == "malignant"
        assert entry["synthetic"] is True and entry["split"] == "train" and entry["image"].endswith(row["file"])
        assert row["seed"] and row["nearest_real_id"].startswith("tiny_breast.npz#train/")
        assert float(row["nearest_real_distance"]) >= 0 and row["near_copy"] in ("True", "False")
        interpolated_or_copied = row["generator"] in ("vae_interp", "ldm_img2img", "random", "augmentation")
        assert bool(row["parent_ids"]) == interpolated_or_copied
        assert bool(row["generator_checkpoint_sha256"]) == (row["generator"] not in ("random", "augmentation"))
    if method == "hybrid":  # half from the generator, half augmented copies, each part's cost reported
        assert sorted({r["generator"] for r in rows}) == ["augmentation", "vae_interp"]
        assert {"fit", "sample", "augmented_copies"} <= set(result.summary["cost"])
    if method == "random":  # a random copy is its parent, pixel for pixel
        assert all(r["nearest_real_id"] == r["parent_ids"] and float(r["nearest_real_distance"]) == 0 for r in rows)
    assert all(e["synthetic"] is False for e in result.train[:28])


def test_none_leaves_the_train_split_as_it_is(study, tmp_path):
    result = stage(study, tmp_path, "none").run()
    assert [e["image"] for e in result.train] == [e["image"] for e in study.train] and not result.synthetic


def test_targets_balance_multiplier_count_and_chosen_classes():
    counts = {0: 10, 1: 40, 2: 25}
    names = ["a", "b", "c"]
    assert requested_counts(counts, "balance") == {0: 30, 1: 0, 2: 15}
    assert requested_counts(counts, "multiplier", multiplier=1.5) == {0: 5, 1: 0, 2: 12}
    assert requested_counts(counts, "count", count=7) == {0: 7, 1: 0, 2: 7}
    assert requested_counts(counts, "count", count={"c": 3}, class_names=names) == {0: 0, 1: 0, 2: 3}
    assert requested_counts(counts, "balance", classes=[0]) == {0: 30, 1: 0, 2: 0}
    with pytest.raises(ValueError, match="target 'count' needs 'count'"):
        requested_counts(counts, "count")
    with pytest.raises(ValueError, match="not one of"):
        requested_counts(counts, "double")


def test_the_method_names_are_the_bundles_contract():
    assert METHODS == ("none", "random", "gan", "vae", "vae_interp", "ldm", "ldm_img2img", "hybrid")


def test_bad_settings_are_named(study, tmp_path):
    with pytest.raises(ValueError, match=r"method 'diffusion' is not one of \('none', 'random', 'gan', 'vae'"):
        stage(study, tmp_path, "diffusion")
    with pytest.raises(ValueError, match=r"hybrid generator 'random' is not a generative method: one of \('gan'"):
        stage(study, tmp_path, "hybrid", hybrid={"generator": "random"})
    with pytest.raises(
        ValueError, match=r"settings \['gann'\] are no generator's section: .*'gan', 'vae_interp', 'ldm'"
    ):
        stage(study, tmp_path, "gan", gann={"iterations": 1})
    with pytest.raises(ValueError, match=r"classes \['benign'\] are not among"):
        stage(study, tmp_path, "random", classes=["benign"])
    with pytest.raises(ValueError, match="hybrid fraction"):
        stage(study, tmp_path, "hybrid", hybrid={"fraction": 1.5})


def test_identical_rerun_hits_the_cache_and_a_changed_config_or_train_set_misses_it(study, tmp_path):
    first = stage(study, tmp_path, "vae_interp").run()
    again = stage(study, tmp_path, "vae_interp").run()
    assert not first.cache_hit and again.cache_hit and again.cache_key == first.cache_key
    assert [e["image"] for e in again.train] == [e["image"] for e in first.train]

    # A sampling-only change (interpolation range) misses the samples but reuses the fitted VAEs.
    other = stage(study, tmp_path, "vae_interp", vae_interp={**TINY["vae_interp"], "alpha_range": [0.4, 0.6]}).run()
    assert not other.cache_hit and other.summary["cost"]["fit"]["cached"] is True
    # A model change refits.
    refit = stage(study, tmp_path, "vae_interp", vae_interp={**TINY["vae_interp"], "latent_size": 6}).run()
    assert not refit.cache_hit and refit.summary["cost"]["fit"]["cached"] is False

    smaller = type(study)(**{**study.__dict__, "entries": [e for e in study.entries if e is not study.train[-1]]})
    changed = stage(smaller, tmp_path, "vae_interp").run()
    assert not changed.cache_hit and changed.cache_key != first.cache_key
    assert changed.summary["cost"]["fit"]["cached"] is False


@pytest.mark.parametrize("method", ["ldm_img2img", "hybrid"])
def test_no_val_or_test_image_reaches_a_generator_or_the_train_set(study, tmp_path, monkeypatch, method):
    read = []
    original = oversample_module.read_entry_image
    monkeypatch.setattr(
        oversample_module, "read_entry_image", lambda ref, **kw: read.append(ref) or original(ref, **kw)
    )
    result = stage(study, tmp_path, method, hybrid={"generator": "vae_interp", "fraction": 0.5}).run()

    train_refs = {e["image"] for e in study.train}
    held_out = {e["image"] for e in study.val + study.test}
    assert set(read) == train_refs, "the stage reads exactly the train images, nothing else"
    train_ids = {real_id(e, study.dataset_dir) for e in study.train}
    held_out_ids = {real_id(e, study.dataset_dir) for e in study.val + study.test}
    for row in manifest(result):  # img2img parents, interpolation pairs, augmented-copy parents
        parents = set(row["parent_ids"].split())
        assert parents and parents <= train_ids and not parents & held_out_ids
        assert row["nearest_real_id"] in train_ids
    assert not {e["image"] for e in result.train} & held_out
    assert all(e["synthetic"] is True for e in result.train if e["image"] not in train_refs)


def test_same_seed_gives_the_same_images_and_another_seed_other_ones(study, tmp_path):
    def pixels(result):
        return [np.asarray(Image.open(e["image"])) for e in result.synthetic]

    first = stage(study, tmp_path / "a", "gan", seed=3).run()
    second = stage(study, tmp_path / "b", "gan", seed=3).run()
    other = stage(study, tmp_path / "c", "gan", seed=4).run()
    assert not second.cache_hit
    assert all(np.array_equal(p, q) for p, q in zip(pixels(first), pixels(second)))
    assert not all(np.array_equal(p, q) for p, q in zip(pixels(first), pixels(other)))


def test_drop_near_copies_removes_the_flagged_images(study, tmp_path):
    # random copies are exact copies of real images: all near copies, all dropped.
    result = stage(study, tmp_path, "random", quality={"feature_epochs": 1, "drop_near_copies": True}).run()
    assert "synthetic_fid" in result.summary["quality"] and (result.manifest_path.parent / "quality").is_dir()
    assert result.summary["near_copies"] == 12 and result.summary["dropped_near_copies"] == 12
    assert not result.synthetic and all(r["kept"] == "False" for r in manifest(result))


def test_diff_augment_is_differentiable_and_seeded():
    x = torch.rand(4, 1, 16, 16, requires_grad=True)
    a = diff_augment(x, torch.Generator().manual_seed(0))
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.equal(a, diff_augment(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(a, diff_augment(x, torch.Generator().manual_seed(1)))


def test_ldm_context_hook_feeds_the_unets_cross_attention():
    seen = []

    def context_fn(labels):  # stands in for a local text encoder's prompt embedding per class
        seen.append(labels.clone())
        return torch.nn.functional.one_hot(labels, 2).float()[:, None, :].repeat(1, 1, 4)

    ldm = ClassConditionalLDM(
        1,
        2,
        (16, 16),
        ae_channels=(16, 16),
        unet_channels=(16, 32),
        ae_iterations=1,
        unet_iterations=1,
        ddim_steps=2,
        num_train_timesteps=50,
        context_dim=8,
        context_fn=context_fn,
        progress=False,
    )
    ldm.fit(torch.rand(6, 1, 16, 16), torch.tensor([0, 1, 0, 1, 0, 1]))
    batch = ldm.sample(1, 3, torch.empty(0), [], seed=0)
    assert batch.images.shape == (3, 1, 16, 16) and seen and (seen[-1] == 1).all()
    with pytest.raises(ValueError, match="context_dim and context_fn go together"):
        ClassConditionalLDM(1, 2, (16, 16), context_dim=8)


def test_hybrid_cache_key_follows_the_augmentation_settings(study, tmp_path):
    def key(augmentation):
        return stage(study, tmp_path, "hybrid", augmentation=augmentation).sample_key()

    flip_lr = [RandFlipd(keys="image", prob=0.5, spatial_axis=1)]
    assert key(flip_lr) == key([RandFlipd(keys="image", prob=0.5, spatial_axis=1)])
    assert key(flip_lr) != key([RandFlipd(keys="image", prob=0.5, spatial_axis=0)])
    assert key(flip_lr) != key([RandFlipd(keys="image", prob=0.9, spatial_axis=1)])


def test_vae_samples_the_prior_of_the_vae_that_vae_interp_fitted(study, tmp_path):
    """``vae`` and ``vae_interp`` share one fitted VAE per class (one fit, found in the cache by the
    second), but ``vae`` decodes prior draws: new images with no real parents."""
    interp = stage(study, tmp_path, "vae_interp").run()
    prior = stage(study, tmp_path, "vae").run()
    assert interp.summary["cost"]["fit"]["cached"] is False and prior.summary["cost"]["fit"]["cached"] is True
    assert [r["parent_ids"] for r in manifest(prior)] == [""] * 12
    assert all(len(r["parent_ids"].split()) == 2 for r in manifest(interp))
    assert prior.cache_key != interp.cache_key


class MeanImage(ImageGenerator):
    """A toy generator for the registry test: the mean train image of the class, plus seeded noise."""

    name = "mean_image"
    sampling_only = frozenset({"noise"})

    def __init__(self, in_channels, num_classes, image_size, seed=0, device="cpu", progress=True, noise=0.0):
        super().__init__(in_channels, num_classes, image_size, seed, device, progress)
        self.noise = float(noise)
        self.state = torch.nn.Module()
        self.state.register_buffer("means", torch.zeros(num_classes, in_channels, *self.image_size))

    def modules(self):
        return {"state": self.state}

    def fit(self, images, labels):
        self.check_fit_inputs(images, labels)
        for c in labels.unique():
            self.state.means[c] = images[labels == c].mean(dim=0)
        return self

    def sample(self, label, n, real_images, real_ids, seed):
        noise = torch.randn(n, *self.state.means.shape[1:], generator=torch.Generator().manual_seed(seed))
        return SampleBatch((self.state.means[label] + self.noise * noise).clamp(0, 1), [[] for _ in range(n)])


def test_a_generator_registered_with_one_line_runs_in_the_stage(study, tmp_path, monkeypatch):
    monkeypatch.setitem(GENERATORS, "mean_image", GeneratorSpec(MeanImage, section="mean_image"))

    result = stage(study, tmp_path, "mean_image", mean_image={"noise": 0.0}).run()
    rows = manifest(result)
    assert len(result.synthetic) == 12 and {r["generator"] for r in rows} == {"mean_image"}
    assert all(r["generator_checkpoint_sha256"] and not r["parent_ids"] for r in rows)
    images = [np.asarray(Image.open(e["image"])) for e in result.synthetic]
    assert images[0].shape == (64, 64) and all(np.array_equal(images[0], other) for other in images)
    # its sampling-only setting reuses the fitted generator; it also serves as hybrid#generator
    noisier = stage(study, tmp_path, "mean_image", mean_image={"noise": 0.1}).run()
    assert not noisier.cache_hit and noisier.summary["cost"]["fit"]["cached"] is True
    hybrid = stage(study, tmp_path, "hybrid", hybrid={"generator": "mean_image"}, mean_image={"noise": 0.0}).run()
    assert sorted({r["generator"] for r in manifest(hybrid)}) == ["augmentation", "mean_image"]
