"""SimCLR (Chen et al. 2020): two random views of each pool image, pulled together against the
other images of the batch by MONAI's NT-Xent loss (:class:`monai.losses.ContrastiveLoss`).

The encoder is the zoo classifier itself, built with ``num_classes = embedding_dim``: its last
linear layer gives the embedding, which a small projection MLP (used only here, then dropped)
maps into the space the loss compares. The views are a random resized crop (a crop of
``min_crop`` to all of each side, resized back: a translation and zoom, so no anatomy rule is
touched) followed by the bundle's modality preset (:class:`medaug.transforms.presets.AugmentationPlan`),
so a chest X-ray is never flipped upside down here either. Optimiser: AdamW with a cosine
decay over ``steps``. Written here because MONAI has the loss but no contrastive training loop.

A k-NN probe (:func:`knn_probe`) says whether the embedding learns: the study's train images
are embedded (no augmentation), a cosine k-NN fitted on their labels, and the balanced accuracy
on the val images reported, before the first step, every ``probe_every`` steps (0: none between) and after the last.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from monai.data import MetaTensor
from monai.losses import ContrastiveLoss
from monai.transforms import Compose, EnsureTyped, RandSpatialCropd, Resized
from torch import nn
from tqdm.auto import tqdm

from medaug.transforms.threads import ThreadLimitedCompose


@dataclass(frozen=True)
class SimCLRSettings:
    """The budget and the loss: ``steps`` optimiser steps of ``batch_size`` images (two views each)."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.5
    embedding_dim: int = 128
    projection_dim: int = 64
    min_crop: float = 0.6
    probe_every: int = 100

    def as_dict(self) -> dict:
        return asdict(self)


def projection_head(embedding_dim: int, projection_dim: int) -> nn.Module:
    """SimCLR's projection MLP g(h): the loss acts on g(h), the downstream task uses h."""
    return nn.Sequential(
        nn.Linear(embedding_dim, embedding_dim), nn.ReLU(inplace=True), nn.Linear(embedding_dim, projection_dim)
    )


def view_transform(augmentation: Sequence, image_size: Sequence[int], min_crop: float, seed: int) -> Compose:
    """One random view of ``{"image": (C, H, W) float}``: resized crop, then the preset's transforms
    (a private copy, seeded, so the trainer's transforms keep their own random state). Runs with one
    PyTorch thread, as the training transforms do (:class:`medaug.transforms.threads.ThreadLimitedCompose`:
    on small images the intra-op threads cost more than they gain); the network's step keeps them all."""
    size = [int(s) for s in image_size]
    if not 0 < float(min_crop) <= 1:
        raise ValueError(f"pretrain min_crop must be in (0, 1], got {min_crop}")
    crop = RandSpatialCropd(
        keys="image",
        roi_size=[max(1, int(round(s * float(min_crop)))) for s in size],
        max_roi_size=size,
        random_size=True,
        random_center=True,
    )
    chain = ThreadLimitedCompose(
        [
            crop,
            Resized(keys="image", spatial_size=size, mode="bilinear"),
            *copy.deepcopy(list(augmentation)),
            EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
        ]
    )
    chain.set_random_state(seed=int(seed) % (2**32))
    return chain


def two_views(transform: Compose, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent views of each of ``images`` (N, C, H, W) uint8, as float tensors in [0, 1]."""
    first, second = [], []
    for image in images:
        item = {"image": MetaTensor(image.float() / 255.0)}
        first.append(torch.as_tensor(transform(dict(item))["image"]).clamp(0, 1))
        second.append(torch.as_tensor(transform(dict(item))["image"]).clamp(0, 1))
    return torch.stack(first), torch.stack(second)


@torch.no_grad()
def embed(encoder: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 128) -> np.ndarray:
    """Embeddings of (N, C, H, W) uint8 images, the encoder in eval mode."""
    was_training = encoder.training
    encoder.eval()
    out = [
        encoder((images[i : i + batch_size].float() / 255.0).to(device)).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    encoder.train(was_training)
    return torch.cat(out).numpy() if out else np.empty((0, 0), dtype=np.float32)


def knn_probe(
    train: torch.Tensor, train_labels: Sequence[int], val: torch.Tensor, val_labels: Sequence[int], k: int = 20
) -> Callable[[nn.Module, torch.device], dict]:
    """A probe ``probe(encoder, device) -> {"knn_balanced_accuracy": ...}``: cosine k-NN on the
    embedded train images, balanced accuracy on the val images."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.neighbors import KNeighborsClassifier

    def probe(encoder: nn.Module, device: torch.device) -> dict:
        knn = KNeighborsClassifier(n_neighbors=max(1, min(int(k), len(train))), metric="cosine")
        knn.fit(embed(encoder, train, device), np.asarray(train_labels))
        predicted = knn.predict(embed(encoder, val, device))
        return {"knn_balanced_accuracy": float(balanced_accuracy_score(np.asarray(val_labels), predicted))}

    return probe


def fit_simclr(
    encoder: nn.Module,
    images: torch.Tensor,
    views: Compose,
    settings: SimCLRSettings,
    seed: int,
    device: torch.device,
    probe: Callable[[nn.Module, torch.device], dict] | None = None,
    progress: bool = False,
) -> dict:
    """Train ``encoder`` in place on the pool ``images`` (N, C, H, W) uint8; returns the history
    ``{"loss": [per step], "probe": [{"step": s, ...}, ...]}``. Batches are drawn without
    replacement, a fresh permutation per pass over the pool."""
    if len(images) < 2:
        raise ValueError(
            f"SimCLR needs at least 2 pool images (each batch's other images are its negatives), got {len(images)}"
        )
    device = torch.device(device)
    batch = max(2, min(int(settings.batch_size), len(images)))
    head = projection_head(settings.embedding_dim, settings.projection_dim).to(device)
    encoder.to(device).train()
    parameters = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, int(settings.steps)))
    loss_function = ContrastiveLoss(temperature=settings.temperature)
    order = torch.Generator().manual_seed(int(seed))
    history: dict = {"loss": [], "probe": []}
    if probe is not None:
        history["probe"].append({"step": 0, **probe(encoder, device)})
    queue = torch.empty(0, dtype=torch.long)
    bar = tqdm(range(1, int(settings.steps) + 1), desc="pretrain (SimCLR)", disable=not progress, leave=False)
    for step in bar:
        if len(queue) < batch:  # a new pass; the few left over start it
            queue = torch.cat([queue, torch.randperm(len(images), generator=order)])
        chosen, queue = queue[:batch], queue[batch:]
        first, second = two_views(views, images[chosen])
        # both views in one forward pass: batch-norm statistics over all 2B views, as in SimCLR
        projected = head(encoder(torch.cat([first, second]).to(device)))
        loss = loss_function(*projected.chunk(2))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        history["loss"].append(float(loss.detach()))
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}")
        every = int(settings.probe_every)
        if probe is not None and ((every and step % every == 0) or step == int(settings.steps)):
            history["probe"].append({"step": step, **probe(encoder, device)})
    encoder.eval()
    return history
