"""The training loader never ends an epoch on a one-image batch: BatchNorm cannot normalise one value
per channel in training mode, which is what Inception-V3 at its minimum 75 px input meets in
``Mixed_7a`` (a 1 x 1 map). Only that lone image is dropped, never a larger remainder."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from medaug.models import build_classifier
from medaug.pipelines.train import drop_single_sample_batch
from tests.bundles.test_augment_bundle import bundle_parser


def test_only_a_remainder_of_one_image_is_dropped():
    assert drop_single_sample_batch(545, 32)  # BreastMNIST's train split after its conflicting duplicates
    assert not drop_single_sample_batch(544, 32)
    assert not drop_single_sample_batch(546, 32)  # a last batch of two trains
    assert not drop_single_sample_batch(31, 32)
    assert drop_single_sample_batch(1, 32)  # an epoch of a single image: nothing a BatchNorm can train on
    assert not drop_single_sample_batch(7, 1)  # batch size one is the user's explicit choice
    with pytest.raises(ValueError, match="batch_size"):
        drop_single_sample_batch(10, 0)


def test_inception_v3_at_75_px_trains_through_an_epoch_that_would_end_on_one_image():
    torch.manual_seed(0)
    network = build_classifier("inception_v3", in_channels=1, num_classes=2).train()
    images, labels = torch.randn(5, 1, 75, 75), torch.tensor([0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        network(images[:1])  # why the lone batch must go
    loader = DataLoader(TensorDataset(images, labels), batch_size=4, drop_last=drop_single_sample_batch(5, 4))
    sizes = [len(network(batch)) for batch, _ in loader]
    assert sizes == [4]


@pytest.mark.parametrize("extra, drops", [(1, True), (0, False)])
def test_the_bundle_train_loader_drops_a_lone_last_image(tmp_path, extra, drops):
    parser = bundle_parser(tmp_path)
    images = len(parser.get_parsed_content("train#dataset"))
    parser = bundle_parser(tmp_path, batch_size=images - extra)
    loader = parser.get_parsed_content("train#dataloader")
    assert loader.drop_last is drops
    assert len(loader) == 1  # one full batch; the lone image, when there is one, waits for the next epoch
