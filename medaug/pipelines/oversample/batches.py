"""Batches of 2D images as the oversampling stage and the quality metrics take them: float tensors
(N, C, H, W) in [0, 1].

Small helpers shared by the stage, the feature network and the synthetic-image metrics: checking
what a caller passed (with an error that names the problem), bringing two batches to the same
channel count and size before they are compared, the one resize (with a named mode per use) and
the conversion of an image to the uint8 array a PNG holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights, as medaug.io uses to read RGB images as grey-scale.
_LUMA = (0.299, 0.587, 0.114)


def as_image_batch(images, name: str = "images", *, allow_empty: bool = True) -> torch.Tensor:
    """``images`` as a float32 CPU tensor (N, C, H, W), checked to be finite and within [0, 1].

    Accepts a tensor or a NumPy array; the input is never modified.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or array of shape (N, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(images.shape)}")
    batch = images.detach().to("cpu", torch.float32)
    if len(batch) == 0:
        if not allow_empty:
            raise ValueError(f"{name} is empty")
        return batch
    if not torch.isfinite(batch).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    low, high = float(batch.min()), float(batch.max())
    if low < -1e-4 or high > 1 + 1e-4:
        raise ValueError(f"{name} must hold intensities in [0, 1], found values in [{low:.4g}, {high:.4g}]")
    return batch


def match_channels(images: torch.Tensor, channels: int, name: str = "images") -> torch.Tensor:
    """Grey-scale to ``channels`` by repetition, RGB to grey by luma; other mismatches are an error."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1:
        return images.expand(-1, channels, -1, -1)
    if have == 3 and channels == 1:
        weights = torch.tensor(_LUMA, dtype=images.dtype).view(1, 3, 1, 1)
        return (images * weights).sum(dim=1, keepdim=True)
    raise ValueError(f"{name} have {have} channels, which cannot be converted to the {channels} expected")


RESIZE_MODES = ("area", "antialias")


def resize_batch(images: torch.Tensor, size: Sequence[int], *, mode: str) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1] to ``size`` (H, W) as float32, clamped to [0, 1]; returned as they
    are when already that size. ``mode`` (one of :data:`RESIZE_MODES`, no default: each caller says
    which it needs, and a cache or a metric depends on it staying the same):

    - ``"area"``: area averaging when shrinking both sides (each output pixel the mean of the input
      pixels it covers, as MONAI's ``Resize`` does by default), bilinear when enlarging. The
      oversampling stage's mode for the images it reads, hands to generators and writes.
    - ``"antialias"``: bilinear with antialiasing either way (shrinking averages a neighbourhood
      instead of skipping pixels). The mode of the quality metrics and their feature network.

    Both are ``torch.nn.functional.interpolate`` on the whole batch (MONAI's ``Resize`` takes one
    image at a time).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} is not one of {RESIZE_MODES}")
    size = tuple(int(s) for s in size)
    if tuple(images.shape[-2:]) == size or len(images) == 0:
        return images
    if mode == "antialias":
        how = {"mode": "bilinear", "align_corners": False, "antialias": True}
    elif all(s <= h for s, h in zip(size, images.shape[-2:])):
        how = {"mode": "area"}
    else:
        how = {"mode": "bilinear", "align_corners": False}
    return F.interpolate(images.float(), size=size, **how).clamp(0, 1)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """One image (C, H, W) in [0, 1] as the uint8 array of a PNG: (H, W) for 1 channel, (H, W, 3)
    for 3; values rounded to the nearest of the 256 levels."""
    array = (image.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    return array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)


def common_size(*batches: torch.Tensor) -> tuple[int, int]:
    """The smallest height and width among the batches: comparing at the coarser resolution never
    invents detail that one of the two sets does not have."""
    return min(b.shape[-2] for b in batches), min(b.shape[-1] for b in batches)


def common_channels(*batches: torch.Tensor) -> int:
    """1 if any batch is grey-scale (colour is then compared as luma), else the shared channel count."""
    counts = {b.shape[1] for b in batches}
    if len(counts) == 1:
        return counts.pop()
    if 1 in counts:
        return 1
    raise ValueError(f"image sets have incompatible channel counts {sorted(counts)}")
