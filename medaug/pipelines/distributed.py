"""Small helpers for PyTorch DDP runs launched by ``torchrun`` (``configs/multi_gpu_train.json``).

``torchrun`` starts one process per device and tells each its place through environment
variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``); the process
group itself is PyTorch's (``torch.distributed``) and the sharding, gathering and checkpoint
unwrapping are MONAI's and Ignite's. What is written here is only what a bundle config needs and
those libraries do not offer as one call:

* rank queries that also work before the process group exists (bundle expressions such as
  ``report_dir`` may be evaluated early), and outside ``torchrun`` (rank 0 of a world of 1);
* :func:`init_process_group`: NCCL on GPUs, Gloo on CPUs, and the device of the local rank;
* :func:`rank0_first` / :func:`rank0_first_context`: a stage that fills a cache (data index,
  oversampled images and their manifest) runs on rank 0 while the others wait at a barrier, then
  the others run it and find the cache filled;
* :func:`on_rank0_and_share`: rank 0 computes a value, every rank receives it (the run name's
  timestamp, see :func:`medaug.pipelines.tracking.tracker.timestamp`);
* :func:`rank0_handlers`: the handler lists of the single-process config, minus the handlers that
  write (checkpoints, MLflow, reports, figures, console) on ranks other than 0: those that declare
  ``rank0_only = True`` and MONAI's and Ignite's writers.

Outside a distributed run every helper is a no-op that behaves as rank 0 of 1.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

logger = logging.getLogger("medaug.distributed")
T = TypeVar("T")


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """Global rank: the process group's, else ``torchrun``'s ``RANK`` variable, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def get_world_size() -> int:
    """Number of processes: the process group's, else ``WORLD_SIZE``, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def get_local_rank() -> int:
    """Rank within this machine (``LOCAL_RANK``; 0 outside ``torchrun``): picks the GPU."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_rank0() -> bool:
    return get_rank() == 0


def default_backend() -> str:
    """``nccl`` where CUDA devices exist, ``gloo`` on CPUs."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` on GPU machines (one process per GPU), else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{get_local_rank()}")
    return torch.device("cpu")


def init_process_group(backend: str | None = None, timeout_minutes: float = 30.0) -> torch.device:
    """Join the process group ``torchrun`` set up (``env://``) and return this process's device.

    Idempotent, and a no-op outside ``torchrun`` (no ``WORLD_SIZE`` in the environment), so a
    config that calls it still runs as a single process.

    Args:
        backend: ``nccl`` or ``gloo``; default :func:`default_backend`.
        timeout_minutes: how long collectives wait for a slow rank (rank 0 running the test
            evaluation or the oversampling stage alone) before failing.
    """
    device = local_device()
    if "WORLD_SIZE" not in os.environ or not dist.is_available():
        return device
    if not dist.is_initialized():
        backend = backend or default_backend()
        if backend == "nccl" and device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
        logger.info("rank %d of %d joined the %s process group on %s", get_rank(), get_world_size(), backend, device)
    return device


def destroy_process_group() -> None:
    """Wait for every rank, then leave the process group (so no rank exits while another still
    needs it); a no-op when none was initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """``torch.distributed.barrier`` when distributed, else nothing."""
    if is_distributed():
        dist.barrier()


def _leader(per_node: bool) -> bool:
    return (get_local_rank() if per_node else get_rank()) == 0


@contextmanager
def rank0_first_context(per_node: bool = False) -> Iterator[bool]:
    """Run the block on rank 0 first; the other ranks enter it once rank 0 has left it.

    Yields True on the rank that goes first. For work that fills a cache on disk: rank 0 does it,
    the others find it done. ``per_node=True`` lets local rank 0 of every machine go first, for
    caches on node-local disks (multi-node runs without a shared filesystem).
    """
    leader = _leader(per_node)
    if not leader:
        barrier()
    try:
        yield leader
    finally:
        if leader:
            barrier()


def rank0_first(fn: Callable[..., T], per_node: bool = False) -> Callable[..., T]:
    """``fn`` wrapped so that rank 0 calls it first and the others call it after rank 0 returns.

    Usage in a bundle config: ``"$medaug.pipelines.distributed.rank0_first(stage.run)(...)"``,
    or as ``_target_`` of a component. ``fn`` must be cached (by content) for this to save work:
    the other ranks call it too and should find its output. If rank 0 raises, the others stay at
    the barrier until ``torchrun`` stops them (it stops every worker when one fails).
    """

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> T:
        with rank0_first_context(per_node):
            return fn(*args, **kwargs)

    return wrapped


def on_rank0_and_share(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` on rank 0 only and return its (picklable) result on every rank.

    For values every rank must agree on but computing them twice could give different answers
    (a run name with a timestamp) or costs too much (a manifest of generated images).
    """
    value = [fn(*args, **kwargs) if is_rank0() else None]
    if is_distributed():
        dist.broadcast_object_list(value, src=0)
    return value[0]


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``DistributedDataParallel``/``DataParallel`` (the network itself otherwise),
    for work one rank does alone: DDP's forward synchronises buffers with the other ranks and would
    wait for them forever."""
    if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        return network.module
    return network


def _library_writer_types() -> tuple[type, ...]:
    """MONAI's and Ignite's handler classes that write files, MLflow runs or console output.

    Classes of other libraries cannot declare ``rank0_only``, so they are named here; medaug's own
    writers declare it themselves, so this module knows none of them and imports nothing of
    medaug (the run tracker imports this module: naming it here made an import circle).
    """
    import monai.handlers
    from ignite.handlers import ProgressBar

    monai_writers = ("CheckpointSaver", "ClassificationSaver", "MetricsSaver", "MLFlowHandler", "StatsHandler")
    return (
        *(getattr(monai.handlers, name) for name in monai_writers),
        monai.handlers.TensorBoardStatsHandler,
        ProgressBar,
    )


def is_writer(handler: Any) -> bool:
    """True for a handler that only rank 0 may run (see :func:`rank0_handlers`).

    A handler that writes (files in the run folder, the MLflow run, console output) says so with the
    class attribute ``rank0_only = True``; MONAI's and Ignite's writers are known by their types.
    """
    return bool(getattr(handler, "rank0_only", False)) or isinstance(handler, _library_writer_types())


def rank0_handlers(handlers: Sequence[Any] | None) -> list[Any] | None:
    """The handler list for this rank: all of them on rank 0; on the other ranks only those that
    take part in training (learning-rate schedule, validation, early stopping, checkpoint loading).

    Filtering by what a handler is rather than by its position keeps ``multi_gpu_train.json`` valid
    when a bundle adds or reorders handlers; a new handler that writes declares ``rank0_only = True``.
    Validation and early stopping must stay on every rank: validation metrics are gathered from all
    ranks (Ignite's ``EpochMetric``), and every rank must stop at the same epoch or the others would
    wait for it forever.
    """
    if handlers is None or is_rank0():
        return None if handlers is None else list(handlers)
    return [h for h in handlers if not is_writer(h)]
