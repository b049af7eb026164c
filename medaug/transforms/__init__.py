"""Transforms MONAI lacks (physics-informed noise and artifacts) and the modality presets that
compose them with MONAI's own transforms (``medaug.transforms.presets``), and a ``Compose`` that runs
them with fewer PyTorch threads (:mod:`.threads`)."""

from medaug.transforms.ct import RandLowDoseCT, RandLowDoseCTd
from medaug.transforms.mri import RandKSpaceGhosting, RandKSpaceGhostingd, RandKSpaceMotion, RandKSpaceMotiond
from medaug.transforms.threads import ThreadLimitedCompose
from medaug.transforms.ultrasound import RandSpeckle, RandSpeckled
from medaug.transforms.xray import (
    RandQuantumNoise,
    RandQuantumNoised,
    RandXrayExposure,
    RandXrayExposured,
    RandXrayScatter,
    RandXrayScatterd,
)

__all__ = [
    "RandKSpaceGhosting",
    "RandKSpaceGhostingd",
    "RandKSpaceMotion",
    "RandKSpaceMotiond",
    "RandLowDoseCT",
    "RandLowDoseCTd",
    "RandQuantumNoise",
    "RandQuantumNoised",
    "RandSpeckle",
    "RandSpeckled",
    "RandXrayExposure",
    "RandXrayExposured",
    "RandXrayScatter",
    "RandXrayScatterd",
    "ThreadLimitedCompose",
]
