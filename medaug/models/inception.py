"""Inception-V3, laid out so that torchvision's ImageNet state dicts load unchanged.

MONAI has no Inception network, and torchvision does not import beside the CPU torch build medaug pins,
so the network is written here from the paper. Module names (``Conv2d_1a_3x3``, ``Mixed_5b`` ...
``Mixed_7c``, ``AuxLogits``, ``fc``) and the ``conv``/``bn`` pair inside each basic convolution follow
torchvision's ``inception_v3`` so that a user's local checkpoint loads with
:func:`medaug.models.load_pretrained` and no missing or unexpected keys (build with ``aux_logits=True``
to take the auxiliary head's weights too).

Reference: C. Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# The stem takes a 75 px image down to a 1 px map before ``Mixed_7a``; smaller images fail inside it.
INCEPTION_MIN_INPUT_SIZE = 75


class InceptionOutputs(NamedTuple):
    """What :class:`Inception3` returns in training mode when it has an auxiliary head."""

    logits: torch.Tensor
    aux_logits: torch.Tensor


class BasicConv2d(nn.Module):
    """Convolution (no bias) + batch norm (eps 1e-3, as in the reference weights) + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_options) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_options)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionA(nn.Module):
    """35 x 35 block: 1x1, 5x5, double 3x3 and pooled branches (figure 5 of the paper)."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)),
        ]
        return torch.cat(branches, 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17: strided 3x3, strided double 3x3 and max-pool branches."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ]
        return torch.cat(branches, 1)


class InceptionC(nn.Module):
    """17 x 17 block with 7x7 convolutions factorised into 1x7 and 7x1 (figure 6 of the paper)."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Written out, not looped over a tuple of modules, so that TorchScript compiles it.
        double = self.branch7x7dbl_5(
            self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x))))
        )
        branches = [
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            double,
            self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)),
        ]
        return torch.cat(branches, 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: strided 3x3 after 1x1, strided 3x3 after factorised 7x7, max-pool."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        branches = [self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, kernel_size=3, stride=2)]
        return torch.cat(branches, 1)


class InceptionE(nn.Module):
    """8 x 8 block with expanded filter banks: 3x3 split into parallel 1x3 and 3x1 (figure 7)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branches = [
            self.branch1x1(x),
            torch.cat([self.branch3x3_2a(single), self.branch3x3_2b(single)], 1),
            torch.cat([self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double)], 1),
            self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)),
        ]
        return torch.cat(branches, 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on the 17 x 17 grid, a regulariser during training (section 4 of the paper)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = BasicConv2d(in_channels, 128, kernel_size=1)
        self.conv1 = BasicConv2d(128, 768, kernel_size=5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The reference pools 17 -> 5 before the 5x5 convolution; on smaller grids the pool keeps >= 5 px
        # only when the input was >= 299 px, so pool adaptively to 5 x 5 instead of failing.
        x = F.adaptive_avg_pool2d(x, (5, 5)) if min(x.shape[-2:]) < 17 else F.avg_pool2d(x, 5, stride=3)
        x = F.adaptive_avg_pool2d(self.conv1(self.conv0(x)), (1, 1))
        return self.fc(torch.flatten(x, 1))


class Inception3(nn.Module):
    """Inception-V3 classifier.

    Args:
        in_channels: 1 for grayscale images, 3 for RGB.
        num_classes: number of output logits.
        aux_logits: build the auxiliary classifier. In training mode the network then returns
            :class:`InceptionOutputs` (use :class:`InceptionLoss`); in eval mode always the main logits.
        dropout: dropout before the final fully connected layer.

    Inputs must be at least 75 px per side (the stem and two grid reductions need it); medaug's bundles
    resize images in preprocessing, so set ``image_size`` to at least ``[75, 75]``.
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 1000, aux_logits: bool = False, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.min_input_size = INCEPTION_MIN_INPUT_SIZE  # an attribute: TorchScript cannot read module globals
        self.Conv2d_1a_3x3 = BasicConv2d(in_channels, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.AuxLogits = InceptionAux(768, num_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(2048, num_classes)
        self._initialise()

    def _initialise(self) -> None:
        # Truncated normal (std 0.1) as in the reference implementation; batch norm at identity.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, mean=0.0, std=0.1, a=-2, b=2)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | InceptionOutputs:
        if min(x.shape[-2], x.shape[-1]) < self.min_input_size:
            raise ValueError(
                f"Inception-V3 needs images of at least {self.min_input_size} px per side, got "
                f"{list(x.shape[-2:])}; set image_size to at least [75, 75] so preprocessing resizes them"
            )
        # Stage by stage, as torchvision names them (a loop over a tuple of modules would not script).
        x = self.maxpool1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))))
        aux: torch.Tensor | None = None
        if self.AuxLogits is not None and self.training:
            aux = self.AuxLogits(x)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        logits = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        if torch.jit.is_scripting() or aux is None:  # a TorchScript export serves inference: logits only
            return logits
        return InceptionOutputs(logits, aux)


class InceptionLoss(nn.Module):
    """``loss(main) + aux_weight * loss(aux)`` for :class:`InceptionOutputs`, plain ``loss`` otherwise.

    The paper weighs the auxiliary classifier's loss by 0.3-0.4 (torchvision's reference training uses
    0.4); it regularises the 17 x 17 features and is dropped at inference.
    """

    def __init__(self, loss: nn.Module, aux_weight: float = 0.4) -> None:
        super().__init__()
        self.loss = loss
        self.aux_weight = aux_weight

    def forward(self, prediction, target: torch.Tensor) -> torch.Tensor:
        if isinstance(prediction, InceptionOutputs):
            return self.loss(prediction.logits, target) + self.aux_weight * self.loss(prediction.aux_logits, target)
        return self.loss(prediction, target)


def inception_v3(in_channels: int = 3, num_classes: int = 1000, **kwargs) -> Inception3:
    """Inception-V3 (torchvision's ``inception_v3`` layout)."""
    return Inception3(in_channels=in_channels, num_classes=num_classes, **kwargs)
