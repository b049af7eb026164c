"""Exponential moving average (EMA) of the network's weights, as an Ignite handler.

The average itself is PyTorch's (``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``,
``use_buffers=True`` so BatchNorm statistics are averaged too); what this adds is the Ignite wiring:
an update after every training iteration, and the module the bundle validates, checkpoints and tests
with (:attr:`EMAHandler.eval_network`): the averaged copy when enabled, the network itself otherwise.
"""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from medaug.pipelines.distributed import unwrap
from medaug.settings import config_flag


class EMAHandler:
    """Keeps an EMA of ``network``'s parameters and buffers, updated after each training iteration.

    Args:
        network: the trained network (a ``DistributedDataParallel`` wrapper is looked through: every
            rank holds the same weights after DDP's all-reduce, so every rank keeps the same average
            without communicating, and validates with it on its shard of the validation set).
        decay: weight of the running average per update (``ema = decay * ema + (1 - decay) * weights``);
            0.99 averages over roughly the last 100 iterations.
        enabled: False makes the handler a no-op whose :attr:`eval_network` is ``network``; the
            strings ``"true"`` / ``"false"`` (as the CLI passes them) are read as the booleans.

    The averaged copy (:attr:`eval_network`) has the network's own parameter layout, so the checkpoint
    saved from it loads strictly into the bundle's network (test, ``evaluate.json``, ``inference.json``).
    """

    def __init__(self, network: torch.nn.Module, decay: float = 0.99, enabled: bool = False) -> None:
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"ema#decay must be in (0, 1), got {decay}")
        self.network, self.decay = network, float(decay)
        self.enabled = config_flag("ema#enabled", enabled)
        self.averaged = (
            AveragedModel(unwrap(network), multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)
            if self.enabled
            else None
        )

    @property
    def eval_network(self) -> torch.nn.Module:
        """What validation, the checkpoint and the test evaluation use."""
        return self.averaged.module if self.averaged is not None else self.network

    def attach(self, engine: Engine) -> None:
        if self.averaged is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)

    def update(self, engine: Engine | None = None) -> None:
        """Fold the network's current weights into the average (the first update copies them)."""
        self.averaged.update_parameters(unwrap(self.network))
