"""The classifier factory builds MONAI networks for any channel count and the study's image size,
and loads local weights as far as they fit, never downloading anything."""

import json
from pathlib import Path

import pytest
import torch

from medaug.models import CLASSIFIERS, build_classifier, load_pretrained
from medaug.models.classifiers import MIN_INPUT_SIZE
from medaug.settings import SettingsError


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
@pytest.mark.parametrize("channels,size,classes", [(1, (32, 32), 2), (3, (64, 48), 3)])
def test_every_classifier_gives_one_logit_per_class(name, channels, size, classes):
    torch.manual_seed(0)
    size = tuple(max(side, MIN_INPUT_SIZE.get(name, 1)) for side in size)
    net = build_classifier(name, in_channels=channels, num_classes=classes, spatial_size=size).eval()
    with torch.no_grad():
        out = net(torch.rand(2, channels, *size))
    assert out.shape == (2, classes)


@pytest.mark.parametrize("name", ["resnet18", "small_cnn"])
def test_small_networks_take_medmnist_28px(name):
    net = build_classifier(name, in_channels=1, num_classes=2, spatial_size=(28, 28)).eval()
    assert net(torch.rand(1, 1, 28, 28)).shape == (1, 2)


@pytest.mark.parametrize(
    "name,smallest",
    [("densenet121", 32), ("efficientnet-b0", 32), ("vgg16_bn", 32), ("efficientnet_v2_s", 32), ("inception_v3", 75)],
)
def test_too_small_images_get_a_clear_error(name, smallest):
    with pytest.raises(SettingsError, match=rf"^image_size = \[28, 28\]: {name} needs images of at least {smallest}"):
        build_classifier(name, spatial_size=(28, 28))


def test_names_are_forgiving_and_unknown_names_are_listed():
    assert isinstance(build_classifier("EfficientNet_B0", spatial_size=(32, 32)), torch.nn.Module)
    with pytest.raises(SettingsError, match="resnet18"):
        build_classifier("alexnet")
    with pytest.raises(SettingsError, match=r"^classifier = 'resnet19': not one of .*; did you mean 'resnet18'\?$"):
        build_classifier("resnet19")


def test_resnet_stem_follows_image_size():
    small = build_classifier("resnet18", spatial_size=(28, 28))
    large = build_classifier("resnet18", spatial_size=(64, 64))
    assert small.conv1.stride == (1, 1) and small.conv1.kernel_size == (3, 3)
    assert large.conv1.stride == (2, 2) and large.conv1.kernel_size == (7, 7)
    assert build_classifier("resnet18", spatial_size=(64, 64), stem="half").conv1.stride == (1, 1)


def test_pretrained_rgb_weights_load_into_a_grayscale_network(tmp_path):
    rgb = build_classifier("resnet18", in_channels=3, num_classes=1000, spatial_size=(64, 64))
    torch.save({"state_dict": {f"module.{k}": v for k, v in rgb.state_dict().items()}}, tmp_path / "rgb.pt")
    gray = build_classifier("resnet18", in_channels=1, num_classes=2, spatial_size=(64, 64))
    report = load_pretrained(gray, tmp_path / "rgb.pt")
    torch.testing.assert_close(gray.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(gray.layer1[0].conv1.weight, rgb.layer1[0].conv1.weight)
    assert report["mismatched"] == ["fc.bias", "fc.weight"]
    assert report["missing"] == ["fc.bias", "fc.weight"]
    # a gray image gives the same first-layer response as the same image repeated in 3 channels
    x = torch.rand(1, 1, 64, 64)
    torch.testing.assert_close(gray.conv1(x), rgb.conv1(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)


def test_pretrained_path_must_exist():
    with pytest.raises(FileNotFoundError, match="pretrained_path"):
        build_classifier("small_cnn", spatial_size=(32, 32), pretrained_path="/nonexistent/weights.pt")


TORCHVISION_LAYOUTS = json.loads(
    (Path(__file__).resolve().parents[1] / "data" / "torchvision_layouts.json").read_text()
)


@pytest.mark.parametrize(
    "name,options", [("vgg16_bn", {}), ("inception_v3", {"aux_logits": True}), ("efficientnet_v2_s", {})]
)
def test_builds_have_torchvisions_parameter_names_and_shapes(name, options):
    net = build_classifier(name, in_channels=3, num_classes=1000, spatial_size=(299, 299), **options)
    ours = {key: list(tensor.shape) for key, tensor in net.state_dict().items()}
    assert ours == TORCHVISION_LAYOUTS[name]


@pytest.mark.parametrize(
    "name,options", [("vgg16_bn", {}), ("inception_v3", {"aux_logits": True}), ("efficientnet_v2_s", {})]
)
def test_a_torchvision_state_dict_loads_with_no_missing_or_unexpected_keys(tmp_path, name, options):
    # One random value per tensor, broadcast to its shape: the file stays small (a 0-stride tensor saves
    # one element) while keys and shapes are exactly torchvision's.
    values = torch.rand(len(TORCHVISION_LAYOUTS[name]), generator=torch.Generator().manual_seed(0))
    state = {
        key: value.expand(shape)
        for (key, shape), value in zip(TORCHVISION_LAYOUTS[name].items(), values)
        if not key.endswith("num_batches_tracked")
    }
    torch.save(state, tmp_path / f"{name}.pth")
    net = build_classifier(name, in_channels=3, num_classes=1000, spatial_size=(299, 299), **options)
    report = load_pretrained(net, tmp_path / f"{name}.pth")
    assert report["unexpected"] == [] and report["mismatched"] == []
    assert [key for key in report["missing"] if not key.endswith("num_batches_tracked")] == []
    some_key = next(iter(state))
    torch.testing.assert_close(net.state_dict()[some_key], state[some_key])


def test_inception_trains_with_its_auxiliary_classifier_and_predicts_without_it():
    from medaug.models.inception import InceptionLoss, InceptionOutputs

    torch.manual_seed(0)
    net = build_classifier("inception_v3", in_channels=1, num_classes=2, spatial_size=(75, 75), aux_logits=True)
    x, y = torch.rand(2, 1, 75, 75), torch.tensor([0, 1])
    train_out = net.train()(x)
    assert isinstance(train_out, InceptionOutputs) and train_out.aux_logits.shape == (2, 2)
    loss = InceptionLoss(torch.nn.CrossEntropyLoss())(train_out, y)
    loss.backward()
    assert net.AuxLogits.fc.weight.grad is not None
    assert net.eval()(x).shape == (2, 2)
    with pytest.raises(ValueError, match="at least 75"):
        net(torch.rand(1, 1, 64, 64))


# MONAI's networks and medaug's EfficientNet-V2 (VGG and Inception are medaug's own, on torch defaults)
@pytest.mark.parametrize("name", ["efficientnet-b0", "efficientnet-v2-s", "densenet121", "resnet18"])
def test_batch_norm_statistics_settle_within_a_small_datasets_iterations(name):
    """A study on 169 images trains a few hundred iterations: a batch-norm momentum of 0.01 (MONAI's
    EfficientNet default, TensorFlow's 0.99) leaves the running statistics near their start, and the
    network in eval mode predicts one class. Every zoo network keeps torch's usual 0.1 or more."""
    size = max(32, MIN_INPUT_SIZE.get(name, 1))
    model = build_classifier(name, 1, 2, spatial_size=(size, size))
    momenta = {m.momentum for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert all(m is None or m >= 0.1 for m in momenta), momenta


@pytest.mark.parametrize("side,pooled", [(32, 1), (64, 2), (96, 3)])
def test_vgg_pools_to_its_feature_maps_own_size_and_folds_torchvision_heads_exactly(tmp_path, side, pooled):
    # torchvision pools to 7 x 7 (upsampling small maps); medaug pools to the map's own side, and a
    # checkpoint in torchvision's 7 x 7 layout loads folded, computing the same logits at that size.
    torch.manual_seed(0)
    small_head = {"in_channels": 1, "num_classes": 2, "hidden_features": 16}  # the fold does not depend on it
    torchvision_like = build_classifier("vgg16_bn", pooled_size=7, **small_head).eval()
    torch.save(torchvision_like.state_dict(), tmp_path / "vgg16_bn.pth")
    net = build_classifier("vgg16_bn", spatial_size=(side, side), **small_head)
    assert net.classifier[0].in_features == 512 * pooled * pooled
    report = load_pretrained(net, tmp_path / "vgg16_bn.pth")
    assert report == {"missing": [], "unexpected": [], "mismatched": []}
    images = torch.rand(3, 1, side, side)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(images), torchvision_like(images), rtol=1e-4, atol=1e-5)
