"""The one resize of the oversampling stage and the quality metrics, with its two named modes, and
the conversion of an image to the uint8 array a PNG holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medaug.pipelines.oversample.batches import RESIZE_MODES, resize_batch, to_uint8

# 4 x 4 grey-scale image with distinct values in [0, 1].
IMAGE = (torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)) / 15.0
BLOCK_MEANS = IMAGE.reshape(1, 1, 2, 2, 2, 2).mean(dim=(3, 5))  # means of the four 2 x 2 blocks


def test_area_mode_shrinks_by_averaging_the_pixels_each_output_pixel_covers():
    out = resize_batch(IMAGE, (2, 2), mode="area")
    assert out.shape == (1, 1, 2, 2) and torch.allclose(out, BLOCK_MEANS, atol=1e-6)


def test_antialias_mode_shrinks_with_a_wider_filter_than_the_block():
    out = resize_batch(IMAGE, (2, 2), mode="antialias")
    assert out.shape == (1, 1, 2, 2) and not torch.allclose(out, BLOCK_MEANS, atol=1e-3)
    # still an average: a flat image stays flat, values stay in [0, 1]
    flat = torch.full((2, 3, 8, 8), 0.25)
    assert torch.allclose(resize_batch(flat, (3, 5), mode="antialias"), torch.full((2, 3, 3, 5), 0.25))
    assert 0 <= float(out.min()) and float(out.max()) <= 1


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_enlarging_is_bilinear_in_both_modes(mode):
    ramp = torch.tensor([[[[0.0, 1.0]]]])
    out = resize_batch(ramp, (1, 4), mode=mode)  # pixel centres at -0.25, 0.25, 0.75, 1.25 of the input
    assert torch.allclose(out, torch.tensor([[[[0.0, 0.25, 0.75, 1.0]]]]), atol=1e-6)


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_same_size_or_empty_batches_come_back_as_they_are(mode):
    assert resize_batch(IMAGE, (4, 4), mode=mode) is IMAGE
    empty = torch.empty(0, 1, 4, 4)
    assert resize_batch(empty, (2, 2), mode=mode) is empty


def test_the_mode_must_be_named():
    with pytest.raises(ValueError, match=r"resize mode 'nearest' is not one of \('area', 'antialias'\)"):
        resize_batch(IMAGE, (2, 2), mode="nearest")
    with pytest.raises(TypeError):
        resize_batch(IMAGE, (2, 2))  # no default: each caller says which mode its numbers depend on


def test_to_uint8_rounds_clamps_and_lays_out_channels_as_a_png_does():
    grey = torch.tensor([[[0.0, 1.0, 0.5, 1.2, -0.1, 0.499 / 255]]])
    assert to_uint8(grey).tolist() == [[0, 255, 128, 255, 0, 0]] and to_uint8(grey).dtype == np.uint8
    rgb = torch.rand(3, 2, 5)
    assert to_uint8(rgb).shape == (2, 5, 3) and np.array_equal(to_uint8(rgb)[..., 1], to_uint8(rgb[1:2]))
    levels = torch.arange(256, dtype=torch.float32).reshape(1, 16, 16) / 255.0
    assert np.array_equal(to_uint8(levels), np.arange(256).reshape(16, 16))  # a PNG read back writes the same
