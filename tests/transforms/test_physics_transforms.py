"""The physics transforms do what their docstrings say: statistical checks of each model on
phantoms, and MONAI's transform contract (prob=0 is the identity, a seed fixes the result, meta
survives, the dictionary twin equals the array form)."""

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

import medaug.transforms as T
from medaug.transforms.ct import RandLowDoseCT

ARRAY_AND_TWIN = [
    (T.RandQuantumNoise, T.RandQuantumNoised, {"electronic_noise_std": 2.0}),
    (T.RandXrayExposure, T.RandXrayExposured, {}),
    (T.RandXrayScatter, T.RandXrayScatterd, {}),
    (T.RandLowDoseCT, T.RandLowDoseCTd, {"hu_window": (-1000, 1000)}),
    (T.RandSpeckle, T.RandSpeckled, {"nakagami_m": (1.0, 4.0)}),
    (T.RandKSpaceMotion, T.RandKSpaceMotiond, {}),
    (T.RandKSpaceGhosting, T.RandKSpaceGhostingd, {}),
]
IDS = [array.__name__ for array, _, _ in ARRAY_AND_TWIN]


def image(shape=(1, 32, 32), seed=0) -> MetaTensor:
    rng = np.random.default_rng(seed)
    pixels = torch.from_numpy(rng.uniform(0.2, 0.8, size=shape).astype(np.float32))
    return MetaTensor(
        pixels, affine=torch.diag(torch.tensor([0.5, 0.5, 1.0, 1.0])), meta={"filename_or_obj": "cxr.dcm"}
    )


@pytest.mark.parametrize("array_cls, dict_cls, kwargs", ARRAY_AND_TWIN, ids=IDS)
def test_prob_zero_is_the_identity(array_cls, dict_cls, kwargs):
    img = image()
    assert torch.equal(array_cls(prob=0.0, **kwargs)(img), img)
    assert torch.equal(dict_cls(keys="image", prob=0.0, **kwargs)({"image": img})["image"], img)


@pytest.mark.parametrize("array_cls, dict_cls, kwargs", ARRAY_AND_TWIN, ids=IDS)
def test_seeded_changes_the_image_deterministically_keeps_meta_and_twin_agrees(array_cls, dict_cls, kwargs):
    img = image()
    first = array_cls(prob=1.0, **kwargs).set_random_state(7)(img)
    again = array_cls(prob=1.0, **kwargs).set_random_state(7)(img)
    other = array_cls(prob=1.0, **kwargs).set_random_state(8)(img)
    twin = dict_cls(keys="image", prob=1.0, **kwargs).set_random_state(7)({"image": img, "label": 1})
    assert isinstance(first, MetaTensor) and first.shape == img.shape and first.dtype == img.dtype
    assert first.meta["filename_or_obj"] == "cxr.dcm" and torch.equal(first.affine, img.affine)
    assert not torch.allclose(first, img), "prob=1 must change the image"
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert torch.equal(twin["image"], first) and twin["label"] == 1
    assert torch.equal(img, image()), "the input is never modified"


@pytest.mark.parametrize(
    "array_cls, kwargs",
    [
        (T.RandQuantumNoise, {}),
        (T.RandSpeckle, {}),
        (T.RandKSpaceGhosting, {}),
        (T.RandKSpaceMotion, {}),
        (T.RandXrayScatter, {}),
    ],
)
def test_3d_volumes_work_too(array_cls, kwargs):
    vol = image((1, 16, 16, 8))
    out = array_cls(prob=1.0, **kwargs).set_random_state(0)(vol)
    assert out.shape == vol.shape and not torch.allclose(out, vol)


def test_quantum_noise_variance_of_line_integrals_scales_as_one_over_dose():
    # a uniform field: p = 0.5 * 3 = 1.5, so 1e4 * exp(-1.5) ~ 2231 photons at full dose
    flat = torch.full((1, 256, 256), 0.5)
    variances = {}
    for dose in (1.0, 0.5, 0.1):
        noisy = T.RandQuantumNoise(prob=1.0, dose_fraction=dose, incident_photons=1e4).set_random_state(0)(flat)
        line_integrals = noisy * 3.0
        variances[dose] = float(line_integrals.var())
        expected = 1.0 / (dose * 1e4 * math.exp(-1.5))  # Var(-ln N) ~ 1 / lambda
        assert variances[dose] == pytest.approx(expected, rel=0.05)
        assert float(noisy.mean()) == pytest.approx(0.5, abs=0.002), "the log of Poisson counts is ~unbiased"
    assert variances[0.5] / variances[1.0] == pytest.approx(2.0, rel=0.05)
    assert variances[0.1] / variances[1.0] == pytest.approx(10.0, rel=0.05)


