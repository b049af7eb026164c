"""Training helpers for MONAI's ``SupervisedTrainer``: take the (oversampled) train datalist, give
the loss and sampler of the rebalancing baseline, the mixing batch preparation, the epoch metrics
and the augmentation grid the bundle's ``train`` section wires in.
"""

from medaug.pipelines.train.augmentation_grid import AugmentationGridHandler, plot_augmentation_grid
from medaug.pipelines.train.engine_metrics import epoch_metric
from medaug.pipelines.train.mixing import make_prepare_batch
from medaug.pipelines.train.rebalance import make_distributed_sampler, make_loss, make_sampler

__all__ = [
    "AugmentationGridHandler",
    "epoch_metric",
    "make_distributed_sampler",
    "make_loss",
    "make_prepare_batch",
    "make_sampler",
    "plot_augmentation_grid",
]
