"""Precise batch-norm statistics: re-estimate BatchNorm running means and variances before validation.

In training, a BatchNorm layer normalises with the batch's own statistics and keeps an exponential
running average (``momentum`` 0.1) for evaluation. On a small dataset an epoch is a handful of
iterations, and the weights move faster than that average follows, so in eval mode the network
normalises with statistics of weights several epochs old: a model whose batch-statistics outputs
already rank the validation set well predicts one class in eval mode (seen here with EfficientNet-B0
on 181 chest X-rays: validation AUC 0.95, balanced accuracy 0.50 for ten epochs). Wu & Johnson,
"Rethinking 'Batch' in BatchNorm" (arXiv:2105.07576, 2021), section 3, call the fix *precise BN*:
before evaluating, recompute the population statistics with the current weights over a number of
training batches, as an equal-weight average.

``torch.optim.swa_utils.update_bn`` does that computation for SWA models, but it takes a loader of
tensors (not MONAI's dictionaries) and always walks the whole loader, so the loop is written here;
its method (reset, ``momentum=None`` for a cumulative average, restore) is the same.
"""

from __future__ import annotations

import itertools

import torch
from ignite.engine import Engine, Events

from medaug.pipelines.distributed import unwrap
from medaug.settings import config_flag


def batchnorm_layers(network: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    """The network's BatchNorm layers that keep running statistics."""
    return [
        m
        for m in unwrap(network).modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def recompute_batchnorm_statistics(
    network: torch.nn.Module, batches, device: torch.device | str = "cpu", max_batches: int | None = None
) -> int:
    """Replace every BatchNorm layer's running mean and variance with their average over ``batches``
    (dictionaries with an ``"image"`` tensor, or tensors), computed with the network's current weights.

    The network's train/eval mode and the layers' momenta are restored afterwards; no weight changes.
    Returns the number of batches used (0 when the network has no BatchNorm layer: nothing is run).
    """
    layers = batchnorm_layers(network)
    if not layers:
        return 0
    module = unwrap(network)
    was_training = module.training
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average: every batch weighs the same
    module.train()
    used = 0
    try:
        for batch in itertools.islice(batches, max_batches):
            images = batch["image"] if isinstance(batch, dict) else batch
            module(torch.as_tensor(images).to(device))
            used += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        module.train(was_training)
    return used


class PreciseBatchNormHandler:
    """Before each validation, re-estimate the BatchNorm statistics of the network that is validated.

    Args:
        network: the module validated, checkpointed and tested (the bundle's ``eval_network``: the
            EMA copy when ``ema#enabled``, the trained network otherwise).
        enabled: False makes the handler a no-op; the strings ``"true"`` / ``"false"`` are read as
            the booleans, anything else is a settings error.
        max_batches: training batches to average over (None: the whole train loader, one forward
            pass without gradients, about a third of a training epoch's compute).
        interval: every how many epochs; the bundle passes ``val_interval`` so it runs right before
            each validation. Attach it before the ``ValidationHandler``: Ignite calls the handlers of
            one event in the order they were attached.

    The batches are the trainer's own loader (its augmentations included, its oversampled set), so
    the statistics are those of the images the network was trained on. Under DDP every rank averages
    over its own shard, as the training did.
    """

    def __init__(
        self, network: torch.nn.Module, enabled: bool = False, max_batches: int | None = None, interval: int = 1
    ) -> None:
        if max_batches is not None and int(max_batches) < 1:
            raise ValueError(f"precise_bn#max_batches must be a positive number or null, got {max_batches}")
        if int(interval) < 1:
            raise ValueError(f"precise_bn interval must be at least 1, got {interval}")
        self.network, self.enabled = network, config_flag("precise_bn#enabled", enabled)
        self.max_batches = None if max_batches is None else int(max_batches)
        self.interval = int(interval)

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        recompute_batchnorm_statistics(
            self.network, engine.data_loader, device=engine.state.device, max_batches=self.max_batches
        )