def water_phantom(size=96) -> torch.Tensor:
    """A 200 mm water disc (0 HU) in air (-1000 HU), in a 350 mm field."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    disc = np.hypot(yy, xx) < size * 100 / 350
    return torch.from_numpy(np.where(disc, 0.0, -1000.0).astype(np.float32))[None]


def test_low_dose_ct_noise_grows_as_inverse_sqrt_dose_and_mean_hu_is_unbiased():
    phantom = water_phantom()
    centre = (slice(None), slice(38, 58), slice(38, 58))  # well inside the disc
    stds = {}
    for dose in (1.0, 0.25):
        samples = [
            RandLowDoseCT(prob=1.0, dose_fraction=dose, incident_photons=2e4).set_random_state(s)(phantom)[centre]
            for s in range(6)
        ]
        region = torch.stack(samples)
        stds[dose] = float(region.std())
        # noise std is 40-85 HU here; the mean of the 6 x 400 correlated pixels stays within 4 HU of 0
        assert float(region.mean()) == pytest.approx(0.0, abs=4.0), "mean HU of water stays 0"
    assert stds[1.0] > 20.0, "noise is visible at all"
    assert stds[0.25] / stds[1.0] == pytest.approx(2.0, rel=0.12)


def test_low_dose_ct_in_a_display_window_maps_back_and_clips():
    windowed = (water_phantom(48) + 1000.0) / 2000.0  # [-1000, 1000] HU -> [0, 1]
    out = RandLowDoseCT(prob=1.0, dose_fraction=0.1, hu_window=(-1000, 1000)).set_random_state(0)(windowed)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert float(out[0, 20:28, 20:28].mean()) == pytest.approx(0.5, abs=0.01)


def test_rayleigh_speckle_envelope_has_mean_over_std_1_91():
    dynamic_range = 60.0
    flat = torch.full((1, 256, 256), 0.6)
    for size in (0.0, 1.5):  # uncorrelated grains and a realistic grain size keep the Rayleigh law
        out = T.RandSpeckle(prob=1.0, speckle_size=size, dynamic_range_db=dynamic_range).set_random_state(0)(flat)
        envelope = torch.pow(10.0, (out.double() - 1.0) * dynamic_range / 20.0)  # undo the log compression
        ratio = float(envelope.mean() / envelope.std())
        assert ratio == pytest.approx(math.sqrt(math.pi / (4 - math.pi)), rel=0.03)  # 1.913
        original = 10 ** ((0.6 - 1.0) * dynamic_range / 20.0)
        assert float(envelope.mean()) == pytest.approx(original, rel=0.03), "unit-mean speckle keeps brightness"


def test_nakagami_speckle_is_weaker_for_larger_m():
    flat = torch.full((1, 128, 128), 0.6)
    ratios = []
    for m in (1.0, 4.0):
        out = T.RandSpeckle(prob=1.0, nakagami_m=m, speckle_size=0.0).set_random_state(0)(flat)
        envelope = torch.pow(10.0, (out.double() - 1.0) * 3.0)
        ratios.append(float(envelope.mean() / envelope.std()))
    # Nakagami mean/std = mu / sqrt(1 - mu^2) with mu = Gamma(m+1/2)/(Gamma(m) sqrt(m))
    mu = T.ultrasound.nakagami_mean(4.0)
    assert ratios[1] == pytest.approx(mu / math.sqrt(1 - mu**2), rel=0.05)
    assert ratios[1] > 2 * ratios[0]


def test_ghosting_places_replicas_at_the_k_space_period():
    img = torch.zeros((1, 64, 64))
    img[0, 10, 20] = 1.0
    out = T.RandKSpaceGhosting(
        prob=1.0, num_ghosts=4, intensity=0.8, phase_encoding_axes=0, restore_center=0.0
    ).set_random_state(0)(img)
    # image minus intensity/4 times copies shifted by 64/4 = 16 lines along axis 0
    assert float(out[0, 10, 20]) == pytest.approx(1 - 0.8 / 4, abs=1e-5)
    for row in (26, 42, 58):
        assert float(out[0, row, 20]) == pytest.approx(0.8 / 4, abs=1e-5)
    out[0, [10, 26, 42, 58], 20] = 0
    assert float(out.abs().max()) < 1e-5, "nothing anywhere else (no replica along the other axis)"


def test_ghosting_with_the_centre_restored_keeps_mean_intensity():
    img = torch.rand((1, 64, 64), generator=torch.Generator().manual_seed(0)) + 1.0
    out = T.RandKSpaceGhosting(prob=1.0, num_ghosts=4, intensity=0.8, restore_center=0.05).set_random_state(0)(img)
    assert float(out.mean()) == pytest.approx(float(img.mean()), rel=0.02)
    assert not torch.allclose(out, img, atol=1e-2)


def test_motion_keeps_the_centre_segment_pose_and_adds_ghost_energy_outside_the_object():
    img = torch.zeros((1, 64, 64))
    img[0, 24:40, 24:40] = 1.0
    motion = T.RandKSpaceMotion(prob=1.0, num_movements=2, degrees=0.0, translation=(6.0, 8.0), phase_encoding_axes=0)
    out = motion.set_random_state(1)(img)[0]
    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    centroid = [float((out * grid).sum() / out.sum()) for grid in (rows, cols)]
    assert centroid == pytest.approx([31.5, 31.5], abs=1.5), "the k-space centre's pose fixes the position"
    outside = out.clone()
    outside[24:40, 24:40] = 0
    assert float(outside.sum()) > 0.05 * float(out.sum()), "the moved segments leave ghosts outside the object"
    assert float(out.sum()) == pytest.approx(float(img.sum()), rel=0.3)


def test_scatter_lowers_contrast_by_the_scatter_to_primary_ratio():
    img = torch.full((1, 64, 64), 0.2)
    img[0, 16:48, 16:48] = 0.8  # a dense region in a bright field
    out = T.RandXrayScatter(prob=1.0, scatter_to_primary=0.5, kernel_fraction=0.3).set_random_state(0)(img)
    contrast_in = float(img[0, 32, 32] - img[0, 2, 2])
    contrast_out = float(out[0, 32, 32] - out[0, 2, 2])
    assert 0 < contrast_out < contrast_in
    primary, detected = torch.exp(-img * 3.0), torch.exp(-out * 3.0)
    assert float((detected - primary).mean() / primary.mean()) == pytest.approx(0.5, rel=0.02)


def test_exposure_more_mas_darkens_and_lower_contrast_flattens():
    img = torch.linspace(0.1, 0.9, 64).repeat(1, 64, 1)
    brighter = T.RandXrayExposure(prob=1.0, mas_factor=2.0, contrast=1.0, gamma=1.0)(img)
    assert torch.allclose(brighter, (img - math.log(2.0) / 3.0).clamp(0, 1), atol=1e-6)
    flatter = T.RandXrayExposure(prob=1.0, mas_factor=1.0, contrast=0.8, gamma=1.0)(img)
    assert float(flatter.std()) == pytest.approx(0.8 * float(img.std()), rel=1e-4)


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (T.RandQuantumNoise, {"dose_fraction": (0.0, 2.0)}, "dose_fraction"),
        (T.RandSpeckle, {"nakagami_m": 0.1}, "nakagami_m"),
        (T.RandKSpaceGhosting, {"num_ghosts": 1}, "num_ghosts"),
        (T.RandXrayScatter, {"scatter_to_primary": (0.5, 0.1)}, "scatter_to_primary"),
    ],
)
def test_bad_parameters_are_rejected_with_their_name(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(prob=1.0, **kwargs)


def test_a_phase_axis_the_image_lacks_is_an_error():
    with pytest.raises(ValueError, match="phase_encoding_axes"):
        T.RandKSpaceGhosting(prob=1.0, phase_encoding_axes=2)(torch.rand(1, 8, 8))
