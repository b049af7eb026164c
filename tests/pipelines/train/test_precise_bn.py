"""Precise batch-norm statistics: the running statistics become the average over training batches."""

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

from medaug.pipelines.train import PreciseBatchNormHandler, recompute_batchnorm_statistics
from medaug.settings import SettingsError


def _net():
    """A conv + BatchNorm network whose running statistics are fresh (mean 0, variance 1)."""
    net = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 2))
    return net


def _batches(n=4, shift=5.0):
    gen = torch.Generator().manual_seed(0)
    return [{"image": shift + torch.randn(8, 1, 4, 4, generator=gen)} for _ in range(n)]


def test_running_statistics_become_the_equal_weight_average_over_the_batches():
    net = _net()
    net.eval()
    batches = _batches()
    used = recompute_batchnorm_statistics(net, batches)
    conv, bn = net[0], net[1]
    with torch.no_grad():
        features = [conv(b["image"]) for b in batches]
    expected_mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in features]).mean(0)
    expected_var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in features]).mean(0)
    assert used == 4
    torch.testing.assert_close(bn.running_mean, expected_mean)
    torch.testing.assert_close(bn.running_var, expected_var)
    assert bn.momentum == 0.1, "the layer's momentum is restored"
    assert not net.training, "the network's mode is restored"


def test_weights_do_not_change_and_max_batches_limits_the_pass():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert recompute_batchnorm_statistics(net, _batches(6), max_batches=2) == 2
    for k, v in before.items():
        torch.testing.assert_close(net.state_dict()[k], v)


def test_a_network_without_batchnorm_is_not_run():
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    assert recompute_batchnorm_statistics(net, _batches()) == 0


def test_the_handler_runs_before_validation_at_the_validation_interval():
    net = _net()
    batches = _batches(shift=5.0)
    seen = []
    trainer = Engine(lambda engine, batch: None)
    trainer.state.device = torch.device("cpu")
    PreciseBatchNormHandler(net, enabled=True, interval=2).attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(net[1].running_mean.mean().item()))
    trainer.data_loader = batches
    trainer.run(batches, max_epochs=2)
    # epoch 1: not re-estimated (the fresh layer's zero mean); epoch 2: the input's shift shows
    assert seen[0] == 0.0 and abs(seen[1]) > 0.1


def test_a_disabled_handler_leaves_the_statistics_alone():
    net = _net()
    batches = _batches()
    trainer = Engine(lambda engine, batch: None)
    trainer.state.device = torch.device("cpu")
    PreciseBatchNormHandler(net, enabled=False).attach(trainer)
    trainer.data_loader = batches
    trainer.run(batches, max_epochs=1)
    assert net[1].running_mean.abs().max().item() == 0.0


def test_the_cli_words_true_and_false_are_read_as_booleans_and_other_values_refused():
    # monai.bundle run passes `--precise_bn#enabled false` as the string "false", which bool() calls true
    assert PreciseBatchNormHandler(_net(), enabled="false").enabled is False
    assert PreciseBatchNormHandler(_net(), enabled="True").enabled is True
    for bad in ("off", 0, None):
        with pytest.raises(SettingsError, match="true or false"):
            PreciseBatchNormHandler(_net(), enabled=bad)
