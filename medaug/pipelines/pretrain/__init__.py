"""Pretraining stage: a zoo network learned without labels (SimCLR) on an unlabeled pool that holds no
val/test image of the study, cached and handed to the trainer as ``pretrained_path``.

Modules: :mod:`.stage` (orchestration, cache, study-layout checkpoint, MLflow), :mod:`.pool` (the pool
and its val/test exclusion), :mod:`.simclr` (views, NT-Xent training loop, k-NN probe).
"""

from medaug.pipelines.pretrain.pool import SHIPPED_POOL, Pool, build_pool
from medaug.pipelines.pretrain.stage import PRETRAIN_METHODS, PretrainStage, study_layout_state

__all__ = ["PRETRAIN_METHODS", "SHIPPED_POOL", "Pool", "PretrainStage", "build_pool", "study_layout_state"]
