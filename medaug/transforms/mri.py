"""MRI k-space artifacts MONAI lacks: rigid motion between k-space segments, and ghosting.

(MONAI has Rician noise, Gibbs ringing, k-space spikes, bias field and resolution loss; MONAI issue
#7499 points to TorchIO for motion and ghosting. These follow TorchIO's physical models in MONAI's
form.) Images are magnitude images, channel-first, 2D (C, H, W) or 3D (C, H, W, D); k-space is the
n-dimensional FFT of each channel, and the result is the magnitude of the inverse FFT.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.transforms import Affine

from medaug.transforms.base import RandPhysicsTransform, RandPhysicsTransformd, as_range, plain

__all__ = ["RandKSpaceGhosting", "RandKSpaceGhostingd", "RandKSpaceMotion", "RandKSpaceMotiond"]


def _axes(phase_encoding_axes: int | Sequence[int]) -> tuple[int, ...]:
    axes = (phase_encoding_axes,) if isinstance(phase_encoding_axes, int) else tuple(phase_encoding_axes)
    if not axes or any(int(a) < 0 for a in axes):
        raise ValueError(f"phase_encoding_axes: expected spatial axis indices >= 0, got {phase_encoding_axes!r}")
    return tuple(int(a) for a in axes)


def _check_axis(axis: int, img: torch.Tensor) -> int:
    if axis >= img.ndim - 1:
        raise ValueError(
            f"phase_encoding_axes: axis {axis} does not exist in a {img.ndim - 1}D image of shape {tuple(img.shape)}"
        )
    return axis


class RandKSpaceMotion(RandPhysicsTransform):
    """Rigid patient motion during the acquisition, simulated in k-space.

    Physical model: k-space lines are acquired one after another along the phase-encoding axis
    (sequential ordering), so a patient who moves ``num_movements`` times splits k-space into
    segments, each acquired in a different pose. Each pose is a rigid transform (rotation of up to
    ``degrees``, translation of up to ``translation`` pixels per axis, via MONAI's ``Affine``); the
    k-space lines of a segment are taken from the Fourier transform of the image in that segment's
    pose. The segment holding the centre of k-space keeps the original pose (it fixes contrast and
    position), so the other poses show as ghosts, blurring and edge ringing along the
    phase-encoding axis, as in real motion-corrupted scans. Movement times are uniform over the
    acquisition.

    Args:
        prob: probability of applying the transform.
        num_movements: number of movements (whole number >= 1), number or (min, max) range.
        degrees: rotation range in degrees, number ``d`` (uniform in [-d, d]) or (min, max); 3D
            images rotate about each axis.
        translation: translation range in pixels, number or (min, max), per spatial axis.
        phase_encoding_axes: spatial axes that may be the phase-encoding direction (one is chosen).

    Reference: R. Shaw et al., "MRI k-space motion artefact augmentation: model robustness and
    task-specific uncertainty", MIDL 2019 (PMLR 102:427-436); TorchIO ``RandomMotion`` (F.
    Pérez-García et al., Comput. Methods Programs Biomed. 208:106236, 2021).
    """

    def __init__(
        self,
        prob: float = 0.1,
        num_movements: int | Sequence[int] = (1, 2),
        degrees: float | Sequence[float] = 5.0,
        translation: float | Sequence[float] = 5.0,
        phase_encoding_axes: int | Sequence[int] = (0, 1),
    ) -> None:
        super().__init__(prob)
        self.num_movements = tuple(int(v) for v in as_range(num_movements, "num_movements", 1))
        self.degrees = as_range(
            degrees if not isinstance(degrees, (int, float)) else (-abs(degrees), abs(degrees)), "degrees"
        )
        self.translation = as_range(
            translation if not isinstance(translation, (int, float)) else (-abs(translation), abs(translation)),
            "translation",
        )
        self.phase_encoding_axes = _axes(phase_encoding_axes)

    def draw(self) -> dict:
        count = int(self.R.randint(self.num_movements[0], self.num_movements[1] + 1))
        return {
            "axis": int(self.phase_encoding_axes[self.R.randint(len(self.phase_encoding_axes))]),
            "times": sorted(float(t) for t in self.R.uniform(0.0, 1.0, size=count)),
            "rotations": [float(v) for v in self.R.uniform(*self.degrees, size=(count + 1) * 3)],
            "translations": [float(v) for v in self.R.uniform(*self.translation, size=(count + 1) * 3)],
        }

    def apply(self, img: torch.Tensor, params: dict, generator: torch.Generator) -> torch.Tensor:
        axis = _check_axis(params["axis"], img)
        ndim = img.ndim - 1
        lines = img.shape[axis + 1]
        bounds = [0, *[int(round(t * lines)) for t in params["times"]], lines]
        spatial = tuple(range(1, img.ndim))
        kspace = torch.zeros(img.shape, dtype=torch.complex128, device=img.device)
        for segment, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
            if stop <= start:
                continue
            if start <= lines // 2 < stop:
                posed = img
            else:
                n_rot = 1 if ndim == 2 else 3
                rotate = [math.radians(a) for a in params["rotations"][segment * 3 : segment * 3 + n_rot]]
                shift = params["translations"][segment * 3 : segment * 3 + ndim]
                affine = Affine(rotate_params=rotate, translate_params=shift, padding_mode="zeros", image_only=True)
                posed = plain(affine(img))
            spectrum = torch.fft.fftshift(torch.fft.fftn(posed.double(), dim=spatial), dim=spatial)
            index = [slice(None)] * img.ndim
            index[axis + 1] = slice(start, stop)
            kspace[tuple(index)] = spectrum[tuple(index)]
        return torch.fft.ifftn(torch.fft.ifftshift(kspace, dim=spatial), dim=spatial).abs()


class RandKSpaceGhosting(RandPhysicsTransform):
    """Ghosting: faint replicas of the anatomy along the phase-encoding axis.

    Physical model: periodic motion (breathing, pulsation) or inconsistencies between interleaved
    acquisitions perturb k-space lines periodically. Here every ``num_ghosts``-th line along the
    phase-encoding axis (those with index divisible by ``num_ghosts`` in FFT order, the centre line
    included) is scaled by ``1 - intensity``. By the shift theorem this equals the image minus
    ``intensity / num_ghosts`` times the sum of ``num_ghosts`` copies shifted by multiples of
    ``N / num_ghosts`` pixels (N: lines along the axis): ghosts at exactly the k-space period.
    As in TorchIO, the central ``restore_center`` fraction of k-space lines is left unmodulated
    (the centre is acquired while the patient is still, and it keeps the image's mean intensity);
    with ``restore_center=0`` the shift-theorem relation above is exact.

    Args:
        prob: probability of applying the transform.
        num_ghosts: modulation period in lines = number of ghosts (whole number >= 2), number or range.
        intensity: modulation depth in [0, 1], number or range.
        phase_encoding_axes: spatial axes that may be the phase-encoding direction (one is chosen).
        restore_center: fraction of k-space lines around the centre left unmodulated, in [0, 1).

    Reference: TorchIO ``RandomGhosting`` (Pérez-García et al., 2021); M. A. Bernstein, K. F. King,
    X. J. Zhou, *Handbook of MRI Pulse Sequences*, 2004, sec. 11 (ghosting from periodic k-space
    modulation); Z.-P. Liang, P. C. Lauterbur, *Principles of Magnetic Resonance Imaging*, 2000.
    """

    def __init__(
        self,
        prob: float = 0.1,
        num_ghosts: int | Sequence[int] = (2, 6),
        intensity: float | Sequence[float] = (0.3, 0.8),
        phase_encoding_axes: int | Sequence[int] = (0, 1),
        restore_center: float = 0.02,
    ) -> None:
        super().__init__(prob)
        if not 0 <= restore_center < 1:
            raise ValueError(f"restore_center: must be in [0, 1), got {restore_center!r}")
        self.restore_center = float(restore_center)
        self.num_ghosts = tuple(int(v) for v in as_range(num_ghosts, "num_ghosts", 2))
        self.intensity = as_range(intensity, "intensity", 0.0, 1.0)
        self.phase_encoding_axes = _axes(phase_encoding_axes)

    def draw(self) -> dict:
        return {
            "axis": int(self.phase_encoding_axes[self.R.randint(len(self.phase_encoding_axes))]),
            "num_ghosts": int(self.R.randint(self.num_ghosts[0], self.num_ghosts[1] + 1)),
            "intensity": float(self.R.uniform(*self.intensity)),
        }

    def apply(self, img: torch.Tensor, params: dict, generator: torch.Generator) -> torch.Tensor:
        axis = _check_axis(params["axis"], img)
        spatial = tuple(range(1, img.ndim))
        kspace = torch.fft.fftn(img.double(), dim=spatial)
        lines = img.shape[axis + 1]
        frequency = torch.fft.fftfreq(lines, d=1.0 / lines, device=img.device).abs()  # line index from the centre
        modulated = torch.arange(lines, device=img.device) % params["num_ghosts"] == 0
        if self.restore_center > 0:
            modulated &= frequency > self.restore_center * lines / 2
        factor = torch.where(modulated, 1.0 - params["intensity"], 1.0).to(kspace.real.dtype)
        shape = [1] * img.ndim
        shape[axis + 1] = lines
        kspace = kspace * factor.view(shape)
        return torch.fft.ifftn(kspace, dim=spatial).abs()


class RandKSpaceMotiond(RandPhysicsTransformd):
    """Dictionary twin of :class:`RandKSpaceMotion` (same arguments, plus ``keys``)."""

    array_class = RandKSpaceMotion


class RandKSpaceGhostingd(RandPhysicsTransformd):
    """Dictionary twin of :class:`RandKSpaceGhosting` (same arguments, plus ``keys``)."""

    array_class = RandKSpaceGhosting
