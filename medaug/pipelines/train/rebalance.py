"""The honest, non-generative rebalancing baselines a generative method has to beat.

``none``: plain cross-entropy, the data as they are; ``class_weight``: cross-entropy weighted by
inverse class frequency (scikit-learn's "balanced" weights); ``oversample``: every epoch draws the
training set with replacement, each image weighted by the inverse of its class count, so classes
come out equally often on average (PyTorch's ``WeightedRandomSampler``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import WeightedRandomSampler

REBALANCE_METHODS = ("none", "class_weight", "oversample")


def _check(method: str) -> str:
    if method not in REBALANCE_METHODS:
        raise ValueError(f"rebalance method {method!r} is not one of {REBALANCE_METHODS}")
    return method


def class_weights(labels: Sequence[int], num_classes: int) -> np.ndarray:
    """Inverse-frequency weights ``n / (k * n_c)``; a class absent from ``labels`` gets weight 0."""
    labels = np.asarray(labels, dtype=np.int64)
    present = np.unique(labels)
    weights = np.zeros(num_classes, dtype=np.float64)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return weights


def make_loss(
    method: str, labels: Sequence[int], num_classes: int, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Cross-entropy, class-weighted when ``method == "class_weight"``."""
    weight = None
    if _check(method) == "class_weight":
        weight = torch.as_tensor(class_weights(labels, num_classes), dtype=torch.float32, device=device)
    return torch.nn.CrossEntropyLoss(weight=weight)


def make_sampler(method: str, labels: Sequence[int], seed: int = 0) -> WeightedRandomSampler | None:
    """A seeded class-balancing sampler for ``oversample``; None (plain shuffling) otherwise."""
    if _check(method) != "oversample":
        return None
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    per_sample = 1.0 / counts[labels]
    generator = torch.Generator().manual_seed(int(seed))
    return WeightedRandomSampler(
        torch.as_tensor(per_sample, dtype=torch.double), num_samples=len(labels), replacement=True, generator=generator
    )


def make_distributed_sampler(
    method: str, dataset, labels: Sequence[int], seed: int = 0, num_replicas: int | None = None, rank: int | None = None
):
    """The DDP counterpart of :func:`make_sampler`: each rank draws from its own shard of the
    training set (MONAI's ``DistributedSampler``, shuffled every epoch with ``seed + epoch``), so the
    ranks see disjoint parts of the data; ``oversample`` draws each rank's shard with the same
    class-balancing weights (MONAI's ``DistributedWeightedRandomSampler``).

    ``num_replicas``/``rank`` default to the process group's (they are arguments for tests).
    """
    from monai.data import DistributedSampler, DistributedWeightedRandomSampler

    kwargs = {"num_replicas": num_replicas, "rank": rank, "shuffle": True, "seed": int(seed), "even_divisible": True}
    if _check(method) != "oversample":
        return DistributedSampler(dataset, **kwargs)
    labels = np.asarray(labels, dtype=np.int64)
    per_sample = 1.0 / np.bincount(labels)[labels]
    generator = torch.Generator().manual_seed(int(seed) + (rank if rank is not None else _rank()))
    return DistributedWeightedRandomSampler(dataset, per_sample.tolist(), generator=generator, **kwargs)


def _rank() -> int:
    from medaug.pipelines.distributed import get_rank

    return get_rank()
