"""Mixing in the trainer: images and labels are mixed in the same proportions, class weights still
weigh soft labels, the feature-space method touches training forward passes only, and a seed
fixes it all."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.engines.utils import PrepareBatchDefault

from medaug.models import build_classifier
from medaug.pipelines.train.mixing import MixingPrepareBatch, last_linear_layer, make_prepare_batch
from medaug.pipelines.train.rebalance import make_loss


def batch(size=8, classes=2, seed=0):
    rng = np.random.default_rng(seed)
    labels = torch.as_tensor(np.arange(size) % classes)
    # each image is constant, equal to its own index: mixing proportions can be read off the pixels
    images = MetaTensor(torch.arange(size, dtype=torch.float32).view(-1, 1, 1, 1).repeat(1, 1, 16, 16))
    return {"image": images, "label": labels, "rng": rng}


def test_method_none_is_monai_default_prepare_batch():
    assert isinstance(make_prepare_batch({"method": "none"}, 2), PrepareBatchDefault)
    with pytest.raises(ValueError, match="augment#mix#method: 'mixups'"):
        make_prepare_batch({"method": "mixups"}, 2)
    with pytest.raises(ValueError, match=r"augment#mix: unknown key\(s\) \['beta'\]"):
        make_prepare_batch({"method": "mixup", "beta": 1}, 2)


def test_mixup_labels_carry_the_same_weights_as_the_images():
    data = batch()
    images, targets = MixingPrepareBatch("mixup", num_classes=2, alpha=0.4, seed=3)(data)
    assert targets.shape == (8, 2) and torch.allclose(targets.sum(1), torch.ones(8))
    for i in range(8):
        value = float(images[i, 0, 0, 0])  # lam * i + (1 - lam) * j
        own = targets[i, i % 2]
        if own < 1:  # paired with the other class: the label weight is the image weight
            j_candidates = [j for j in range(8) if j % 2 != i % 2]
            assert any(value == pytest.approx(float(own) * i + (1 - float(own)) * j, abs=1e-4) for j in j_candidates)


def test_cutmix_labels_follow_the_area_each_image_keeps():
    data = batch()
    images, targets = MixingPrepareBatch("cutmix", num_classes=2, alpha=1.0, seed=5)(data)
    for i in range(8):
        kept = float((images[i] == i).float().mean())
        other = images[i][images[i] != i]
        if len(other) and int(other[0]) % 2 != i % 2:
            assert float(targets[i, i % 2]) == pytest.approx(kept, abs=1e-6)
    assert (targets < 1).any(), "some labels are mixed"


def test_same_seed_same_mixing_and_prob_zero_leaves_batches_alone():
    first = MixingPrepareBatch("cutmix", 2, seed=1)(batch())
    second = MixingPrepareBatch("cutmix", 2, seed=1)(batch())
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    images, labels = MixingPrepareBatch("mixup", 2, prob=0.0, seed=1)(batch())
    assert torch.equal(images, batch()["image"]) and labels.dtype == torch.int64


def test_class_weighted_loss_still_weighs_soft_labels():
    train_labels = [0] * 10 + [1] * 40  # class 0 is rare: weight 2.5 vs 0.625
    loss = make_loss("class_weight", train_labels, 2)
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-1.0, 1.0]])
    soft = torch.tensor([[0.7, 0.3], [0.5, 0.5], [0.0, 1.0]])
    log_p = torch.log_softmax(logits, 1)
    expected = -(torch.tensor([2.5, 0.625]) * soft * log_p).sum(1).mean()
    assert float(loss(logits, soft)) == pytest.approx(float(expected), rel=1e-6)
    unweighted = make_loss("none", train_labels, 2)
    assert float(loss(logits, soft)) != pytest.approx(float(unweighted(logits, soft)))


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_manifold_mixup_mixes_penultimate_features_in_training_only(name):
    torch.manual_seed(0)
    net = build_classifier(name, in_channels=1, num_classes=2, spatial_size=(32, 32))
    seen = []
    last_linear_layer(net).register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    data = {"image": torch.rand(6, 1, 32, 32), "label": labels}
    mixer = MixingPrepareBatch("manifold_mixup", 2, alpha=1.0, network=net, seed=0)
    net.eval()
    with torch.no_grad():
        clean = net(data["image"])
        images, targets = mixer(data)
        assert torch.equal(images, data["image"]), "the images themselves pass unchanged"
        assert torch.equal(net(images), clean), "evaluation never mixes, even with a batch prepared"
        net.train()
        torch.manual_seed(1)  # the same dropout masks in both passes
        net(images)
        torch.manual_seed(1)
        net(images)  # the mixing applies once, to the batch it was prepared for
    mixed, plain = seen[-2], seen[-1]
    assert not torch.allclose(mixed, plain)
    assert targets.shape == (6, 2) and torch.allclose(targets.sum(1), torch.ones(6))
    for i in range(6):
        own = float(targets[i, labels[i]])
        if own < 1:  # paired with the other class: features mixed with the label's weight
            candidates = [own * plain[i] + (1 - own) * plain[j] for j in range(6) if labels[j] != labels[i]]
            assert any(torch.allclose(mixed[i], c, atol=1e-5) for c in candidates)
