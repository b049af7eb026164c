"""Batches of 2D images as the quality metrics take them: float tensors (N, C, H, W) in [0, 1].

Small helpers shared by the feature network and the synthetic-image metrics: checking what a caller
passed (with an error that names the problem), and bringing two batches to the same channel count
and size before they are compared.
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


def resize_batch(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize with antialiasing (so shrinking averages pixels instead of skipping them)."""
    size = tuple(int(s) for s in size)
    if tuple(images.shape[-2:]) == size or len(images) == 0:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)


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
