"""Bodies of the processes that tests/pipelines/test_distributed.py starts as a two-rank Gloo group (kept in a
module of their own with few imports: each spawned process imports it again)."""

import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from ignite.engine import Engine

from medaug.pipelines import distributed as D
from medaug.pipelines.train import AugmentationGridHandler
from medaug.pipelines.train.engine_metrics import epoch_metric


def two_ranks(rank: int, port: int, out_dir: str) -> None:
    """Body of one of two Gloo processes: ordering of rank0_first, shared values, and a validation
    metric over shards of different sizes."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    assert D.init_process_group("gloo") == torch.device("cpu") and D.is_distributed()
    order = []

    def stage():
        order.append((rank, time.monotonic()))
        time.sleep(0.3 if rank == 0 else 0.0)
        return time.monotonic()

    finished = D.rank0_first(stage)()
    started = order[0][1]
    all_times = [None, None]
    dist.all_gather_object(all_times, (started, finished))
    shared = D.on_rank0_and_share(lambda: f"chosen by rank {D.get_rank()}")

    # 5 validation images: rank 0 holds 3, rank 1 holds 2 (DistributedSampler without padding)
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    labels = torch.tensor([0, 1, 1, 1, 0])
    mine = [0, 2, 4] if rank == 0 else [1, 3]
    metric = epoch_metric("balanced_accuracy", positive_class=1)
    engine = Engine(lambda e, b: [{"pred": probs[i], "label": labels[i]} for i in b])
    metric.attach(engine, "bacc")
    engine.run([mine], max_epochs=1)
    result = {"times": all_times, "shared": shared, "bacc": engine.state.metrics["bacc"]}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    D.destroy_process_group()


class SeenImages:
    """Ignite handler for a bundle under ``torchrun``: writes ``seen-rank<r>.json`` (image references
    of every training batch, per epoch) so a test can tell which images each rank trained on."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.seen: dict[int, list[str]] = {}

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self.record)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def record(self, engine) -> None:
        # MONAI engines decollate the batch into one dict per image before this event
        refs = [item["image"].meta["filename_or_obj"] for item in engine.state.batch]
        self.seen.setdefault(engine.state.epoch, []).extend(refs)

    def write(self, engine) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"seen-rank{D.get_rank()}.json").write_text(json.dumps(self.seen))


class GridDrawnBy(AugmentationGridHandler):
    """The bundle's augmentation-grid handler, noting which rank drew the grid (``grid-rank<r>.json``
    in ``probe_dir``: the run folder it wrote to), so a test can tell whether other ranks drew it too."""

    def __init__(self, *args, probe_dir: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.probe_dir = Path(probe_dir)

    def __call__(self, engine=None) -> Path:
        grid = super().__call__(engine)
        self.probe_dir.mkdir(parents=True, exist_ok=True)
        (self.probe_dir / f"grid-rank{D.get_rank()}.json").write_text(json.dumps(str(grid.parent)))
        return grid
