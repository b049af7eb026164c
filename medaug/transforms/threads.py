"""A MONAI ``Compose`` that runs its transforms with fewer PyTorch intra-op threads.

Augmentation works on one small image at a time (28-75 px here), where PyTorch's intra-op
parallelism costs more than it gains: measured on the 2-core machines, MONAI's ``RandAffined`` on a
28 px image took 25 ms with 2 threads and 4 ms with 1, ``RandGaussianSmoothd`` 24 ms and 1 ms (the
threads wait for each other at every small kernel, the more so when another process holds a core;
``benchmarks/results/epoch_time.md``). The network's forward/backward on a batch does gain from every
thread, and with ``num_workers`` 0 both run in the same process, so the count is lowered only while
the transforms run and restored after. A ``DataLoader`` worker process already runs with one thread.
"""

from __future__ import annotations

import torch
from monai.transforms import Compose


class ThreadLimitedCompose(Compose):
    """``Compose`` whose call runs with at most ``num_threads`` PyTorch threads (None: no limit).

    ``torch.set_num_threads`` is process-wide: use it where the transforms and the training step
    take turns in one thread (a ``DataLoader`` with ``num_workers`` 0, or worker processes), not
    beside a training step running in another thread of the same process. Everything else is
    MONAI's ``Compose`` (``CacheDataset`` still caches the deterministic transforms before the first
    random one).
    """

    def __init__(self, transforms=None, num_threads: int | None = 1, **kwargs) -> None:
        super().__init__(transforms, **kwargs)
        if num_threads is not None and int(num_threads) < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
        self.num_threads = None if num_threads is None else int(num_threads)

    def __call__(self, input_, *args, **kwargs):
        previous = torch.get_num_threads()
        if self.num_threads is None or previous <= self.num_threads:
            return super().__call__(input_, *args, **kwargs)
        torch.set_num_threads(self.num_threads)
        try:
            return super().__call__(input_, *args, **kwargs)
        finally:
            torch.set_num_threads(previous)
