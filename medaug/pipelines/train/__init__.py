"""Training helpers for MONAI's ``SupervisedTrainer``: take the (oversampled) train datalist, give
the loss and sampler of the rebalancing baseline, the mixing batch preparation, the epoch metrics and
model selection criterion, the optimizer's parameter groups and warm-up schedule, the weights' moving
average, the batch-norm statistics re-estimated before validation and the augmentation grid the
bundle's ``train`` section wires in (and the test-time corruption grid of ``medaug show-corruptions``).
"""

from medaug.pipelines.train.augmentation_grid import (
    AugmentationGridHandler,
    corruption_rows,
    plot_augmentation_grid,
    plot_corruption_grid,
)
from medaug.pipelines.train.batching import drop_single_sample_batch
from medaug.pipelines.train.ema import EMAHandler
from medaug.pipelines.train.engine_metrics import (
    SELECTION_CRITERIA,
    epoch_metric,
    lower_is_better,
    metric_cmp_fn,
    selection_score,
    validation_metrics,
)
from medaug.pipelines.train.mixing import make_prepare_batch
from medaug.pipelines.train.optim import classification_head, make_lr_scheduler, param_groups
from medaug.pipelines.train.precise_bn import PreciseBatchNormHandler, recompute_batchnorm_statistics
from medaug.pipelines.train.rebalance import make_distributed_sampler, make_loss, make_sampler

__all__ = [
    "SELECTION_CRITERIA",
    "AugmentationGridHandler",
    "EMAHandler",
    "PreciseBatchNormHandler",
    "classification_head",
    "corruption_rows",
    "drop_single_sample_batch",
    "epoch_metric",
    "lower_is_better",
    "make_distributed_sampler",
    "make_loss",
    "make_lr_scheduler",
    "make_prepare_batch",
    "make_sampler",
    "metric_cmp_fn",
    "param_groups",
    "plot_augmentation_grid",
    "plot_corruption_grid",
    "recompute_batchnorm_statistics",
    "selection_score",
    "validation_metrics",
]
