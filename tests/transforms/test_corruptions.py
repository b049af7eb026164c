"""The graded corruptions of the robustness evaluation: severity 0 changes nothing, every corruption is
repeatable under its seed, and each grows monotonically in the physical property it stands for."""

import io

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medaug.transforms.corruptions import (
    CORRUPTIONS,
    DEFAULT_SUITE,
    Corrupt,
    Corruptd,
    CorruptionError,
    image_seed,
    reference_of,
    suite_for,
)
from medaug.transforms.presets import available_presets
from tests.conftest import REPO

# physics and noise corruptions need a real image: structure, a range of grey levels
_SCANS = np.load(REPO / "data" / "breastmnist_64.npz")["test_images"][:3].astype(np.float32) / 255.0
IMAGES = [torch.from_numpy(scan)[None] for scan in _SCANS]


def corrupt(name, severity, image=IMAGES[0], seed=7):
    transform = Corrupt(name, severity)
    transform.set_random_state(seed)
    return transform(image)


def noise_std(out, clean):
    return float((out - clean).std())


def distance(out, clean):
    return float(((out - clean) ** 2).mean().sqrt())


def gradient_energy(out, clean):
    return float((out[:, 1:, :] - out[:, :-1, :]).pow(2).mean() + (out[:, :, 1:] - out[:, :, :-1]).pow(2).mean())


def equal_neighbours(out, clean):
    return float((out[:, :, 1:] == out[:, :, :-1]).float().mean())


def mean(out, clean):
    return float(out.mean())


def std(out, clean):
    return float(out.std())


# corruption -> (property, +1 if it grows with severity, -1 if it falls)
PROPERTY = {
    "xray_dose": (noise_std, 1),
    "ct_dose": (noise_std, 1),
    "speckle": (noise_std, 1),
    "mri_noise": (noise_std, 1),
    "gaussian_noise": (noise_std, 1),
    "xray_scatter": (distance, 1),
    "mri_motion": (distance, 1),
    "mri_ghosting": (distance, 1),
    "defocus_blur": (gradient_energy, -1),
    "motion_blur": (gradient_energy, -1),
    "resolution": (gradient_energy, -1),
    "pixelate": (equal_neighbours, 1),
    "jpeg": (distance, 1),
    "brightness": (mean, -1),
    "us_gain": (mean, -1),
    "gamma": (mean, -1),
    "contrast": (std, -1),
}


def test_every_corruption_has_a_measured_property():
    assert set(PROPERTY) == set(CORRUPTIONS)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_severity_zero_is_the_identity(name):
    assert torch.equal(corrupt(name, 0), IMAGES[0])


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_a_corruption_is_repeatable_under_its_seed_and_stays_a_display_image(name):
    first, again = corrupt(name, 3), corrupt(name, 3)
    assert torch.equal(first, again)
    assert first.shape == IMAGES[0].shape and first.dtype == IMAGES[0].dtype
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert not torch.equal(first, IMAGES[0])


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_corruption_is_monotone_in_its_property_with_severity(name):
    """Averaged over three scans and three seeds (motion's direction and timing are random; the
    property of one draw can tie at neighbouring severities)."""
    prop, sign = PROPERTY[name]
    values = [
        np.mean([prop(corrupt(name, s, image, seed), image) for image in IMAGES for seed in (1, 2, 3)])
        for s in range(6)
    ]
    assert all(sign * (b - a) > 0 for a, b in zip(values, values[1:])), values


def test_jpeg_severities_compress_harder():
    from PIL import Image

    plane = (IMAGES[0][0].numpy() * 255).round().astype(np.uint8)
    sizes = []
    for quality in CORRUPTIONS["jpeg"].levels:
        buffer = io.BytesIO()
        Image.fromarray(plane).save(buffer, format="JPEG", quality=int(quality))
        sizes.append(len(buffer.getvalue()))
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)


def test_noise_corruptions_differ_between_seeds_but_not_between_severities_in_structure():
    a, b = corrupt("gaussian_noise", 2, seed=1), corrupt("gaussian_noise", 2, seed=2)
    assert not torch.equal(a, b)
    # one seed draws one noise field; severity scales it (away from the clipping at 0 and 1)
    mid = (IMAGES[0] > 0.2) & (IMAGES[0] < 0.8)
    low, high = corrupt("gaussian_noise", 1) - IMAGES[0], corrupt("gaussian_noise", 2) - IMAGES[0]
    assert torch.allclose(high[mid], 2 * low[mid], atol=1e-5)


def test_the_dictionary_twin_seeds_each_image_by_its_own_reference_in_any_order():
    def item(i, ref):
        return {"image": MetaTensor(IMAGES[i].clone(), meta={"filename_or_obj": ref})}

    twin = Corruptd("image", "speckle", 3, seed=0)
    one = twin(item(0, "/data/a/x.npz#test/0"))["image"]
    twin(item(1, "/data/a/x.npz#test/1"))  # another image in between changes nothing
    again = twin(item(0, "/elsewhere/a/x.npz#test/0"))["image"]  # the same scan stored elsewhere
    assert torch.equal(one, again) and one.meta["filename_or_obj"] == "/data/a/x.npz#test/0"
    other = twin(item(0, "/data/a/x.npz#test/2"))["image"]
    assert not torch.equal(one, other)
    assert reference_of(MetaTensor(IMAGES[0], meta={"filename_or_obj": "/a/b/c.dcm", "frame": 3})) == "b/c.dcm#3"
    assert image_seed("b/c.dcm", "jpeg", 0) != image_seed("b/c.dcm", "jpeg", 1)


def test_every_preset_has_a_suite_of_known_corruptions():
    for preset in available_presets():
        suite = [c.name for c in suite_for(preset)]
        assert suite and len(set(suite)) == len(suite)
    assert [c.name for c in suite_for("generic")] == list(DEFAULT_SUITE)
    assert {"xray_dose", "xray_scatter"} <= {c.name for c in suite_for("chest_xray")}
    assert {"speckle", "us_gain"} <= {c.name for c in suite_for("ultrasound")}
    assert [c.name for c in suite_for("mri", ["jpeg", "mri_noise"])] == ["jpeg", "mri_noise"]
    assert CORRUPTIONS["xray_dose"].describe(2) == "dose fraction 0.25"


def test_unknown_corruptions_and_severities_are_clear_errors():
    with pytest.raises(CorruptionError, match="unknown corruption 'jpg'; did you mean 'jpeg'"):
        suite_for("generic", ["jpg"])
    with pytest.raises(CorruptionError, match="severity must be an integer 0..5"):
        Corrupt("jpeg", 6)
