"""Flip test-time augmentation: the mean softmax over exactly the flips the augmentation preset allows,
returned so that the bundles' softmax postprocessing yields that mean probability."""

import logging

import pytest
import torch
from monai.inferers import SimpleInferer
from monai.transforms import Activationsd

from medaug.pipelines.tta import FlipTTAInferer, TestTimeInferer
from medaug.transforms.presets import AugmentationPlan


class RecordingNetwork(torch.nn.Module):
    """Logits from the left column and top row of the image, so that each flip changes them; keeps the
    views it was given."""

    def __init__(self):
        super().__init__()
        self.views = []

    def forward(self, x):
        self.views.append(x.clone())
        return torch.stack([x[:, 0, :, 0].sum(1), x[:, 0, 0, :].sum(1)], dim=1)


def _image():
    return torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4) / 10


def test_left_right_only_sees_the_image_and_its_mirror_and_never_an_upside_down_one():
    network, x = RecordingNetwork(), _image()
    FlipTTAInferer([1])(x, network)
    assert len(network.views) == 2
    assert torch.equal(network.views[0], x) and torch.equal(network.views[1], x.flip(3))


def test_both_axes_average_over_the_four_flip_combinations():
    network, x = RecordingNetwork(), _image()
    FlipTTAInferer([0, 1])(x, network)
    expected = [x, x.flip(2), x.flip(3), x.flip(2, 3)]
    assert len(network.views) == 4 and all(torch.equal(v, e) for v, e in zip(network.views, expected))


def test_softmax_postprocessing_of_the_output_is_the_mean_probability():
    network, x = RecordingNetwork(), _image()
    out = FlipTTAInferer([1])(x, network)
    mean = (torch.softmax(network(x), 1) + torch.softmax(network(x.flip(3)), 1)) / 2
    post = Activationsd(keys="pred", softmax=True)({"pred": out[0]})["pred"]
    assert torch.allclose(post, mean[0], atol=1e-6)


def test_tta_none_is_the_plain_inferer_and_a_preset_without_flips_warns(caplog):
    assert isinstance(TestTimeInferer("none", [1]).inferer, SimpleInferer)
    with caplog.at_level(logging.WARNING, logger="medaug.evaluate"):
        assert isinstance(TestTimeInferer("flip", []).inferer, SimpleInferer)
    assert "does nothing" in caplog.text
    assert TestTimeInferer("flip", [1]).inferer.spatial_axes == [1]
    with pytest.raises(ValueError, match="none, flip"):
        TestTimeInferer("rotate")


@pytest.mark.parametrize(
    ("preset", "allow", "axes"),
    [("ultrasound", [], [1]), ("chest_xray", [], []), ("chest_xray", ["left_right_flip"], []), ("none", [], [])],
)
def test_the_plan_reports_the_axes_its_flips_touch(preset, allow, axes):
    assert AugmentationPlan(preset, allow=allow, image_size=[32, 32]).flip_axes() == axes


def test_an_override_that_adds_a_flip_is_in_the_axes():
    plan = AugmentationPlan(
        "chest_xray",
        overrides={"flip": {"_target_": "RandFlipd", "prob": 0.5, "spatial_axis": 1}},
        allow=["left_right_flip"],
        image_size=[32, 32],
    )
    assert plan.flip_axes() == [1]
