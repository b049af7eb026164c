"""medaug's array metrics as Ignite metrics, so MONAI engines can select checkpoints, stop early and
log to MLflow on them.

Ignite's ``EpochMetric`` gathers every prediction of an epoch (across ranks under DDP) and calls a
function of (probabilities, labels); MONAI has no balanced-accuracy handler, so the function comes
from :mod:`medaug.pipelines.metrics`.
"""

from __future__ import annotations

import torch
from ignite.metrics import EpochMetric

from medaug.pipelines import metrics as M


def stack_pred_label(output) -> tuple[torch.Tensor, torch.Tensor]:
    """Decollated engine output (a list of ``{"pred", "label"}``) -> (probs (N, K), labels (N,))."""
    if isinstance(output, dict):
        output = [output]
    preds = torch.stack([torch.as_tensor(item["pred"]).float().reshape(-1) for item in output])
    labels = torch.stack([torch.as_tensor(item["label"]).long().reshape(()) for item in output])
    return preds, labels


def _array_metric(name: str, positive_class: int):
    def compute(y_pred: torch.Tensor, y: torch.Tensor) -> float:
        probs, labels = y_pred.detach().cpu().numpy(), y.detach().cpu().numpy()
        value = M.compute_metrics(labels, probs, num_classes=probs.shape[1], positive_class=positive_class)[name]
        return float(value) if value == value else 0.0  # nan (e.g. one class in a tiny val set) ranks lowest

    return compute


def epoch_metric(name: str = "balanced_accuracy", positive_class: int = 1) -> EpochMetric:
    """An Ignite metric computing ``name`` (one of ``metrics.METRIC_NAMES``) over a whole epoch."""
    if name not in M.METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; choose one of {M.METRIC_NAMES}")
    return EpochMetric(_array_metric(name, positive_class), output_transform=stack_pred_label, check_compute_fn=False)
