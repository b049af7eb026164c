"""The fine-tuning recipe's mechanisms: the head at the full learning rate and pretrained weights at a
scaled one, linear warm-up before the cosine schedule, and the moving average of the weights."""

import pytest
import torch
from ignite.engine import Engine
from torch import nn

from medaug.models import CLASSIFIERS, build_classifier
from medaug.models.classifiers import MIN_INPUT_SIZE
from medaug.pipelines.train import EMAHandler, classification_head, make_lr_scheduler, param_groups
from medaug.settings import SettingsError

# the classification head of each zoo network, by parameter name
HEADS = {
    "resnet18": "fc",
    "resnet34": "fc",
    "resnet50": "fc",
    "densenet121": "class_layers.out",
    "efficientnet-b0": "_fc",
    "efficientnet-v2-s": "classifier.1",
    "vgg16-bn": "classifier.6",
    "inception-v3": "fc",
    "small_cnn": "final.1",
}


def test_every_zoo_network_has_its_head_listed_here():
    assert set(HEADS) == set(CLASSIFIERS)


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_the_head_trains_at_lr_and_everything_else_at_the_scaled_lr(name):
    size = max(32, MIN_INPUT_SIZE.get(name, 1))
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost (VGG-16 has 134 M weights)
        network = build_classifier(name, in_channels=1, num_classes=3, spatial_size=[size, size])
    pretrained, head = param_groups(network, lr=1e-3, pretrained_lr_scale=0.1)
    assert (pretrained["lr"], head["lr"]) == (pytest.approx(1e-4), 1e-3)
    named = {id(p): n for n, p in network.named_parameters()}
    assert sorted(named[id(p)] for p in head["params"]) == [f"{HEADS[name]}.bias", f"{HEADS[name]}.weight"]
    assert classification_head(network).out_features == 3
    everything = [id(p) for p in pretrained["params"]] + [id(p) for p in head["params"]]
    assert sorted(everything) == sorted(named), "each parameter in exactly one group"


def test_a_scale_of_one_is_one_group_of_all_parameters():
    network = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    (group,) = param_groups(network, lr=0.01, pretrained_lr_scale=1.0)
    assert group["lr"] == 0.01 and len(group["params"]) == 4


def _lrs(warmup, epochs=6, lr=1.0, eta_min=0.0):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = make_lr_scheduler(optimizer, max_epochs=epochs, warmup_epochs=warmup, eta_min=eta_min)
    seen = []
    for _ in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_without_warm_up_the_schedule_is_the_plain_cosine_one():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=6, eta_min=0.0)
    expected = []
    for _ in range(6):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        cosine.step()
    assert _lrs(0) == pytest.approx(expected)


def test_warm_up_rises_linearly_to_the_lr_then_anneals():
    lrs = _lrs(2, epochs=6)
    assert lrs[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:])), "cosine decay after the warm-up"


def _net():
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


def test_ema_averages_weights_and_batchnorm_statistics_after_each_iteration():
    network = _net()
    ema = EMAHandler(network, decay=0.5, enabled=True)
    trainer = Engine(lambda engine, batch: network[0].weight.data.fill_(batch))
    ema.attach(trainer)
    network[1].running_mean.fill_(4.0)
    trainer.run([2.0, 4.0, 8.0], max_epochs=1)
    # first update copies (2), then 0.5 * 2 + 0.5 * 4 = 3, then 0.5 * 3 + 0.5 * 8 = 5.5
    assert torch.allclose(ema.eval_network[0].weight, torch.full((2, 2), 5.5))
    assert torch.allclose(ema.eval_network[1].running_mean, torch.full((2,), 4.0)), "buffers are averaged too"


def test_the_ema_model_has_the_networks_layout_so_its_checkpoint_loads_strictly():
    network = _net()
    ema = EMAHandler(network, decay=0.9, enabled=True)
    ema.update()
    fresh = _net()
    result = fresh.load_state_dict(ema.eval_network.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_ema_looks_through_ddp_style_wrappers():
    network = _net()
    wrapped = nn.DataParallel(network)  # unwrap() treats it like DistributedDataParallel
    ema = EMAHandler(wrapped, decay=0.9, enabled=True)
    assert set(ema.eval_network.state_dict()) == set(network.state_dict())


def test_disabled_ema_changes_nothing():
    network = _net()
    ema = EMAHandler(network, enabled=False)
    trainer = Engine(lambda engine, batch: None)
    ema.attach(trainer)
    assert ema.eval_network is network and not trainer.has_event_handler(ema.update)


def test_ema_reads_the_cli_words_and_refuses_anything_else():
    # `--ema#enabled false` reaches the handler as the string "false"; bool("false") would switch EMA on
    assert EMAHandler(_net(), enabled="false").averaged is None
    assert EMAHandler(_net(), enabled="true").averaged is not None
    with pytest.raises(SettingsError, match="ema#enabled"):
        EMAHandler(_net(), enabled="no")
