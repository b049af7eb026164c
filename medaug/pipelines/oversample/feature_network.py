"""The domain feature network that FID and k-NN precision/recall of synthetic images are measured in.

FID was defined on the pool-3 features of an ImageNet Inception-v3 (Heusel et al. 2017). Those
features are organised around the 1000 ImageNet classes: FID can be moved by matching ImageNet
class probabilities without any change in image quality (Kynkäänniemi et al. 2023, "The role of
ImageNet classes in Fréchet Inception Distance", ICLR), and a grey-scale ultrasound or X-ray image,
copied into three channels and resized to 299 px, is far from anything Inception was trained on.
The medical evidence is mixed (Woodland et al. 2024, MICCAI, found ImageNet extractors, SwAV
more than Inception, ranked medical GANs closer to radiologists than RadImageNet ones did), so no
feature space is "the right one". The default here is a network of the domain itself that needs
no download: a small classifier trained briefly on the real train split, whose penultimate layer
(the input of its last linear layer) gives the features. It measures differences that matter
to a classifier of these very classes. A user's own network (RadImageNet or SwAV weights, a
classifier trained on a larger in-house set) can replace it from a local file.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.handlers import ProgressBar
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from torch import nn

from medaug.io.atomic import atomic_path
from medaug.models import build_classifier
from medaug.pipelines.oversample.batches import as_image_batch, match_channels, resize_batch

logger = logging.getLogger("medaug.synthetic_quality")

METADATA_FILE = "medaug_feature_network.json"  # stored inside TorchScript archives we write

# The default feature network: 128 features, because FID estimates a D x D covariance per class
# from a few hundred images (with N <= D it is singular and FID's bias grows with D / N), and the
# matrix square root in FID costs O(D^3): 512 features take seconds per FID on 2 CPU cores.
SMALL_CNN_FEATURES = {"channels": (16, 32, 64, 128, 128), "strides": (2, 2, 2, 2, 2)}


def last_linear_name(model: nn.Module) -> str:
    """Name of the last ``nn.Linear`` submodule: its input is the penultimate layer of a classifier."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError("the network has no nn.Linear layer; name the feature layer with layer=...")
    return names[-1]


class PenultimateFeatures(nn.Module):
    """A classifier seen up to one layer: returns the input of ``layer`` (default: the last linear
    layer), flattened to (N, D). The rest of the forward pass runs but its result is discarded, so
    any architecture works without knowing how its head is wired (MONAI's ``Classifier`` reshapes
    after its linear layer, ResNet pools before it)."""

    def __init__(self, model: nn.Module, layer: str | None = None):
        super().__init__()
        self.model = model
        self.layer = layer or last_linear_name(model)
        modules = dict(model.named_modules())
        if self.layer not in modules:
            raise ValueError(f"the network has no layer named {self.layer!r}")
        self._captured: list[torch.Tensor] = []
        modules[self.layer].register_forward_pre_hook(self._capture)

    def _capture(self, module, inputs):
        self._captured.append(inputs[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._captured.clear()
        self.model(x)
        features = self._captured[-1]
        self._captured.clear()
        return features.flatten(1)


class FeatureNetwork:
    """A network mapping images to feature vectors, with the input it expects.

    Args:
        module: maps (N, in_channels, *image_size) to (N, D) features, or to (N, D, h, w) maps that
            are averaged over space.
        image_size: (H, W) the network takes; images are resized to it.
        in_channels: channels the network takes; grey-scale images are repeated to 3 channels and
            RGB images reduced to luma as needed.
        name: a description for reports (architecture, file).
        device: where the features are computed.
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        module: nn.Module,
        image_size: Sequence[int],
        in_channels: int,
        *,
        name: str = "",
        device: str | torch.device = "cpu",
        batch_size: int = 256,
    ):
        self.module = module.eval().to(device)
        self.image_size = tuple(int(s) for s in image_size)
        self.in_channels = int(in_channels)
        self.name = name
        self.device = torch.device(device)
        self.batch_size = int(batch_size)

    def prepare(self, images) -> torch.Tensor:
        """Images as the network takes them: checked, channels matched and resized (on the CPU)."""
        batch = as_image_batch(images)
        return resize_batch(match_channels(batch, self.in_channels), self.image_size, mode="antialias")

    @torch.no_grad()
    def features(self, images) -> torch.Tensor:
        """Features (N, D) as float64 on the CPU (FID works in double precision)."""
        batch = self.prepare(images)
        chunks = []
        for start in range(0, len(batch), self.batch_size):
            out = self.module(batch[start : start + self.batch_size].to(self.device))
            if out.ndim > 2:  # spatial feature maps: global average pooling, as FID's Inception does
                out = out.flatten(2).mean(dim=2)
            chunks.append(out.detach().to("cpu", torch.float64))
        if not chunks:
            return torch.zeros((0, self.dim), dtype=torch.float64)
        return torch.cat(chunks)

    @property
    def dim(self) -> int:
        """Number of features D (from one forward pass of a blank image)."""
        with torch.no_grad():
            probe = torch.zeros((1, self.in_channels, *self.image_size), device=self.device)
            out = self.module(probe)
        return int(out.shape[1])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the network as TorchScript (traced at its input size) with its input description,
        so :func:`load_feature_network` restores it without further arguments."""
        example = torch.zeros((1, self.in_channels, *self.image_size), device=self.device)
        with torch.no_grad(), warnings.catch_warnings():
            # shape checks inside MONAI networks become constants: right, the input size is fixed
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(copy.deepcopy(self.module).eval(), example, check_trace=False)
        meta = {"image_size": list(self.image_size), "in_channels": self.in_channels, "name": self.name}
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={METADATA_FILE: json.dumps(meta)})
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())
        return path

    def __repr__(self) -> str:
        return f"FeatureNetwork({self.name!r}, image_size={self.image_size}, in_channels={self.in_channels})"


