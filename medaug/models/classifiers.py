"""Classifier factory: MONAI's networks by name, sized for the study's images, with optional local
pretrained weights (never downloaded)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import torch
from monai.networks import nets
from torch import nn

from medaug.models.efficientnet_v2 import efficientnet_v2_s
from medaug.models.inception import INCEPTION_MIN_INPUT_SIZE, inception_v3
from medaug.models.vgg import VGG_MIN_INPUT_SIZE, pooled_size_for, vgg16_bn
from medaug.settings import SettingsError, check_choice

logger = logging.getLogger("medaug.models")


RESNET_STEMS = {
    "imagenet": {"conv1_t_size": 7, "conv1_t_stride": 2, "no_max_pool": False},  # 1/4 resolution
    "half": {"conv1_t_size": 3, "conv1_t_stride": 1, "no_max_pool": False},  # 1/2 resolution
    "full": {"conv1_t_size": 3, "conv1_t_stride": 1, "no_max_pool": True},  # full resolution
}


def _resnet_stem(stem: str, spatial_size: Sequence[int] | None) -> dict:
    """ResNet's ImageNet stem (7x7 stride-2 conv + max-pool) shrinks a 28 px image to 7 px before the
    first residual block; MedMNIST's 28 px ResNet baselines use a 3x3 stride-1 stem for that reason.
    ``auto`` keeps full resolution up to 32 px and the ImageNet stem above (at 64 px the ImageNet stem
    is 4x cheaper than ``half``, which matters on a CPU)."""
    if stem == "auto":
        smallest = min(spatial_size) if spatial_size else 224
        stem = "full" if smallest <= 32 else "imagenet"
    if stem not in RESNET_STEMS:
        raise ValueError(f"unknown ResNet stem {stem!r}; choose auto or one of {sorted(RESNET_STEMS)}")
    return RESNET_STEMS[stem]


def _resnet(depth: int) -> Callable[..., nn.Module]:
    def build(in_channels, num_classes, spatial_size, stem="auto", **kwargs):
        factory = getattr(nets, f"resnet{depth}")
        return factory(
            spatial_dims=2,
            n_input_channels=in_channels,
            num_classes=num_classes,
            **{**_resnet_stem(stem, spatial_size), **kwargs},
        )

    return build


def _densenet121(in_channels, num_classes, spatial_size, **kwargs):
    return nets.DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, **kwargs)


# MONAI's EfficientNet keeps TensorFlow's batch-norm momentum (0.99 there, 0.01 in torch's convention):
# its running statistics then move 1% per iteration. A small dataset gives a few hundred iterations,
# after which the running statistics still sit near their initial values and the network in eval mode
# predicts one class (every EfficientNet-B0 cell of the generative study sat at chance for this). torch's
# usual 0.1 settles in tens of iterations.
EFFICIENTNET_NORM = ("batch", {"eps": 1e-3, "momentum": 0.1})


def _efficientnet(variant: str) -> Callable[..., nn.Module]:
    def build(in_channels, num_classes, spatial_size, **kwargs):
        # pretrained=False: MONAI would otherwise download ImageNet weights; use pretrained_path instead.
        return nets.EfficientNetBN(
            variant,
            pretrained=False,
            progress=False,
            spatial_dims=2,
            in_channels=in_channels,
            num_classes=num_classes,
            **{"norm": EFFICIENTNET_NORM, **kwargs},
        )

    return build


def _small_cnn(in_channels, num_classes, spatial_size, **kwargs):
    """MONAI's ``Classifier`` (residual conv units + linear head): a few seconds per epoch on a CPU."""
    if not spatial_size:
        raise ValueError("small_cnn needs spatial_size (its linear head depends on the input size)")
    options = {"channels": (16, 32, 64, 128), "strides": (2, 2, 2, 2), "num_res_units": 1, "dropout": 0.2}
    return nets.Classifier(in_shape=(in_channels, *spatial_size), classes=num_classes, **{**options, **kwargs})


def _vgg16_bn(in_channels, num_classes, spatial_size, **kwargs):
    kwargs.setdefault("pooled_size", pooled_size_for(spatial_size))
    return vgg16_bn(in_channels=in_channels, num_classes=num_classes, **kwargs)


def _efficientnet_v2_s(in_channels, num_classes, spatial_size, **kwargs):
    return efficientnet_v2_s(in_channels=in_channels, num_classes=num_classes, **kwargs)


def _inception_v3(in_channels, num_classes, spatial_size, **kwargs):
    return inception_v3(in_channels=in_channels, num_classes=num_classes, **kwargs)


CLASSIFIERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": _resnet(18),
    "resnet34": _resnet(34),
    "resnet50": _resnet(50),
    "densenet121": _densenet121,
    "efficientnet-b0": _efficientnet("efficientnet-b0"),
    "efficientnet-v2-s": _efficientnet_v2_s,
    "vgg16-bn": _vgg16_bn,
    "inception-v3": _inception_v3,
    "small_cnn": _small_cnn,
}


