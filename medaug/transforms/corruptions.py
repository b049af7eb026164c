"""Graded acquisition corruptions for robustness evaluation: the shifts a deployed model meets.

A corruption is a named, deterministic degradation at five severities (1 mild .. 5 severe; 0 is the
identity), each severity a documented physical parameter. Two families:

- **physics**, from medaug's own acquisition models with the random range pinned to one value:
  X-ray quantum noise at a dose fraction and scatter (:mod:`.xray`), CT projection-domain low dose
  (:mod:`.ct`), ultrasound speckle (:mod:`.ultrasound`) and receive gain, MRI Rician noise (MONAI's
  ``RandRicianNoise``), k-space motion and ghosting (:mod:`.mri`);
- **acquisition pipeline**, what storage and display do to clinical images: JPEG compression
  (Pillow's codec), pixelation, resolution loss, defocus (pill-box) and motion (line) blur,
  brightness, contrast and gamma. MONAI has no JPEG round trip, pill-box or line point-spread
  function, so these are written here; resampling is torch's ``interpolate`` (as in MONAI's ``Resize``).

The images are the bundle's preprocessed test images (display values in [0, 1]); every corrupted
image is clipped back to [0, 1], as a stored or displayed image would be. Blur and pixel sizes are
fractions of the image side, so a 28 px and a 64 px image of the same scan are degraded alike.

Randomness (noise fields, motion timing, blur direction) comes from the transform's random state
only, and :class:`Corruptd` seeds it from the image's own reference (file name and frame), the
corruption's name and a suite seed, **not** from the severity: the same test image gets the same
corruption for every model compared and in any order, and within an image the severities differ
only in magnitude. The suite of each modality preset is the ``corruptions`` list of its YAML
(:func:`suite_for`).

References: D. Hendrycks, T. Dietterich, "Benchmarking neural network robustness to common
corruptions and perturbations", ICLR 2019 (five graded severities, mean corruption error); Bushberg
et al., *The Essential Physics of Medical Imaging*, 3rd ed. (dose, scatter, blur); G. K. Wallace,
"The JPEG still picture compression standard", IEEE Trans. Consum. Electron. 38(1), 1992.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, Randomizable, RandRicianNoise, Transform
from monai.utils import MAX_SEED, convert_to_dst_type, convert_to_tensor

from medaug.transforms.base import plain
from medaug.transforms.ct import RandLowDoseCT
from medaug.transforms.mri import RandKSpaceGhosting, RandKSpaceMotion
from medaug.transforms.ultrasound import RandSpeckle
from medaug.transforms.xray import RandQuantumNoise, RandXrayScatter

__all__ = [
    "CORRUPTIONS",
    "DEFAULT_SUITE",
    "SEVERITIES",
    "Corrupt",
    "Corruptd",
    "Corruption",
    "CorruptionError",
    "image_seed",
    "suite_for",
]

SEVERITIES = (1, 2, 3, 4, 5)

Apply = Callable[[torch.Tensor, float, np.random.RandomState], torch.Tensor]


class CorruptionError(ValueError):
    """An unknown corruption or severity (the message lists the valid ones)."""


@dataclass(frozen=True)
class Corruption:
    """One graded corruption: ``levels[k - 1]`` is the physical parameter at severity ``k``."""

    name: str
    family: str  # "physics" or "acquisition"
    parameter: str  # what ``levels`` are, with the unit
    levels: tuple[float, ...]
    grows: str  # the measurable property that grows (or falls) with severity
    apply: Apply

    def describe(self, severity: int) -> str:
        """``"dose fraction 0.25"``: the parameter of one severity (``"clean"`` at 0)."""
        return "clean" if severity == 0 else f"{self.parameter} {self.levels[severity - 1]:g}"


def _seed(rng: np.random.RandomState) -> int:
    return int(rng.randint(0, 2**31 - 1))


def _physics(transform) -> Apply:
    """Run a medaug/MONAI random transform built at one fixed parameter (once per level), drawing
    from ``rng`` itself: the corruption's random state is the transform's."""
    built: dict[float, Randomizable] = {}

    def apply(img, level, rng):
        if level not in built:  # setdefault would build a new transform on every call
            built[level] = transform(level)
        t = built[level]
        t.set_random_state(state=rng)
        return plain(convert_to_tensor(t(img)))

    return apply


def _gain_db(img, level, rng):
    # B-mode pixels are log-compressed envelopes over a 60 dB display range: a receive gain change of
    # G dB shifts every pixel by G / 60 (what the scanner's gain knob does before the display clips)
    return img + level / 60.0


def _brightness(img, level, rng):
    return img - level


def _contrast(img, level, rng):
    mean = img.mean(dim=tuple(range(1, img.ndim)), keepdim=True)
    return mean + level * (img - mean)


def _gamma(img, level, rng):
    return img.clamp(0.0, 1.0) ** level


def _gaussian_noise(img, level, rng):
    generator = torch.Generator().manual_seed(_seed(rng))
    return img + level * torch.randn(img.shape, generator=generator, dtype=torch.float32).to(img)


def _resample(img: torch.Tensor, zoom: float, up_mode: str) -> torch.Tensor:
    # torch's interpolation, which MONAI's Resize calls too, without its MetaTensor bookkeeping
    spatial = tuple(img.shape[1:])
    small = [max(1, round(s * zoom)) for s in spatial]
    down = F.interpolate(img[None].float(), size=small, mode="area")
    align = {"align_corners": False} if up_mode == "bilinear" else {}
    return F.interpolate(down, size=spatial, mode=up_mode, **align)[0].to(img.dtype)


def _resolution(img, level, rng):
    # a coarser acquisition matrix / thicker detector element: area-averaged down, interpolated back
    return _resample(img, level, "bilinear")


def _pixelate(img, level, rng):
    # a coarser stored matrix shown without interpolation (blocks), as a low-resolution export looks
    return _resample(img, level, "nearest")


def _convolve(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """2D convolution of every channel with ``kernel`` (odd size, sums to 1), edges replicated."""
    k = kernel.shape[-1] // 2
    x = F.pad(img.float()[:, None], (k, k, k, k), mode="replicate")
    return F.conv2d(x, kernel.float()[None, None].to(img.device))[:, 0].to(img.dtype)


def _supersampled(radius: float, inside: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> torch.Tensor:
    """A kernel whose weights are the area of each pixel covered by a shape (8 x 8 sub-samples per
    pixel), so a sub-pixel radius still blurs a little instead of rounding to the identity."""
    half = int(math.ceil(radius)) + 1
    sub = (np.arange(8) + 0.5) / 8 - 0.5
    coords = np.arange(-half, half + 1)
    fine = (coords[:, None] + sub[None, :]).reshape(-1)
    yy, xx = np.meshgrid(fine, fine, indexing="ij")
    covered = inside(yy, xx).astype(np.float64).reshape(2 * half + 1, 8, 2 * half + 1, 8).mean(axis=(1, 3))
    return torch.from_numpy(covered / covered.sum())


def _defocus(img, level, rng):
    # pill-box point-spread function of an out-of-focus aperture, radius = level x image side
    radius = max(level * max(img.shape[1:]), 0.25)
    return _convolve(img, _supersampled(radius, lambda y, x: y**2 + x**2 <= radius**2))


def _motion(img, level, rng):
    # uniform linear motion during the exposure: a line point-spread function of length
    # level x image side, in a direction drawn per image (the same at every severity)
    length = max(level * max(img.shape[1:]), 0.5)
    angle = rng.uniform(0.0, math.pi)
    dy, dx = math.sin(angle), math.cos(angle)

    def on_line(y, x):
        along = y * dy + x * dx
        across = -y * dx + x * dy
        return (np.abs(along) <= length / 2) & (np.abs(across) <= 0.5)

    return _convolve(img, _supersampled(length / 2, on_line))


def _jpeg(img, level, rng):
    """Pillow's baseline JPEG round trip at quality ``level`` (8-bit, as a PACS export or a
    screenshot stores it); a 3-channel image is coded as RGB, other channels one by one."""
    from PIL import Image

    pixels = (img.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu().numpy()
    planes = [pixels.transpose(1, 2, 0)] if pixels.shape[0] == 3 else list(pixels)
    out = []
    for plane in planes:
        buffer = io.BytesIO()
        Image.fromarray(plane).save(buffer, format="JPEG", quality=int(level))
        out.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue()))))
    decoded = out[0].transpose(2, 0, 1) if pixels.shape[0] == 3 else np.stack(out)
    return torch.from_numpy(decoded.astype(np.float32) / 255.0).to(img.device)


def _ct_dose(level):
    # the CT preset's convention: pixels are the [-1000, 1000] HU window mapped to [0, 1]
    return RandLowDoseCT(prob=1.0, dose_fraction=level, hu_window=(-1000.0, 1000.0))


CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        Corruption(
            "xray_dose",
            "physics",
            "dose fraction",
            (0.5, 0.25, 0.12, 0.06, 0.03),
            "noise std (grows as 1/sqrt(dose))",
            _physics(lambda v: RandQuantumNoise(prob=1.0, dose_fraction=v, electronic_noise_std=2.0)),
        ),
        Corruption(
            "xray_scatter",
            "physics",
            "scatter-to-primary ratio",
            (0.25, 0.5, 0.8, 1.2, 1.8),
            "distance from the clean image (a low-frequency veil, lower contrast)",
            _physics(lambda v: RandXrayScatter(prob=1.0, scatter_to_primary=v, kernel_fraction=0.1)),
        ),
        Corruption(
            "ct_dose",
            "physics",
            "dose fraction",
            (0.5, 0.25, 0.12, 0.06, 0.03),
            "noise std (streaks; grows as 1/sqrt(dose))",
            _physics(_ct_dose),
        ),
        Corruption(
            "speckle",
            "physics",
            "Nakagami m (1 = fully developed)",
            (6.0, 3.0, 1.5, 1.0, 0.7),
            "noise std (stronger speckle as m falls)",
            _physics(lambda v: RandSpeckle(prob=1.0, nakagami_m=v, speckle_size=1.0, dynamic_range_db=60.0)),
        ),
        Corruption(
            "us_gain",
            "physics",
            "receive gain change, dB (60 dB display range)",
            (-3.0, -6.0, -9.0, -12.0, -18.0),
            "darkness (mean falls)",
            _gain_db,
        ),
        Corruption(
            "mri_noise",
            "physics",
            "Rician noise std (fraction of full scale)",
            (0.02, 0.04, 0.06, 0.09, 0.12),
            "noise std",
            _physics(lambda v: RandRicianNoise(prob=1.0, mean=0.0, std=v, relative=False, sample_std=False)),
        ),
        Corruption(
            "mri_motion",
            "physics",
            "movements during the scan (each up to 4 degrees and 2 px)",
            (1, 2, 4, 8, 16),
            "distance from the clean image (more of k-space from moved poses: ghosts, blur)",
            _physics(lambda v: RandKSpaceMotion(prob=1.0, num_movements=int(v), degrees=4.0, translation=2.0)),
        ),
        Corruption(
            "mri_ghosting",
            "physics",
            "ghost intensity",
            (0.1, 0.2, 0.35, 0.5, 0.7),
            "distance from the clean image",
            _physics(lambda v: RandKSpaceGhosting(prob=1.0, num_ghosts=4, intensity=v)),
        ),
        Corruption(
            "gaussian_noise",
            "acquisition",
            "additive Gaussian noise std",
            (0.02, 0.04, 0.06, 0.08, 0.12),
            "noise std",
            _gaussian_noise,
        ),
        Corruption(
            "defocus_blur",
            "acquisition",
            "pill-box radius (fraction of the image side)",
            (0.02, 0.03, 0.045, 0.065, 0.09),
            "blur width (gradient energy falls)",
            _defocus,
        ),
        Corruption(
            "motion_blur",
            "acquisition",
            "motion length (fraction of the image side)",
            (0.05, 0.08, 0.12, 0.16, 0.22),
            "blur width (gradient energy falls)",
            _motion,
        ),
        Corruption(
            "resolution",
            "acquisition",
            "matrix scale (area down, bilinear up)",
            (0.7, 0.5, 0.4, 0.3, 0.2),
            "lost detail (gradient energy falls)",
            _resolution,
        ),
        Corruption(
            "pixelate",
            "acquisition",
            "matrix scale (area down, nearest up)",
            (0.6, 0.45, 0.35, 0.25, 0.18),
            "block size",
            _pixelate,
        ),
        Corruption(
            "jpeg",
            "acquisition",
            "JPEG quality",
            (75.0, 50.0, 30.0, 15.0, 7.0),
            "compression (file size falls)",
            _jpeg,
        ),
        Corruption(
            "brightness",
            "acquisition",
            "brightness shift (fraction of full scale, darker)",
            (0.05, 0.1, 0.15, 0.2, 0.3),
            "darkness (mean falls)",
            _brightness,
        ),
        Corruption(
            "contrast",
            "acquisition",
            "contrast factor about the image mean",
            (0.8, 0.6, 0.45, 0.3, 0.2),
            "flatness (std falls)",
            _contrast,
        ),
        Corruption(
            "gamma",
            "acquisition",
            "display gamma",
            (1.2, 1.4, 1.7, 2.0, 2.5),
            "darker mid-tones (mean falls)",
            _gamma,
        ),
    )
}

# the acquisition-pipeline corruptions every modality meets; a preset without a ``corruptions``
# list (generic, none, a user's YAML) is scored on these
DEFAULT_SUITE = (
    "gaussian_noise",
    "defocus_blur",
    "motion_blur",
    "resolution",
    "pixelate",
    "jpeg",
    "brightness",
    "contrast",
    "gamma",
)


def _unknown(name, known: Sequence[str]) -> CorruptionError:
    from medaug.settings import did_you_mean

    guess = did_you_mean(name, list(known))
    hint = f"; did you mean {guess!r}?" if guess else "."
    return CorruptionError(f"unknown corruption {name!r}{hint} Known: {', '.join(known)}")


def get_corruption(name: str) -> Corruption:
    if name not in CORRUPTIONS:
        raise _unknown(name, list(CORRUPTIONS))
    return CORRUPTIONS[name]


def suite_for(preset: str, corruptions: Sequence[str] | None = None) -> list[Corruption]:
    """The corruption suite of a modality preset (its YAML's ``corruptions`` list, else
    :data:`DEFAULT_SUITE`), or the named ``corruptions`` when given (each checked)."""
    if corruptions is None:
        from medaug.transforms.presets import load_preset

        spec, _ = load_preset(preset)
        corruptions = spec.get("corruptions") or DEFAULT_SUITE
    if isinstance(corruptions, str):
        corruptions = [corruptions]
    return [get_corruption(str(name)) for name in corruptions]


def image_seed(reference: str, corruption: str, seed: int = 0) -> int:
    """Seed of one test image's corruption: a CRC of (suite seed, corruption, image reference), so
    it is the same for every model and in any order, and the same at every severity."""
    return zlib.crc32(f"{int(seed)}|{corruption}|{reference}".encode()) & 0x7FFFFFFF


class Corrupt(Randomizable, Transform):
    """Apply one corruption of :data:`CORRUPTIONS` at a severity to a (C, H, W) image in [0, 1].

    Deterministic under ``set_random_state``: call it, with the same state, twice and the result is
    identical. Severity 0 returns the image unchanged. The result is clipped to [0, 1] and keeps the
    input's type, dtype and meta.

    Args:
        corruption: a name of :data:`CORRUPTIONS` (e.g. ``"jpeg"``, ``"xray_dose"``).
        severity: 0 (identity) to 5.
    """

    def __init__(self, corruption: str, severity: int) -> None:
        self.corruption = get_corruption(corruption)
        if int(severity) != severity or not 0 <= severity <= len(self.corruption.levels):
            raise CorruptionError(
                f"{corruption}: severity must be an integer 0..{len(self.corruption.levels)}, got {severity!r}"
            )
        self.severity = int(severity)

    def randomize(self, data=None) -> None:  # every draw happens inside the corruption, from self.R
        pass

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> Corrupt:
        """As MONAI's, but an integer seed re-seeds the existing state instead of building a new
        ``RandomState`` (a tenth of a millisecond per test image, for every cell of a suite)."""
        if isinstance(seed, (int, np.integer)) and state is None:
            self.R.seed(int(seed) % MAX_SEED)
            return self
        return super().set_random_state(seed, state)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        # a plain tensor stays plain (the robustness evaluation's fast path: no meta bookkeeping)
        bare = isinstance(img, torch.Tensor) and not isinstance(img, MetaTensor)
        img_t = img if bare else convert_to_tensor(img, track_meta=get_track_meta())
        if self.severity == 0:
            return img_t
        level = self.corruption.levels[self.severity - 1]
        out = self.corruption.apply(plain(img_t).float(), level, self.R).clamp(0.0, 1.0).to(img_t.dtype)
        return out if bare else convert_to_dst_type(out, dst=img_t)[0]


def reference_of(image) -> str:
    """The reference a test image is seeded by, from its MetaTensor meta: the last two parts of its
    path (``data/breastmnist_64.npz#test/12``, ``malignant/case7.dcm``) and its frame, so the seed
    does not change with where the dataset is stored."""
    meta = getattr(image, "meta", {}) or {}
    path, hash_, inside = str(meta.get("filename_or_obj", "")).replace("\\", "/").partition("#")
    ref = "/".join(path.split("/")[-2:]) + hash_ + inside  # an archive member's own name kept whole
    frame = meta.get("frame")
    return ref if frame is None else f"{ref}#{frame}"


class Corruptd(MapTransform):
    """Dictionary twin of :class:`Corrupt`: each image is seeded by :func:`image_seed` from its own
    reference (``filename_or_obj`` and ``frame`` of its meta), the corruption and ``seed``, so a
    test image is corrupted identically for every model and in any order.

    Args:
        keys: keys of the images to corrupt.
        corruption, severity: as :class:`Corrupt`.
        seed: the suite's seed.
    """

    def __init__(
        self, keys: KeysCollection, corruption: str, severity: int, seed: int = 0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = Corrupt(corruption, severity)
        self.seed = int(seed)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            reference = reference_of(d[key])
            self.transform.set_random_state(image_seed(reference, self.transform.corruption.name, self.seed))
            d[key] = self.transform(d[key])
        return d