def _class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, so the features also separate the minority class (absent classes
    get weight 0 instead of a division by zero)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max((counts > 0).sum(), 1), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def fit_feature_network(
    images,
    labels,
    *,
    num_classes: int,
    seed: int = 0,
    epochs: int = 15,
    device: str | torch.device = "cpu",
    architecture: str = "small_cnn",
    image_size: Sequence[int] = (32, 32),
    network_kwargs: dict | None = None,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> FeatureNetwork:
    """Train a classifier briefly on real images and return its penultimate layer as features.

    Trained with MONAI's ``SupervisedTrainer`` (Adam, class-weighted cross-entropy, random
    horizontal flips) on the images given, which must be the REAL train split only: val/test images
    would leak into the quality assessment, and synthetic ones would make the features blind to
    their own artefacts.

    Args:
        images: (N, C, H, W) real train images in [0, 1].
        labels: (N,) class indices in ``[0, num_classes)``.
        num_classes: number of classes.
        seed: seeds weights, batch order and flips: the same seed gives the same network.
        epochs: passes over the images (a few seconds each for the default at 32 px on a CPU).
        device: where to train.
        architecture: a :func:`medaug.models.build_classifier` name. The default ``small_cnn``
            (MONAI's ``Classifier``) gets a fifth stride-2 level that reduces a 32 px image to
            1 x 1 x 128, so its penultimate layer has 128 features; ``resnet18`` gives 512.
        image_size: (H, W) the network works at (images are resized to it).
        network_kwargs: passed to the MONAI network (for ``small_cnn`` they replace
            :data:`SMALL_CNN_FEATURES`).
        batch_size, learning_rate: training settings.
        progress: show a progress bar per epoch.
        cache_dir: keep the fitted network there (TorchScript, :meth:`FeatureNetwork.save`) under
            a key hashed from the images, labels and every setting above except ``device`` and
            ``progress``, and load it instead of training when the key is there already: the
            runs of a study grid then share one network, which keeps their FIDs comparable.
    """
    batch = as_image_batch(images, "images", allow_empty=False)
    labels = np.asarray(torch.as_tensor(labels).cpu()).reshape(-1).astype(np.int64)
    if len(labels) != len(batch):
        raise ValueError(f"{len(batch)} images but {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}")
    in_channels = batch.shape[1]
    settings = {
        "num_classes": num_classes,
        "seed": seed,
        "epochs": epochs,
        "architecture": architecture,
        "image_size": list(image_size),
        "network_kwargs": network_kwargs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
    }
    cached = _cache_path(cache_dir, batch, labels, settings) if cache_dir is not None else None
    if cached is not None and cached.is_file():
        logger.info("feature network from cache %s", cached)
        return load_feature_network(cached, device=device)
    batch = resize_batch(batch, image_size, mode="antialias")

    device = torch.device(device)
    # a private RNG stream: seeded weights and dropout without reseeding the caller's global state
    # (MONAI's set_determinism(None) would reseed torch, numpy and random at random afterwards)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        if network_kwargs is None:
            network_kwargs = SMALL_CNN_FEATURES if architecture.replace("-", "_") == "small_cnn" else {}
        model = build_classifier(
            architecture, in_channels=in_channels, num_classes=num_classes, spatial_size=image_size, **network_kwargs
        ).to(device)
        data = [{"image": image, "label": int(label)} for image, label in zip(batch, labels)]
        loader = DataLoader(
            data, batch_size=batch_size, shuffle=True, num_workers=0, generator=torch.Generator().manual_seed(seed)
        )
        flip_rng = torch.Generator().manual_seed(seed + 1)

        def prepare_batch(batchdata, device=None, non_blocking=False, **kwargs):
            x, y = batchdata["image"], batchdata["label"]
            flip = torch.rand(len(x), generator=flip_rng) < 0.5  # lesions have no preferred side
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            return x.to(device, non_blocking=non_blocking), y.to(device, non_blocking=non_blocking)

        trainer = SupervisedTrainer(
            device=device,
            max_epochs=int(epochs),
            train_data_loader=loader,
            network=model,
            optimizer=torch.optim.Adam(model.parameters(), lr=learning_rate),
            loss_function=nn.CrossEntropyLoss(weight=_class_weights(labels, num_classes).to(device)),
            prepare_batch=prepare_batch,
            decollate=False,
        )
        if progress:
            ProgressBar(desc="feature network", persist=False).attach(trainer)
        trainer.run()
    logger.info("feature network %s trained on %d real images for %d epochs", architecture, len(batch), epochs)
    network = FeatureNetwork(
        PenultimateFeatures(model.eval()),
        image_size,
        in_channels,
        name=f"{architecture} trained on the real train split",
        device=device,
    )
    if cached is not None:
        network.save(cached)
    return network


def _cache_path(cache_dir, images: torch.Tensor, labels: np.ndarray, settings: dict) -> Path:
    digest = hashlib.sha256()
    digest.update(str(tuple(images.shape)).encode())
    digest.update(images.contiguous().numpy().tobytes())
    digest.update(labels.tobytes())
    digest.update(json.dumps(settings, sort_keys=True, default=list).encode())
    return Path(cache_dir) / f"feature_network_{digest.hexdigest()[:16]}.ts"


def load_feature_network(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    image_size: Sequence[int] | None = None,
    layer: str | None = None,
    network_kwargs: dict | None = None,
    device: str | torch.device = "cpu",
) -> FeatureNetwork:
    """A user's feature network from a local file.

    Two forms:
      * a TorchScript file whose output is the feature vector (N, D), or feature maps (N, D, h, w)
        that are averaged. Files written by :meth:`FeatureNetwork.save` carry their input size and
        channels; for other files give ``image_size`` and ``in_channels``.
      * a state dict (or a checkpoint holding one) of a :func:`medaug.models.build_classifier`
        network: give ``name`` (e.g. ``resnet18``), ``num_classes``, ``in_channels`` and
        ``image_size`` (and ``network_kwargs`` if it was built with any); the features are the
        input of ``layer`` (default: the last linear layer).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature network file {str(path)!r} does not exist")
    if name is None:
        extra = {METADATA_FILE: ""}
        try:
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        except RuntimeError as err:
            raise ValueError(
                f"{path} is not a TorchScript file ({str(err).splitlines()[0]}); for a state dict give "
                f"the classifier name=..., num_classes=..., in_channels=... and image_size=..."
            ) from err
        meta = json.loads(extra[METADATA_FILE]) if extra[METADATA_FILE] else {}
        image_size = image_size or meta.get("image_size")
        in_channels = in_channels or meta.get("in_channels")
        if image_size is None or in_channels is None:
            raise ValueError(f"{path} does not record its input; give image_size=(H, W) and in_channels=...")
        return FeatureNetwork(module, image_size, in_channels, name=meta.get("name") or str(path), device=device)
    missing = [
        arg
        for arg, value in (("num_classes", num_classes), ("in_channels", in_channels), ("image_size", image_size))
        if value is None
    ]
    if missing:
        raise ValueError(f"loading a {name} state dict needs {', '.join(missing)}")
    model = build_classifier(
        name, in_channels=in_channels, num_classes=num_classes, spatial_size=image_size, **(network_kwargs or {})
    )
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "network", "net"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return FeatureNetwork(
        PenultimateFeatures(model.eval(), layer), image_size, in_channels, name=f"{name} from {path}", device=device
    )
