"""The optimizer's parameter groups and the learning-rate schedule of the fine-tuning recipe.

Both are plain PyTorch (optimizer param groups; ``LinearLR`` + ``CosineAnnealingLR`` in a ``SequentialLR``);
written here is only the choice the bundle's ``optimizer`` and ``lr_scheduler`` need: which parameters
are the classification head, and a warm-up that degenerates to today's cosine schedule when off.
"""

from __future__ import annotations

import torch
from torch import nn

from medaug.pipelines.distributed import unwrap


def classification_head(network: nn.Module) -> nn.Linear:
    """The network's final ``nn.Linear`` (in module order): the layer that maps features to class logits.

    Every network of :data:`medaug.models.CLASSIFIERS` ends in one (``fc``, ``_fc``, ``class_layers.out``,
    ``classifier.6``, ``final.1``, ...); a pretrained checkpoint of another task has no fitting weights
    for it, and self-supervised pretraining learns none.
    """
    linears = [m for m in unwrap(network).modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(unwrap(network)).__name__} has no nn.Linear to take for its classification head")
    return linears[-1]


def param_groups(network: nn.Module, lr: float, pretrained_lr_scale: float = 1.0) -> list[dict]:
    """Optimizer parameter groups: the classification head at ``lr``, every other parameter at
    ``lr * pretrained_lr_scale``.

    A backbone loaded from ``pretrained_path`` then moves more slowly than the freshly initialised head
    (the usual fine-tuning practice). With a scale of 1 (and so without pretrained weights, where the
    bundle passes 1) it is one group of all parameters, the same optimizer as ``network.parameters()``.
    """
    params = [p for p in network.parameters() if p.requires_grad]
    if float(pretrained_lr_scale) == 1.0:
        return [{"params": params, "lr": lr}]
    head_ids = {id(p) for p in classification_head(network).parameters()}
    head = [p for p in params if id(p) in head_ids]
    backbone = [p for p in params if id(p) not in head_ids]
    return [
        {"params": backbone, "lr": lr * float(pretrained_lr_scale), "name": "pretrained"},
        {"params": head, "lr": lr, "name": "head"},
    ]


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer, max_epochs: int, warmup_epochs: int = 0, eta_min: float = 1e-5
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule (MONAI's ``LrScheduleHandler`` steps it after each epoch): ``warmup_epochs`` of
    linear warm-up from ``lr / (warmup_epochs + 1)`` to ``lr``, then cosine annealing to ``eta_min`` over
    the remaining epochs. With no warm-up it is exactly ``CosineAnnealingLR(T_max=max_epochs)``.

    Each param group warms up and anneals from its own ``lr`` (see :func:`param_groups`); ``eta_min`` is
    the same floor for all.
    """
    warmup_epochs, max_epochs = int(warmup_epochs), int(max_epochs)
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    if warmup_epochs == 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs, eta_min=eta_min)
    warmup = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1.0 / (warmup_epochs + 1), end_factor=1.0, total_iters=warmup_epochs
    )
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(max_epochs - warmup_epochs, 1), eta_min=eta_min
    )
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_epochs])
