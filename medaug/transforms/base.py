"""The shared form of medaug's physics transforms: MONAI's ``RandomizableTransform`` with ``prob``,
parameters drawn from ``self.R`` (so ``set_random_state`` and MONAI's dataset seeding make runs
repeatable), MetaTensor in and out with its meta kept, and a dictionary twin.

Noise fields are drawn by torch from a ``torch.Generator`` seeded from ``self.R``: torch draws
Poisson and Gaussian fields several times faster than NumPy and on the image's device, while the
seed still comes from MONAI's random state.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor


def as_range(
    value: float | Sequence[float], name: str, low: float | None = None, high: float | None = None
) -> tuple[float, float]:
    """``(lo, hi)`` from a number (a fixed value) or a pair; out-of-bounds values are an error naming ``name``."""
    if isinstance(value, (int, float)):
        lo = hi = float(value)
    else:
        values = [float(v) for v in value]
        if len(values) != 2:
            raise ValueError(f"{name}: expected a number or a (min, max) pair, got {value!r}")
        lo, hi = values
    if lo > hi:
        raise ValueError(f"{name}: min {lo} is larger than max {hi}")
    if (low is not None and lo < low) or (high is not None and hi > high):
        raise ValueError(f"{name}: {value!r} is outside the allowed range [{low}, {high}]")
    return lo, hi


def plain(tensor: torch.Tensor) -> torch.Tensor:
    """The bare ``torch.Tensor`` of a MetaTensor (intermediate results carry no meta)."""
    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor


class RandPhysicsTransform(RandomizableTransform):
    """Base of the array transforms: subclasses draw their parameters in :meth:`draw` (from ``self.R``
    only) and apply them in :meth:`apply` (noise from the given ``torch.Generator`` only)."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, prob: float) -> None:
        super().__init__(prob)
        self._params: dict = {}

    def draw(self) -> dict:
        """Parameters of one application (physical quantities); ``seed`` is added by :meth:`randomize`."""
        return {}

    def apply(self, img: torch.Tensor, params: dict, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._params = {**self.draw(), "seed": int(self.R.randint(0, 2**31 - 1))}

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img_t
        if not torch.is_floating_point(img_t):
            img_t = img_t.float()
        generator = torch.Generator(device=img_t.device).manual_seed(self._params["seed"])
        out = self.apply(plain(img_t), self._params, generator).to(img_t.dtype)
        return convert_to_dst_type(out, dst=img_t)[0]


class RandPhysicsTransformd(RandomizableTransform, MapTransform):
    """Base of the dictionary twins: ``prob`` decides once per call, then the array transform (with
    ``prob=1``) runs on each key, as MONAI's own twins (e.g. ``RandRicianNoised``) do. With one key
    and the same seed, the twin gives exactly the array transform's result."""

    backend = RandPhysicsTransform.backend
    array_class: type[RandPhysicsTransform]

    def __init__(self, keys: KeysCollection, prob: float = 0.1, allow_missing_keys: bool = False, **kwargs) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.transform = self.array_class(prob=1.0, **kwargs)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        for key in self.key_iterator(d):
            if self._do_transform:
                d[key] = self.transform(d[key], randomize=True)
            else:
                d[key] = convert_to_tensor(d[key], track_meta=get_track_meta())
        return d
