"""Projection radiography (CR / DX): quantum noise at a dose fraction, exposure, and scatter.

All three read a normalised radiograph ``x`` in [0, 1] in display convention (bright = strongly
attenuating, as :mod:`medaug.io.readers` delivers MONOCHROME1 and MONOCHROME2 alike) as line
integrals of attenuation, ``p = x * max_line_integral`` (Beer-Lambert: the detector sees
``I = I0 * exp(-p)``), change the physics in the transmitted-intensity domain, and map back the
same way. ``max_line_integral`` (dimensionless, ln units) is the attenuation of the brightest
pixel: 3 means 5% of the photons get through the densest part of the image.

MONAI has Gaussian and Rician noise, but no Poisson photon statistics, exposure or scatter model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms import GaussianSmooth

from medaug.transforms.base import RandPhysicsTransform, RandPhysicsTransformd, as_range, plain

__all__ = [
    "RandQuantumNoise",
    "RandQuantumNoised",
    "RandXrayExposure",
    "RandXrayExposured",
    "RandXrayScatter",
    "RandXrayScatterd",
]


def _check_positive(value: float, name: str) -> float:
    if not value > 0:
        raise ValueError(f"{name}: must be positive, got {value!r}")
    return float(value)


class RandQuantumNoise(RandPhysicsTransform):
    """Quantum (photon-counting) noise of a radiograph taken at a fraction of the original dose.

    Physical model: the image holds line integrals ``p = x * max_line_integral``. A detector element
    behind ``p`` expects ``lambda = dose_fraction * incident_photons * exp(-p)`` photons; it counts
    ``N ~ Poisson(lambda)`` plus Gaussian electronic noise of ``electronic_noise_std`` counts, and the
    log transform of the detector chain gives ``p' = -ln(N / (dose_fraction * incident_photons))``.
    For large counts ``Var(p') ~= 1 / lambda``: the variance grows as 1/dose, which is why a quarter
    dose image looks twice as noisy (in standard deviation). Counts are floored at 0.5 before the
    log (an empty detector element is not minus infinity).

    The input is treated as noise free: the result carries the original image's own noise plus that
    of an acquisition at ``dose_fraction * incident_photons``.

    Args:
        prob: probability of applying the transform.
        dose_fraction: fraction of the reference dose (0, 1], a number or a (min, max) range drawn
            uniformly. Dose scales with tube current-time product (mAs).
        incident_photons: unattenuated photons per detector element at the reference dose
            (order 1e3-1e5 for digital radiography).
        max_line_integral: attenuation ``p`` (ln units) of a pixel of value 1.
        electronic_noise_std: standard deviation of the additive electronic noise, in photon counts.

    Reference: J. T. Bushberg et al., *The Essential Physics of Medical Imaging*, 3rd ed., ch. 4
    (Poisson statistics of x-ray quanta) and ch. 7; H. H. Barrett, K. J. Myers, *Foundations of
    Image Science*, ch. 11 (noise in photon counting).
    """

    def __init__(
        self,
        prob: float = 0.1,
        dose_fraction: float | Sequence[float] = (0.25, 1.0),
        incident_photons: float = 1e4,
        max_line_integral: float = 3.0,
        electronic_noise_std: float = 0.0,
    ) -> None:
        super().__init__(prob)
        self.dose_fraction = as_range(dose_fraction, "dose_fraction", 1e-6, 1.0)
        self.incident_photons = _check_positive(incident_photons, "incident_photons")
        self.max_line_integral = _check_positive(max_line_integral, "max_line_integral")
        if electronic_noise_std < 0:
            raise ValueError(f"electronic_noise_std: must be >= 0, got {electronic_noise_std!r}")
        self.electronic_noise_std = float(electronic_noise_std)

    def draw(self) -> dict:
        return {"dose_fraction": float(self.R.uniform(*self.dose_fraction))}

    def apply(self, img: torch.Tensor, params: dict, generator: torch.Generator) -> torch.Tensor:
        blank = params["dose_fraction"] * self.incident_photons
        line_integrals = img.double() * self.max_line_integral
        expected = blank * torch.exp(-line_integrals)
        counts = torch.poisson(expected, generator=generator)
        if self.electronic_noise_std > 0:
            counts = counts + self.electronic_noise_std * torch.randn(
                counts.shape, generator=generator, dtype=counts.dtype, device=counts.device
            )
        noisy = -torch.log(counts.clamp_min(0.5) / blank)
        return noisy / self.max_line_integral


class RandXrayExposure(RandPhysicsTransform):
    """A different exposure of the same patient: tube output (mAs), beam energy (kVp) and detector
    response.

    Physical model, on the line integrals ``p = x * max_line_integral``:

    - **mAs**: ``mas_factor`` times the photons scales the transmitted intensity by that factor, so
      the log signal shifts: ``p -> p - ln(mas_factor)`` (more exposure, darker film).
    - **kVp**: attenuation coefficients of soft tissue and bone fall with photon energy and move closer
      together, so a harder beam lowers subject contrast: ``p -> contrast * p`` with ``contrast < 1``
      for a higher kVp (photoelectric absorption falls roughly as E^-3).
    - **detector / display response**: a gamma curve ``x -> x ** gamma`` on the result clipped to [0, 1].

    Args:
        prob: probability of applying the transform.
        mas_factor: ratio of tube current-time product to the original's (> 0), number or range.
        contrast: subject-contrast factor standing for a kVp change (> 0), number or range.
        gamma: display gamma (> 0), number or range.
        max_line_integral: attenuation ``p`` (ln units) of a pixel of value 1.

    Reference: Bushberg et al., *The Essential Physics of Medical Imaging*, 3rd ed., ch. 6-7 (x-ray
    production, mAs and kVp, subject contrast, characteristic curve).
    """

    def __init__(
        self,
        prob: float = 0.1,
        mas_factor: float | Sequence[float] = (0.8, 1.25),
        contrast: float | Sequence[float] = (0.9, 1.1),
        gamma: float | Sequence[float] = (0.85, 1.15),
        max_line_integral: float = 3.0,
    ) -> None:
        super().__init__(prob)
        self.mas_factor = as_range(mas_factor, "mas_factor", 1e-3)
        self.contrast = as_range(contrast, "contrast", 1e-3)
        self.gamma = as_range(gamma, "gamma", 1e-3)
        self.max_line_integral = _check_positive(max_line_integral, "max_line_integral")

    def draw(self) -> dict:
        return {
            "mas_factor": float(self.R.uniform(*self.mas_factor)),
            "contrast": float(self.R.uniform(*self.contrast)),
            "gamma": float(self.R.uniform(*self.gamma)),
        }

    def apply(self, img: torch.Tensor, params: dict, generator: torch.Generator) -> torch.Tensor:
        line_integrals = params["contrast"] * img * self.max_line_integral
        line_integrals = line_integrals - torch.log(torch.tensor(params["mas_factor"], dtype=img.dtype))
        return (line_integrals / self.max_line_integral).clamp(0.0, 1.0) ** params["gamma"]


class RandXrayScatter(RandPhysicsTransform):
    """Scattered radiation: a low-frequency haze added to the primary beam, which lowers contrast.

    Physical model: primary intensity ``P = exp(-p)`` with ``p = x * max_line_integral``; scatter is
    the primary blurred by a wide Gaussian kernel (scatter point-spread functions are broad and
    smooth), scaled so that its mean is ``scatter_to_primary`` times the primary's mean:
    ``S = SPR * blur(P)``; the detector sees ``P + S`` and the image is ``-ln(P + S) /
    max_line_integral``. Typical scatter-to-primary ratios: 0.1-0.3 behind an anti-scatter grid,
    0.5-1.5 without one (thick body parts). The kernel's standard deviation is
    ``kernel_fraction`` times each image side (in pixels); blurring is MONAI's ``GaussianSmooth``.

    Args:
        prob: probability of applying the transform.
        scatter_to_primary: scatter-to-primary ratio SPR (>= 0), number or range.
        kernel_fraction: scatter kernel sigma as a fraction of the image side, number or range.
        max_line_integral: attenuation ``p`` (ln units) of a pixel of value 1.

    Reference: J. M. Boone, J. A. Seibert, "An analytical model of the scattered radiation
    distribution in diagnostic radiology", Med. Phys. 15(5):721-725, 1988; Bushberg et al. ch. 7.
    """

    def __init__(
        self,
        prob: float = 0.1,
        scatter_to_primary: float | Sequence[float] = (0.1, 0.5),
        kernel_fraction: float | Sequence[float] = (0.05, 0.15),
        max_line_integral: float = 3.0,
    ) -> None:
        super().__init__(prob)
        self.scatter_to_primary = as_range(scatter_to_primary, "scatter_to_primary", 0.0)
        self.kernel_fraction = as_range(kernel_fraction, "kernel_fraction", 1e-3, 1.0)
        self.max_line_integral = _check_positive(max_line_integral, "max_line_integral")

    def draw(self) -> dict:
        return {
            "scatter_to_primary": float(self.R.uniform(*self.scatter_to_primary)),
            "kernel_fraction": float(self.R.uniform(*self.kernel_fraction)),
        }

    def apply(self, img: torch.Tensor, params: dict, generator: torch.Generator) -> torch.Tensor:
        primary = torch.exp(-img * self.max_line_integral)
        spatial = img.shape[1:]
        sigma = [params["kernel_fraction"] * s for s in spatial]
        # scatter has no fine detail: blur a copy at 1/f resolution (f ~ sigma / 4) and interpolate back,
        # differs from the full-resolution blur by 0.3% of the grey range on average (1.5% at most), at 1/4 the cost
        factor = max(1, int(min(sigma) // 4))
        coarse = (
            torch.nn.functional.avg_pool2d(primary[None], factor)
            if factor > 1 and img.ndim == 3
            else (torch.nn.functional.avg_pool3d(primary[None], factor) if factor > 1 else primary[None])
        )
        blurred = plain(GaussianSmooth(sigma=[sg / factor for sg in sigma])(coarse[0]))
        if factor > 1:
            mode = "bilinear" if img.ndim == 3 else "trilinear"
            blurred = torch.nn.functional.interpolate(blurred[None], size=spatial, mode=mode, align_corners=False)[0]
        blurred = blurred * (primary.mean() / blurred.mean().clamp_min(1e-12))  # the kernel keeps the mean
        detected = primary + params["scatter_to_primary"] * blurred
        return -torch.log(detected) / self.max_line_integral


class RandQuantumNoised(RandPhysicsTransformd):
    """Dictionary twin of :class:`RandQuantumNoise` (same arguments, plus ``keys``)."""

    array_class = RandQuantumNoise


class RandXrayExposured(RandPhysicsTransformd):
    """Dictionary twin of :class:`RandXrayExposure` (same arguments, plus ``keys``)."""

    array_class = RandXrayExposure


class RandXrayScatterd(RandPhysicsTransformd):
    """Dictionary twin of :class:`RandXrayScatter` (same arguments, plus ``keys``)."""

    array_class = RandXrayScatter
