"""Metrics of synthetic images against real ones: fidelity (FID), diversity (MS-SSIM), coverage
(k-NN precision and recall) and memorization (nearest real image in pixel space).

Plain functions over tensors, in the style of scikit-learn's metrics: no hidden state, NaN where a
metric is undefined (too few images) instead of an exception, so one empty class never stops the
assessment of the others.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from monai.metrics import FIDMetric, MultiScaleSSIMMetric
from monai.metrics.fid import _cov, compute_frechet_distance
from sklearn.neighbors import NearestNeighbors

from medaug.pipelines.oversample.batches import (
    as_image_batch,
    common_channels,
    common_size,
    match_channels,
    resize_batch,
)

logger = logging.getLogger("medaug.synthetic_quality")

# Wang et al. (2003) weights of the 5 MS-SSIM scales, finest first (MONAI's defaults).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


# --- fidelity ---------------------------------------------------------------------------------


def frechet_distance(real_features: torch.Tensor, synth_features: torch.Tensor) -> float:
    """FID between two feature sets (rows are images) with MONAI's ``FIDMetric``; NaN with fewer
    than 2 images on either side (a covariance needs two).

    Features with a few dominant and many near-dead dimensions (common after ReLU) make the
    product of the covariances so ill-conditioned that its matrix square root comes out with an
    imaginary part MONAI rejects. The distance is then recomputed with MONAI's
    ``compute_frechet_distance`` on covariances with a small ridge added to the diagonal (1e-6,
    else 1e-4, else 1e-2 of the mean feature variance), the regularisation MONAI itself applies
    to non-finite square roots, scaled to the features.
    """
    if len(real_features) < 2 or len(synth_features) < 2:
        return math.nan
    real, synth = real_features.double(), synth_features.double()
    try:
        value = FIDMetric()(synth, real)
    except ValueError as err:
        sigma_real, sigma_synth = _cov(real, rowvar=False), _cov(synth, rowvar=False)
        scale = float(sigma_real.trace() + sigma_synth.trace()) / (2 * real.shape[1]) or 1.0
        eye = torch.eye(real.shape[1], dtype=torch.float64)
        for ridge in (1e-6, 1e-4, 1e-2):
            try:
                value = compute_frechet_distance(
                    synth.mean(0), sigma_synth + ridge * scale * eye, real.mean(0), sigma_real + ridge * scale * eye
                )
                break
            except ValueError:
                continue
        else:
            logger.warning("FID undefined for these features (%s); reported as NaN", err)
            return math.nan
    # rounding in the matrix square root can leave -1e-10 for identical sets
    return max(float(value), 0.0)


# --- coverage: k-NN precision and recall --------------------------------------------------------


def knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each point to its k-th nearest neighbour in the same set (itself excluded):
    the radius of its ball in the k-NN estimate of the set's manifold."""
    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(features.numpy())
    distances, _ = neighbours.kneighbors(features.numpy())
    return torch.from_numpy(distances[:, k])  # column 0 is the point itself


def _fraction_inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """Fraction of ``points`` that fall within at least one ball (centre, radius)."""
    inside = torch.zeros(len(points), dtype=torch.bool)
    for start in range(0, len(points), 1024):
        # exact differences, not the |a|^2 + |b|^2 - 2ab shortcut: a point in both sets must be
        # at distance 0, not 1e-4, from itself
        d = torch.cdist(points[start : start + 1024], centres, compute_mode="donot_use_mm_for_euclid_dist")
        inside[start : start + 1024] = (d <= radii.unsqueeze(0)).any(dim=1)
    return float(inside.double().mean())