# Networks that downsample 32x fail on smaller inputs (a pooling or kernel larger than the map).
MIN_INPUT_SIZE = {
    "densenet121": 32,
    "efficientnet-b0": 32,
    "efficientnet-v2-s": 32,
    "vgg16-bn": VGG_MIN_INPUT_SIZE,
    "inception-v3": INCEPTION_MIN_INPUT_SIZE,
}


# AdamW's 1e-3 trains every zoo network from scratch on medaug's small sets except VGG-16-BN: on 242
# PneumoniaMNIST images at 32 px its validation AUC stayed at chance for 6 epochs at 1e-3 (train loss
# 77 after one epoch with torchvision's 7 x 7 head), and reached 0.96 by epoch 7 at 1e-4.
DEFAULT_LEARNING_RATE = 1e-3
LEARNING_RATES = {"vgg16-bn": 1e-4}


def default_learning_rate(name: str) -> float:
    """The bundles' ``learning_rate`` for classifier ``name``: :data:`LEARNING_RATES`, else 1e-3."""
    return LEARNING_RATES.get(classifier_key(name), DEFAULT_LEARNING_RATE)


def classifier_key(name: str) -> str:
    """How classifier names compare: case and ``_`` / ``-`` do not matter (``ResNet18``, ``small-cnn``)."""
    return name.lower().replace("_", "-")


def build_classifier(
    name: str,
    in_channels: int = 1,
    num_classes: int = 2,
    spatial_size: Sequence[int] | None = None,
    pretrained_path: str | os.PathLike | None = None,
    **kwargs,
) -> nn.Module:
    """A 2D classifier that outputs logits of shape (N, num_classes).

    Args:
        name: one of :data:`CLASSIFIERS` (``resnet18``, ``resnet50``, ``densenet121``, ``efficientnet-b0``,
            ``efficientnet_v2_s``, ``vgg16_bn``, ``inception_v3``, ``small_cnn``, ...); ``_`` and ``-`` are
            interchangeable.
        in_channels: 1 for grayscale images, 3 for RGB.
        num_classes: number of output classes.
        spatial_size: (H, W) the network will see; sizes the ResNet stem and the small CNN's head.
        pretrained_path: a local state dict to start from (see :func:`load_pretrained`).
        kwargs: passed to the MONAI network.
    """
    check_choice("classifier", name, sorted(CLASSIFIERS), normalize=classifier_key)
    key = next(k for k in CLASSIFIERS if classifier_key(k) == classifier_key(name))
    spatial = tuple(int(s) for s in spatial_size) if spatial_size is not None else None
    smallest = MIN_INPUT_SIZE.get(key, 1)
    if spatial is not None and min(spatial) < smallest:
        raise SettingsError(
            "image_size",
            f"{name} needs images of at least {smallest} px per side",
            f"set image_size to [{smallest}, {smallest}] or larger (preprocessing resizes the images), "
            "or use resnet18 or small_cnn",
            value=list(spatial),
        )
    model = CLASSIFIERS[key](in_channels, num_classes, spatial, **kwargs)
    if pretrained_path:
        load_pretrained(model, pretrained_path)
    return model


def _unwrap_state_dict(obj) -> dict:
    for key in ("state_dict", "model", "network", "net"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            return _unwrap_state_dict(obj[key])
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> dict[str, list[str]]:
    """Load local weights into ``model``, as far as they fit; nothing is downloaded.

    A first convolution trained on RGB is adapted to grayscale input by summing its kernels over the
    colour channels (the response to a gray image is then unchanged); a network that defines
    ``adapt_state_dict`` (VGG: torchvision's 7 x 7 head folded to a small input's map) adapts the rest.
    Tensors whose shapes still do not match (e.g. a classification head for 1000 ImageNet classes)
    are left at their initial values.
    Returns and logs ``{"missing": [...], "unexpected": [...], "mismatched": [...]}``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained_path {str(path)!r} does not exist")
    source = _unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    if hasattr(model, "adapt_state_dict"):  # e.g. VGG: torchvision's 7 x 7 head folded to the map's size
        source = model.adapt_state_dict(source)
    target = model.state_dict()
    usable, mismatched = {}, []
    for key, tensor in source.items():
        if key not in target:
            continue
        want = target[key].shape
        if (
            tensor.shape != want
            and tensor.ndim == 4
            and tensor.shape[1] == 3
            and want[1] == 1
            and tensor.shape[0] == want[0]
        ):
            tensor = tensor.sum(dim=1, keepdim=True)
        if tensor.shape == want:
            usable[key] = tensor
        else:
            mismatched.append(key)
    result = model.load_state_dict(usable, strict=False)
    report = {
        "missing": sorted(set(result.missing_keys)),
        "unexpected": sorted(k for k in source if k not in target),
        "mismatched": sorted(mismatched),
    }
    logger.info(
        "loaded %d tensors from %s; %d missing, %d unexpected, %d with mismatched shapes",
        len(usable),
        path,
        len(report["missing"]),
        len(report["unexpected"]),
        len(report["mismatched"]),
    )
    for kind, keys in report.items():
        if keys:
            logger.info("%s keys: %s", kind, ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
    return report
