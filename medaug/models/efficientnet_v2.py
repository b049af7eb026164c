"""EfficientNet-V2-S, laid out so that torchvision's ImageNet state dicts load unchanged.

MONAI's ``EfficientNetBN`` covers EfficientNet-B0..B8 (MBConv blocks only); V2's fused MBConv blocks
are not in MONAI, and torchvision does not import beside the CPU torch build medaug pins, so V2-S is
written here from the paper. Module indices (``features.<stage>.<block>.block.<i>``, ``classifier.1``)
follow torchvision's ``efficientnet_v2_s`` so that a user's local checkpoint loads with
:func:`medaug.models.load_pretrained` and no missing or unexpected keys.

Reference: M. Tan, Q. V. Le, "EfficientNetV2: Smaller Models and Faster Training", ICML 2021 (table 4:
EfficientNetV2-S).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

_BN_EPS = 1e-3  # the reference weights were trained with this epsilon


class StageSpec(NamedTuple):
    fused: bool  # Fused-MBConv (a full 3x3 convolution) or MBConv (1x1 expand + depthwise 3x3 + SE)
    expand_ratio: int
    stride: int
    out_channels: int
    layers: int


# Table 4 of the paper: stage 0 is a 3x3 stride-2 convolution to 24 channels, stage 7 a 1x1 to 1280.
EFFICIENTNET_V2_S = (
    StageSpec(True, 1, 1, 24, 2),
    StageSpec(True, 4, 2, 48, 4),
    StageSpec(True, 4, 2, 64, 4),
    StageSpec(False, 4, 2, 128, 6),
    StageSpec(False, 6, 1, 160, 9),
    StageSpec(False, 6, 2, 256, 15),
)


def _conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, activation: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding=(kernel_size - 1) // 2, groups=groups, bias=False
        ),
        nn.BatchNorm2d(out_channels, eps=_BN_EPS),
    ]
    if activation:
        layers.append(nn.SiLU(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """Channel attention (Hu et al., CVPR 2018): global pool, 1x1 squeeze, SiLU, 1x1 excite, sigmoid."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(F.silu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * torch.sigmoid(scale)


def _drop_path(x: torch.Tensor, probability: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al., ECCV 2016): drop a residual branch per sample while training."""
    if not training or probability == 0.0:
        return x
    keep = 1.0 - probability
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class MBConvBlock(nn.Module):
    """One (Fused-)MBConv block; ``block`` is the sequence whose indices torchvision's weights use."""

    def __init__(self, spec: StageSpec, in_channels: int, stride: int, drop_path: float) -> None:
        super().__init__()
        hidden = in_channels * spec.expand_ratio
        layers: list[nn.Module] = []
        if spec.fused:
            if spec.expand_ratio == 1:
                layers.append(_conv_bn(in_channels, spec.out_channels, 3, stride))
            else:
                layers.append(_conv_bn(in_channels, hidden, 3, stride))
                layers.append(_conv_bn(hidden, spec.out_channels, 1, activation=False))
        else:
            layers.append(_conv_bn(in_channels, hidden, 1))
            layers.append(_conv_bn(hidden, hidden, 3, stride, groups=hidden))
            layers.append(SqueezeExcitation(hidden, max(1, in_channels // 4)))
            layers.append(_conv_bn(hidden, spec.out_channels, 1, activation=False))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == spec.out_channels
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + _drop_path(out, self.drop_path, self.training) if self.residual else out


class EfficientNetV2(nn.Module):
    """EfficientNet-V2 classifier (default: the S configuration).

    Args:
        in_channels: 1 for grayscale images, 3 for RGB.
        num_classes: number of output logits.
        stages: the stage table (default :data:`EFFICIENTNET_V2_S`).
        stochastic_depth: drop-path probability of the last block, growing linearly from 0 (paper: 0.2).
        dropout: dropout before the classifier (0.2 for V2-S).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        stages=EFFICIENTNET_V2_S,
        stochastic_depth: float = 0.2,
        dropout: float = 0.2,
        head_channels: int = 1280,
    ) -> None:
        super().__init__()
        features: list[nn.Module] = [_conv_bn(in_channels, stages[0].out_channels, 3, stride=2)]
        total_blocks, block_index = sum(spec.layers for spec in stages), 0
        channels = stages[0].out_channels
        for spec in stages:
            blocks = []
            for layer in range(spec.layers):
                drop = stochastic_depth * block_index / total_blocks
                blocks.append(MBConvBlock(spec, channels, spec.stride if layer == 0 else 1, drop))
                channels, block_index = spec.out_channels, block_index + 1
            features.append(nn.Sequential(*blocks))
        features.append(_conv_bn(channels, head_channels, 1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True), nn.Linear(head_channels, num_classes))
        self._initialise()

    def _initialise(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                bound = 1.0 / module.out_features**0.5
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def efficientnet_v2_s(in_channels: int = 3, num_classes: int = 1000, **kwargs) -> EfficientNetV2:
    """EfficientNet-V2-S (torchvision's ``efficientnet_v2_s`` layout)."""
    return EfficientNetV2(in_channels=in_channels, num_classes=num_classes, **kwargs)
