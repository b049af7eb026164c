"""VGG with batch normalisation, laid out so that torchvision's ImageNet state dicts load unchanged.

MONAI has no VGG, and torchvision does not import beside the CPU torch build medaug pins (its compiled
operators are built for another torch), so the network is written here. The module tree and parameter
names follow torchvision's ``vgg16_bn`` (``features.<i>``, ``classifier.0/3/6``) so that a user's local
``vgg16_bn`` checkpoint loads with :func:`medaug.models.load_pretrained` and no missing or unexpected keys.

Reference: K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015 (configuration D = VGG-16); batch norm after every convolution as in
torchvision's ``vgg16_bn``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Configuration D of Simonyan & Zisserman: output channels of each 3x3 convolution, "M" = 2x2 max-pool.
VGG16_LAYERS: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)

# Five 2x2 max-pools: a 32 px image leaves a 1 px map, anything smaller leaves none.
VGG_MIN_INPUT_SIZE = 32
# torchvision's adaptive pool output: a 224 px image's 7 x 7 map.
TORCHVISION_POOLED_SIZE = 7


def pooled_size_for(spatial_size: Sequence[int] | None) -> int:
    """The last feature map's side (input side // 32; the shorter side of a non-square input, whose
    map the pool then still averages along the longer side), capped at torchvision's 7.

    torchvision pools every map to 7 x 7; below 224 px that upsamples it, so at 32 px the head's first
    layer reads 49 copies of each of 512 values (a 25,088-wide input, 103 M weights) and at 64 px
    the 2 x 2 map 12 times over. Pooling to the map's own size is the same network with a 1/49
    (32 px) or 1/12 (64 px) first head layer: on a CPU the epoch takes half the time, and the
    103 M-weight layer no longer dominates AdamW's updates. ImageNet heads still load, folded by
    :func:`fold_head_weight`.
    """
    if not spatial_size:
        return TORCHVISION_POOLED_SIZE
    return max(1, min(TORCHVISION_POOLED_SIZE, min(int(s) for s in spatial_size) // 32))


def fold_head_weight(weight: torch.Tensor, channels: int, from_size: int, to_size: int) -> torch.Tensor:
    r"""The first head layer of a network pooled to ``from_size`` re-expressed for ``to_size``.

    Adaptive average pooling is linear: the ``from_size``\ :sup:`2` cells are averages ``A x`` of the
    ``to_size``\ :sup:`2` cells of the feature map. When ``to_size`` is the map's own size (no pooling),
    ``W A`` on the map is exactly the layer ``W`` on the pooled map, so the folded weight computes the
    same logits as the original network at that input size (square inputs; for a non-square one the
    fold is the nearest square equivalent). ``weight``: (out, channels * from_size**2).
    """
    basis = torch.eye(to_size * to_size, dtype=weight.dtype).reshape(-1, 1, to_size, to_size)
    pool = F.adaptive_avg_pool2d(basis, from_size).reshape(to_size * to_size, from_size * from_size).T
    per_channel = weight.reshape(weight.shape[0], channels, from_size * from_size)
    return (per_channel @ pool).reshape(weight.shape[0], channels * to_size * to_size)


class VGG(nn.Module):
    """VGG feature extractor + three-layer classifier head.

    Args:
        in_channels: 1 for grayscale images, 3 for RGB.
        num_classes: number of output logits.
        layers: convolution widths and ``"M"`` max-pools (default: VGG-16).
        batch_norm: batch norm after every convolution (``vgg16_bn``); the indices inside ``features``
            then match torchvision's ``vgg16_bn``, without it they match ``vgg16``.
        hidden_features: width of the two hidden fully connected layers (4096 in the paper; the shapes
            must stay 4096 for ImageNet weights to load into them).
        dropout: dropout before each hidden fully connected layer's successor, as in the paper.
        pooled_size: the adaptive average pool's output side (7 in torchvision: a 224 px image gives a
            7 x 7 map; smaller images are upsampled by the pool, which keeps the head's shape fixed;
            :func:`medaug.models.build_classifier` uses the map's own side, :func:`pooled_size_for`).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        layers: Sequence[int | str] = VGG16_LAYERS,
        batch_norm: bool = True,
        hidden_features: int = 4096,
        dropout: float = 0.5,
        pooled_size: int = 7,
    ) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        channels = in_channels
        for layer in layers:
            if layer == "M":
                modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            modules.append(nn.Conv2d(channels, int(layer), kernel_size=3, padding=1))
            if batch_norm:
                modules.append(nn.BatchNorm2d(int(layer)))
            modules.append(nn.ReLU(inplace=True))
            channels = int(layer)
        self.features = nn.Sequential(*modules)
        self.feature_channels = channels
        self.pooled_size = pooled_size
        self.avgpool = nn.AdaptiveAvgPool2d((pooled_size, pooled_size))
        self.classifier = nn.Sequential(
            nn.Linear(channels * pooled_size * pooled_size, hidden_features),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden_features, hidden_features),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden_features, num_classes),
        )
        self._initialise()

    def _initialise(self) -> None:
        # He initialisation for ReLU convolutions and small normal weights in the head, as torchvision does,
        # so that a network trained from scratch starts where users of torchvision expect.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def adapt_state_dict(self, source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint pooled to another size (torchvision's 7) with its first head layer folded to this
        network's pooled size (:func:`fold_head_weight`); everything else unchanged."""
        key = "classifier.0.weight"
        weight = source.get(key)
        if weight is None or weight.ndim != 2 or weight.shape[1] % self.feature_channels:
            return source
        cells = weight.shape[1] // self.feature_channels
        from_size = round(cells**0.5)
        if from_size * from_size != cells or from_size == self.pooled_size:
            return source
        return {**source, key: fold_head_weight(weight, self.feature_channels, from_size, self.pooled_size)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg16_bn(in_channels: int = 3, num_classes: int = 1000, **kwargs) -> VGG:
    """VGG-16 with batch norm (torchvision's ``vgg16_bn`` layout)."""
    return VGG(in_channels=in_channels, num_classes=num_classes, layers=VGG16_LAYERS, batch_norm=True, **kwargs)