def knn_precision_recall(real_features: torch.Tensor, synth_features: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall of Kynkäänniemi et al. (2019), "Improved precision and recall
    metric for assessing generative models" (NeurIPS).

    Each set's manifold is estimated as the union of balls around its points, each with the radius
    to the point's k-th nearest neighbour. Precision is the fraction of synthetic points inside the
    real manifold (are synthetic images realistic?); recall the fraction of real points inside the
    synthetic manifold (do synthetic images cover the variety of real ones?). Identical sets give 1
    and 1. NaN when either set has k or fewer points.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    real, synth = real_features.double(), synth_features.double()
    if len(real) <= k or len(synth) <= k:
        return math.nan, math.nan
    precision = _fraction_inside(synth, real, knn_radii(real, k))
    recall = _fraction_inside(real, synth, knn_radii(synth, k))
    return precision, recall


# --- diversity: MS-SSIM within a set ------------------------------------------------------------


def ms_ssim_settings(height: int, width: int) -> dict:
    """Scales, kernel size and weights of MS-SSIM that fit an image of this size.

    MS-SSIM (Wang et al. 2003) uses 5 scales and an 11 px Gaussian window, which needs images of
    about 180 px by MONAI's check. Smaller images keep the window at 11, 9 or 7 px (sigma scaled
    with it) and use as many scales as fit, so the coarsest scale is still at least one window
    wide; the weights of the scales kept are those of Wang et al., renormalised to sum to 1.
    """
    smallest = min(height, width)
    for scales in range(len(MS_SSIM_WEIGHTS), 0, -1):
        div = max(1, scales - 1) ** 2  # MONAI's size check for the number of scales
        for kernel in (11, 9, 7):
            if smallest // div > kernel - 1 and smallest // 2 ** (scales - 1) >= kernel:
                weights = np.asarray(MS_SSIM_WEIGHTS[:scales])
                weights = tuple(float(w) for w in weights / weights.sum())
                return {"kernel_size": kernel, "kernel_sigma": 1.5 * kernel / 11, "weights": weights}
    raise ValueError(f"images of {height}x{width} px are too small for MS-SSIM (at least 7 px per side needed)")


def ms_ssim_diversity(images, n_pairs: int = 100, seed: int = 0) -> float:
    """Mean MS-SSIM over random pairs of distinct images of one set (MONAI's
    ``MultiScaleSSIMMetric``): 1 when all images are the same, lower for a more varied set.
    Compare with the same measure on the real images of the class: a synthetic class far above
    it has collapsed to few modes. NaN with fewer than 2 images.
    """
    batch = as_image_batch(images)
    n = len(batch)
    if n < 2:
        return math.nan
    rng = np.random.default_rng(seed)
    all_pairs = n * (n - 1) // 2
    if all_pairs <= n_pairs:
        first, second = np.triu_indices(n, k=1)
    else:
        first = rng.integers(0, n, size=n_pairs)
        second = (first + rng.integers(1, n, size=n_pairs)) % n  # never the image itself
    metric = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, **ms_ssim_settings(*batch.shape[-2:]))
    values = metric(batch[torch.as_tensor(first)], batch[torch.as_tensor(second)])
    return float(values.mean())


# --- memorization: nearest real image -----------------------------------------------------------


def _flat_pair(synth_images, real_images) -> tuple[torch.Tensor, torch.Tensor]:
    synth = as_image_batch(synth_images, "synth_images")
    real = as_image_batch(real_images, "real_images", allow_empty=False)
    channels, size = common_channels(synth, real), common_size(synth, real)
    flat = [
        resize_batch(match_channels(b, channels), size, mode="antialias").reshape(len(b), -1).double()
        for b in (synth, real)
    ]
    return flat[0], flat[1]


def nearest_real(
    synth_images, real_images, *, chunk_size: int = 256, exclude_self: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest real image of each synthetic image in pixel space.

    Both sets are brought to common channels (grey if either is grey) and the smaller of their
    sizes, then compared by root-mean-square intensity difference (intensities in [0, 1], so the
    distance is in the same units: 0.01 is an average difference of 1% of the range). Pixel
    space, not feature space, because a memorized image is a copy of pixels; feature distances
    would also call two different patients with the same finding "close".

    Searched in chunks of ``chunk_size`` synthetic images (one chunk's distance matrix at a time),
    so 2000 x 2000 images of 64 px need a few tens of MB.

    Args:
        exclude_self: the two sets are the same images (real-to-real distances): an image is not
            its own neighbour.

    Returns:
        ``(indices, distances)``: LongTensor (M,) into ``real_images`` and float64 RMSE (M,).
    """
    synth, real = _flat_pair(synth_images, real_images)
    if exclude_self and (len(synth) != len(real) or len(real) < 2):
        raise ValueError("exclude_self needs the same set of at least 2 images on both sides")
    real_sq = (real * real).sum(1)
    indices = torch.empty(len(synth), dtype=torch.long)
    distances = torch.empty(len(synth), dtype=torch.float64)
    for start in range(0, len(synth), chunk_size):
        block = synth[start : start + chunk_size]
        # squared distances by |a|^2 + |b|^2 - 2ab in float64: one matrix product per chunk
        sq = (block * block).sum(1, keepdim=True) + real_sq.unsqueeze(0) - 2.0 * block @ real.T
        if exclude_self:
            rows = torch.arange(len(block))
            sq[rows, rows + start] = math.inf
        nearest = sq.argmin(dim=1)
        indices[start : start + chunk_size] = nearest
        # exact distance to the chosen neighbour (the shortcut above leaves ~1e-6 for exact copies)
        distances[start : start + chunk_size] = ((block - real[nearest]) ** 2).mean(dim=1).sqrt()
    return indices, distances


def near_copy_threshold_from_real(real_images, quantile: float = 0.05) -> float:
    """The distance below which a synthetic image counts as a near copy of a real one.

    Each real train image's distance to its nearest other real image (as :func:`nearest_real`
    measures it) describes how close two genuinely different images of this dataset come; the
    ``quantile`` of those distances (default 5%) is the threshold. A synthetic image that close to
    a training image is as close as only the most similar 5% of real pairs (often the same patient
    imaged twice) and is flagged. If the dataset holds exact duplicates the threshold can be 0, and
    then only exact copies are flagged.
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"near_copy_quantile must lie in [0, 1], got {quantile}")
    _, distances = nearest_real(real_images, real_images, exclude_self=True)
    return float(np.quantile(distances.numpy(), quantile))
