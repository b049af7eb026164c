"""Flip test-time augmentation (TTA) as a MONAI ``Inferer``, for the test evaluation and predictions.

A module of its own beside ``predict.py`` (not in ``evaluate/``): ``inference.json`` and ``medaug predict``
use it, and prediction loads no stage's code.

MONAI's ``TestTimeAugmentation`` runs random transforms on one image at a time to estimate uncertainty;
what is wanted here is the deterministic average over the few flips the augmentation preset allows, on
whole batches, behind the same ``inferer(inputs, network)`` call the evaluators and
:func:`medaug.pipelines.predict.predict_folder` already make. The bundles' ``postprocessing`` applies a
softmax after the inferer, so :class:`FlipTTAInferer` returns the log of the mean probability: its
softmax is the mean probability itself.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import torch
from monai.inferers import Inferer, SimpleInferer

logger = logging.getLogger("medaug.evaluate")

TTA_MODES = ("none", "flip")


def flip_combinations(spatial_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``spatial_axes`` (the identity first): the images a sequence of the allowed
    random flips can produce, e.g. ``[1]`` -> ``[(), (1,)]``, ``[0, 1]`` -> ``[(), (0,), (1,), (0, 1)]``."""
    axes = sorted({int(a) for a in spatial_axes})
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


class FlipTTAInferer(Inferer):
    """Mean softmax over the flips of ``spatial_axes`` (spatial axis 0 = rows/up-down, 1 = left-right),
    returned as its logarithm so that a later softmax gives the mean probability.

    Args:
        spatial_axes: the spatial axes the training augmentation flips (see
            :meth:`medaug.transforms.presets.AugmentationPlan.flip_axes`); empty: the plain prediction.
    """

    def __init__(self, spatial_axes: Sequence[int]) -> None:
        super().__init__()
        self.spatial_axes = sorted({int(a) for a in spatial_axes})
        self.flips = flip_combinations(self.spatial_axes)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        mean = None
        for axes in self.flips:
            view = torch.flip(inputs, dims=[a + 2 for a in axes]) if axes else inputs
            probs = torch.softmax(network(view, *args, **kwargs).float(), dim=1)
            mean = probs if mean is None else mean + probs
        return torch.log((mean / len(self.flips)).clamp_min(1e-12))


class TestTimeInferer(Inferer):
    """The test-time inferer of a bundle's ``tta`` setting, in ``train.json`` (test evaluation) and
    ``inference.json`` (predictions): ``none`` -> MONAI's ``SimpleInferer``; ``flip`` ->
    :class:`FlipTTAInferer` over ``flip_axes``, or (with a warning) ``SimpleInferer`` when the preset
    flips nothing (e.g. ``chest_xray``: no flip is anatomically allowed) or the axes are unknown (a
    checkpoint whose record predates them). A class, not a factory function, so that ``medaug predict``
    accepts it in a bundle it does not trust (:mod:`medaug.bundle_trust`: inferers are safe targets).
    """

    def __init__(self, tta: str = "none", flip_axes: Sequence[int] | None = ()) -> None:
        super().__init__()
        if tta not in TTA_MODES:
            raise ValueError(f"tta {tta!r}: choose one of {', '.join(TTA_MODES)}")
        self.tta = tta
        self.inferer: Inferer = SimpleInferer()
        if tta == "flip" and flip_axes:
            self.inferer = FlipTTAInferer(flip_axes)
        elif tta == "flip":
            why = "unknown (the model record has no flip_axes)" if flip_axes is None else "none"
            logger.warning("tta flip: the augmentation preset's flips are %s, so test-time flipping does nothing", why)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        return self.inferer(inputs, network, *args, **kwargs)
