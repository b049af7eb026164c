"""medaug's array metrics as Ignite metrics, so MONAI engines can select checkpoints, stop early and
log to MLflow on them.

Ignite's ``EpochMetric`` keeps every prediction of an epoch and calls a function of
(probabilities, labels); MONAI has no balanced-accuracy handler, so the function comes from
:mod:`medaug.pipelines.evaluate.metrics`. Under DDP the predictions of all ranks are gathered before the
function runs, so every rank computes the metric of the whole validation set.
"""

from __future__ import annotations

import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import EpochMetric
from monai.utils import evenly_divisible_all_gather

from medaug.pipelines.evaluate import metrics as M


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


class GatheredEpochMetric(EpochMetric):
    """``EpochMetric`` whose ranks may hold different numbers of predictions.

    Ignite's ``EpochMetric.compute`` gathers with a plain ``all_gather``, which needs the same
    number of predictions on every rank; a validation set split without padding (MONAI's
    ``DistributedSampler(even_divisible=False)``, so that no image is counted twice) gives 40 and
    39. MONAI's ``evenly_divisible_all_gather`` pads, gathers and trims; every rank then computes
    the same value from the same predictions, so no broadcast is needed.
    """

    def compute(self) -> float:
        if not self._predictions:
            raise NotComputableError(f"{type(self).__name__} must have at least one example before it can be computed.")
        if self._result is None:
            preds, targets = torch.cat(self._predictions, dim=0), torch.cat(self._targets, dim=0)
            preds = evenly_divisible_all_gather(preds, concat=True)
            targets = evenly_divisible_all_gather(targets, concat=True)
            self._result = self.compute_fn(preds, targets)
        return self._result


def epoch_metric(name: str = "balanced_accuracy", positive_class: int = 1) -> EpochMetric:
    """An Ignite metric computing ``name`` (one of ``metrics.METRIC_NAMES``) over a whole epoch."""
    if name not in M.METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; choose one of {M.METRIC_NAMES}")
    return GatheredEpochMetric(
        _array_metric(name, positive_class), output_transform=stack_pred_label, check_compute_fn=False
    )


#: what ``select_on`` may name: the validation criterion the checkpoint and early stopping follow
SELECTION_CRITERIA = ("balanced_accuracy", "auc", "loss")


def _balanced_cross_entropy(y_pred: torch.Tensor, y: torch.Tensor) -> float:
    """Cross-entropy of the predicted probabilities, each class present weighted equally.

    The engine's ``pred`` is already the softmax (the bundle's ``postprocessing``), so the loss is the
    negative log of the probability given to the true class; averaging per class first keeps the
    majority class from dominating a small imbalanced validation set, as balanced accuracy does.
    """
    probs, labels = y_pred.detach().float().cpu(), y.detach().long().cpu()
    nll = -torch.log(probs.gather(1, labels[:, None]).squeeze(1).clamp_min(1e-7))
    per_class = [nll[labels == k].mean() for k in labels.unique()]
    return float(torch.stack(per_class).mean())


def validation_loss() -> EpochMetric:
    """Validation cross-entropy (classes weighted equally) as an Ignite metric; lower is better."""
    return GatheredEpochMetric(_balanced_cross_entropy, output_transform=stack_pred_label, check_compute_fn=False)


def _check_criterion(select_on: str) -> None:
    if select_on not in SELECTION_CRITERIA:
        raise ValueError(f"select_on {select_on!r}: choose one of {', '.join(SELECTION_CRITERIA)}")


def validation_metrics(select_on: str = "balanced_accuracy", positive_class: int = 1) -> tuple[dict, dict]:
    """``(key_val_metric, additional_metrics)`` of the validation evaluator.

    The key metric is ``val_<select_on>``: MONAI's ``CheckpointSaver`` (``save_key_metric``) and the
    evaluator's best-metric bookkeeping follow it. ``val_balanced_accuracy`` and ``val_auc`` are always
    logged under those names, whichever is the key; ``val_loss`` is computed only when selected.
    """
    _check_criterion(select_on)
    metrics = {f"val_{name}": epoch_metric(name, positive_class) for name in ("balanced_accuracy", "auc")}
    if select_on == "loss":
        metrics["val_loss"] = validation_loss()
    key = f"val_{select_on}"
    return {key: metrics.pop(key)}, metrics


def lower_is_better(select_on: str) -> bool:
    """True for ``loss``: the saver's ``key_metric_negative_sign`` and the sign of :func:`selection_score`."""
    _check_criterion(select_on)
    return select_on == "loss"


def selection_score(select_on: str = "balanced_accuracy"):
    """``score_function`` of MONAI's ``EarlyStopHandler``: the key metric, negated when lower is better
    (Ignite's ``EarlyStopping`` counts an epoch as an improvement when the score grows)."""
    sign = -1.0 if lower_is_better(select_on) else 1.0
    name = f"val_{select_on}"
    return lambda engine: sign * engine.state.metrics[name]


def metric_cmp_fn(select_on: str = "balanced_accuracy"):
    """The evaluator's ``metric_cmp_fn`` (``current``, ``best`` -> whether ``current`` is better)."""
    if lower_is_better(select_on):
        return lambda current, best: current < best
    return lambda current, best: current > best
