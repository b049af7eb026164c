"""What every image generator of the oversampling stage offers: ``fit`` on the real train images,
``sample`` new images of one class, ``save``/``load`` of the fitted weights.

Images cross this interface as float tensors ``(N, C, H, W)`` in ``[0, 1]`` at the generator's
training size; the oversampling stage resizes to and from the data's own size. ``sample`` receives
the real train images of the class it draws (needed by latent interpolation and img2img, which
start from real images) and returns, for every new image, the ids of the real images it was made
from, so that provenance is recorded and tests can check that no val/test image was ever a parent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from medaug.io.atomic import atomic_path


@dataclass
class SampleBatch:
    """New images of one class ``(n, C, H, W)`` in [0, 1] and, per image, its real parent ids."""

    images: torch.Tensor
    parents: list[list[str]] = field(default_factory=list)


@contextmanager
def seeded(seed: int):
    """Run a block under a fixed torch seed without disturbing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def batches(n: int, size: int):
    """``(start, stop)`` of consecutive batches covering ``range(n)``."""
    for start in range(0, n, size):
        yield start, min(start + size, n)


class ImageGenerator:
    """Base of the class-conditional generators: subclasses build their networks in ``__init__``
    (given ``in_channels``, ``num_classes``, ``image_size``) and implement ``fit`` and ``sample``.

    ``modules()`` names the ``torch.nn.Module`` attributes whose weights make up the fitted model
    (what ``save``/``load`` and the checkpoint hash cover). ``sampling_only`` names the keyword
    arguments that change how the fitted model is sampled, not the model: the oversampling stage
    leaves them out of the fit's cache key, so changing one reuses the fitted generator.
    """

    name = "generator"
    sampling_only: frozenset[str] = frozenset()

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: Sequence[int],
        seed: int = 0,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> None:
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.image_size = tuple(int(s) for s in image_size)
        if len(self.image_size) != 2:
            raise ValueError(f"generators are 2D: image_size must be (H, W), got {image_size}")
        self.seed = int(seed)
        self.device = torch.device(device)
        self.progress = progress
        self.history: dict[str, list[float]] = {}

    # -- to implement -------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        raise NotImplementedError

    def fit(self, images: torch.Tensor, labels: torch.Tensor) -> ImageGenerator:
        raise NotImplementedError

    def sample(self, label: int, n: int, real_images: torch.Tensor, real_ids: Sequence[str], seed: int) -> SampleBatch:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    def check_fit_inputs(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.in_channels or tuple(images.shape[2:]) != self.image_size:
            raise ValueError(
                f"{self.name}: expected images (N, {self.in_channels}, {self.image_size[0]}, "
                f"{self.image_size[1]}), got {tuple(images.shape)}"
            )
        if len(labels) != len(images):
            raise ValueError(f"{self.name}: {len(images)} images but {len(labels)} labels")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"{self.name}: labels must lie in [0, {self.num_classes - 1}]")

    def save(self, path: str | os.PathLike) -> Path:
        state = {name: module.state_dict() for name, module in self.modules().items()}
        state["extra"] = self.extra_state()
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return Path(path)

    def load(self, path: str | os.PathLike) -> ImageGenerator:
        state = torch.load(path, map_location=self.device, weights_only=True)
        for name, module in self.modules().items():
            module.load_state_dict(state[name])
        self.load_extra_state(state.get("extra", {}))
        return self

    def extra_state(self) -> dict:
        """Plain values besides the weights that sampling needs (e.g. a latent scale factor)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass
