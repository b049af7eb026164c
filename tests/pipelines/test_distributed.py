"""DDP helpers: what each rank does, shown on real Gloo process groups of two CPU processes (no
launcher needed: ``torch.multiprocessing`` starts them), and as a single process, where every
helper behaves as rank 0 of 1."""

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ignite.handlers import ProgressBar
from monai.handlers import CheckpointSaver, EarlyStopHandler, MLFlowHandler, StatsHandler, ValidationHandler

from medaug.pipelines import distributed as D
from medaug.pipelines.tracking import RunTracker
from medaug.pipelines.tracking.server import free_port
from medaug.pipelines.train import AugmentationGridHandler
from medaug.pipelines.train.rebalance import make_distributed_sampler
from medaug.transforms.presets import AugmentationPlan
from tests.pipelines.ddp_workers import two_ranks


def test_outside_torchrun_every_helper_is_rank0_of_one(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert (D.get_rank(), D.get_world_size(), D.get_local_rank(), D.is_rank0(), D.is_distributed()) == (
        0,
        1,
        0,
        True,
        False,
    )
    assert D.init_process_group() == D.local_device() and not dist.is_initialized()
    assert D.default_backend() == ("nccl" if torch.cuda.is_available() else "gloo")
    assert D.rank0_first(lambda x: x + 1)(1) == 2
    assert D.on_rank0_and_share(lambda: "only me") == "only me"
    D.destroy_process_group()  # nothing to leave


class WritesAFigure:
    """A handler of a bundle's own: it writes, so it declares itself rank 0's alone."""

    rank0_only = True

    def attach(self, engine) -> None: ...


def test_other_ranks_keep_the_training_handlers_and_drop_the_writers(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # never contacted: no run is started
    handlers = [
        RunTracker("experiment", tmp_path, run_name="run"),
        AugmentationGridHandler(AugmentationPlan("generic"), data=[], preprocessing=[], output_dir=tmp_path),
        ValidationHandler(interval=1),
        StatsHandler(),
        MLFlowHandler(tracking_uri="http://127.0.0.1:9"),
        CheckpointSaver(str(tmp_path), {"m": torch.nn.Linear(1, 1)}, save_final=True),
        ProgressBar(),
        WritesAFigure(),
        EarlyStopHandler(patience=1, score_function=lambda e: 0.0),
    ]
    monkeypatch.setenv("RANK", "0")
    assert D.rank0_handlers(handlers) == handlers
    monkeypatch.setenv("RANK", "1")
    kept = D.rank0_handlers(handlers)
    assert [type(h).__name__ for h in kept] == ["ValidationHandler", "EarlyStopHandler"]
    assert D.rank0_handlers(None) is None


def test_unwrap_returns_the_network_inside_a_wrapper():
    net = torch.nn.Linear(2, 2)
    assert D.unwrap(torch.nn.DataParallel(net)) is net and D.unwrap(net) is net


@pytest.mark.parametrize("method", ["class_weight", "oversample"])
def test_each_rank_trains_on_its_own_part_of_the_data(method):
    labels = np.array([0] * 10 + [1] * 30)
    shards = [
        list(make_distributed_sampler(method, list(range(40)), labels, seed=3, num_replicas=2, rank=r)) for r in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 20, "equal lengths: DDP steps in lockstep"
    if method == "oversample":  # drawn with replacement inside each shard, minority favoured
        assert set(shards[0]).isdisjoint(shards[1])
        drawn = np.concatenate(shards)
        assert (labels[drawn] == 0).mean() > 0.35
    else:
        assert set(shards[0]).isdisjoint(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(40))


@pytest.mark.slow  # two processes that import torch, Ignite and MONAI: seconds
def test_two_gloo_ranks_rank0_first_shared_values_and_gathered_metrics(tmp_path):
    mp.spawn(two_ranks, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    (start0, end0), (start1, _) = results[0]["times"]
    assert start1 >= end0 > start0, "rank 1 starts the stage only after rank 0 has finished it"
    assert results[0]["shared"] == results[1]["shared"] == "chosen by rank 0"
    # the metric of all 5 images (recalls 1/2 and 2/3: prediction argmax 0,1,0,1,1), on both ranks
    assert results[0]["bacc"] == results[1]["bacc"] == pytest.approx((1 / 2 + 2 / 3) / 2)
