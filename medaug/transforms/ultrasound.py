"""Ultrasound B-mode: multiplicative speckle in the envelope domain."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from monai.networks.layers import GaussianFilter
from scipy.special import gammaincinv, gammaln

from medaug.transforms.base import RandPhysicsTransform, RandPhysicsTransformd, as_range

__all__ = ["RandSpeckle", "RandSpeckled", "nakagami_mean"]


def nakagami_mean(m: float) -> float:
    """Mean of the unit-power Nakagami envelope ``sqrt(Gamma(m, 1/m))``: ``Gamma(m+1/2) / (Gamma(m) sqrt(m))``."""
    return math.exp(gammaln(m + 0.5) - gammaln(m)) / math.sqrt(m)


@functools.lru_cache(maxsize=32)
def _field_power(sigma: float, ndim: int) -> float:
    """``sum(k**2)`` of MONAI's Gaussian kernel: the variance left in white noise after smoothing."""
    size = int(8 * sigma) + 9
    delta = torch.zeros((1, 1) + (size,) * ndim, dtype=torch.float64)
    delta[(0, 0) + (size // 2,) * ndim] = 1.0
    kernel = GaussianFilter(ndim, sigma)(delta)
    return float((kernel**2).sum())


class RandSpeckle(RandPhysicsTransform):
    """Fully developed (Rayleigh) or partially developed (Nakagami) speckle on a B-mode image.

    Physical model: many sub-resolution scatterers per resolution cell add up to a circular complex
    Gaussian echo field (the random walk of phasors); its magnitude, the envelope, is Rayleigh
    distributed, with mean/std = sqrt(pi / (4 - pi)) ~= 1.91 in a uniform region. The field here is
    white complex Gaussian noise smoothed by a Gaussian point-spread function of ``speckle_size``
    pixels (standard deviation; 0 = one independent grain per pixel), which sets the grain size but
    keeps the Rayleigh law. Fewer or structured scatterers give Nakagami statistics of shape
    ``nakagami_m`` (m = 1 is Rayleigh; larger m, weaker speckle); the Rayleigh field is mapped to
    Nakagami by its exact cumulative distribution, so the grain size is kept. The speckle envelope
    is normalised to mean 1, so it leaves mean brightness alone.

    B-mode pixels are log-compressed envelopes: ``x = 1 + 20 log10(E / E_max) / dynamic_range_db``
    for ``x`` in [0, 1]. The transform undoes that compression (``E = 10 ** ((x - 1) *
    dynamic_range_db / 20)``), multiplies the envelope by the speckle, and compresses again
    (clipped to [0, 1], as the scanner's display is).

    Args:
        prob: probability of applying the transform.
        nakagami_m: Nakagami shape m >= 0.5 (1: Rayleigh, fully developed), number or range.
        speckle_size: standard deviation of the point-spread function in pixels (>= 0), number or range.
        dynamic_range_db: dynamic range of the log compression in dB (typically 40-80).

    References: J. W. Goodman, *Speckle Phenomena in Optics*, 2007, ch. 2; R. F. Wagner et al.,
    "Statistics of speckle in ultrasound B-scans", IEEE Trans. Sonics Ultrason. 30(3):156-163, 1983
    (mean/std 1.91); P. M. Shankar, "A general statistical model for ultrasonic backscattering from
    tissues", IEEE TUFFC 47(3):727-736, 2000 (Nakagami).
    """

    def __init__(
        self,
        prob: float = 0.1,
        nakagami_m: float | Sequence[float] = 1.0,
        speckle_size: float | Sequence[float] = 1.0,
        dynamic_range_db: float = 60.0,
    ) -> None:
        super().__init__(prob)
        self.nakagami_m = as_range(nakagami_m, "nakagami_m", 0.5)
        self.speckle_size = as_range(speckle_size, "speckle_size", 0.0)
        if not dynamic_range_db > 0:
            raise ValueError(f"dynamic_range_db: must be positive, got {dynamic_range_db!r}")
        self.dynamic_range_db = float(dynamic_range_db)

    def draw(self) -> dict:
        return {
            "nakagami_m": float(self.R.uniform(*self.nakagami_m)),
            "speckle_size": float(self.R.uniform(*self.speckle_size)),
        }

    def speckle(self, shape: Sequence[int], params: dict, generator: torch.Generator, device=None) -> torch.Tensor:
        """A unit-mean speckle envelope field of ``shape`` (C, *spatial)."""
        field = torch.randn((2, *shape), generator=generator, dtype=torch.float64, device=device)
        power, sigma = 2.0, params["speckle_size"]
        if sigma > 0:
            ndim = len(shape) - 1
            field = GaussianFilter(ndim, sigma)(field.reshape(-1, 1, *shape[1:])).reshape(2, *shape)
            power = 2.0 * _field_power(sigma, ndim)
        intensity = (field[0] ** 2 + field[1] ** 2) / power  # exponential, mean 1
        m = params["nakagami_m"]
        if m == 1.0:
            return torch.sqrt(intensity) / nakagami_mean(1.0)
        uniform = -torch.expm1(-intensity)  # the exponential's CDF
        gamma = torch.from_numpy(gammaincinv(m, uniform.cpu().numpy())).to(intensity.device) / m
        return torch.sqrt(gamma) / nakagami_mean(m)

    def apply(self, img: torch.Tensor, params: dict, generator: torch.Generator) -> torch.Tensor:
        envelope = torch.pow(10.0, (img.double() - 1.0) * self.dynamic_range_db / 20.0)
        speckled = envelope * self.speckle(img.shape, params, generator, img.device)
        return (1.0 + 20.0 * torch.log10(speckled) / self.dynamic_range_db).clamp(0.0, 1.0)


class RandSpeckled(RandPhysicsTransformd):
    """Dictionary twin of :class:`RandSpeckle` (same arguments, plus ``keys``)."""

    array_class = RandSpeckle
