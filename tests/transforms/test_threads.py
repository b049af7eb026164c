"""ThreadLimitedCompose: the transforms run with the thread limit, the training step gets its threads back."""

import pytest
import torch
from monai.transforms import Lambdad, RandFlipd

from medaug.transforms import ThreadLimitedCompose


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_transforms_run_with_one_thread_and_the_count_is_restored_after(two_threads):
    seen = []
    compose = ThreadLimitedCompose([Lambdad("image", lambda x: seen.append(torch.get_num_threads()) or x)])
    compose({"image": torch.zeros(1, 4, 4)})
    assert seen == [1] and torch.get_num_threads() == 2


def test_the_count_is_restored_when_a_transform_fails(two_threads):
    def fail(x):
        raise RuntimeError("bad image")

    with pytest.raises(RuntimeError):
        ThreadLimitedCompose([Lambdad("image", fail)])({"image": torch.zeros(1, 4, 4)})
    assert torch.get_num_threads() == 2


def test_none_leaves_the_threads_alone_and_caching_still_finds_the_first_random_transform(two_threads):
    seen = []
    compose = ThreadLimitedCompose(
        [Lambdad("image", lambda x: seen.append(torch.get_num_threads()) or x), RandFlipd("image", prob=1.0)],
        num_threads=None,
    )
    compose({"image": torch.zeros(1, 4, 4)})
    assert seen == [2]
    assert compose.get_index_of_first(lambda t: isinstance(t, RandFlipd)) == 1
