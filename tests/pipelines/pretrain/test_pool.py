"""The pretraining pool: the study's train split, the shipped datasets' train arrays and the user's
folders, never a val or test image of the study (compared by pixels, after resizing to the study's
size), and a file that cannot be read is skipped and listed."""

import numpy as np
import pytest
from PIL import Image

from medaug.io import build_study_data
from medaug.io.npz import npz_splits
from medaug.pipelines.pretrain import build_pool
from medaug.pipelines.pretrain.pool import eval_hashes, pool_settings
from medaug.settings import SettingsError
from tests.conftest import BREAST_64


@pytest.fixture(scope="module")
def breast_study():
    # conflicting_duplicates keep: BreastMNIST's train/115 and test/76 are the same image; the study keeps
    # test/76, so the pool must leave out train/115 wherever it comes from
    return build_study_data(BREAST_64, conflicting_duplicates="keep", progress=False)


def test_the_pool_holds_no_val_or_test_image_of_the_study(breast_study, tmp_path):
    test_images = npz_splits(BREAST_64)["test"][0]
    folder = tmp_path / "unlabeled"
    folder.mkdir()
    Image.fromarray(test_images[3]).save(folder / "copy_of_test_3.png")  # a user's copy of a study test image
    noise = np.random.default_rng(0).integers(0, 256, (80, 80), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "scan.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")

    pool = build_pool(breast_study, (64, 64), channels=1, folders=[folder])

    assert not set(pool.hashes) & eval_hashes(breast_study, 1, (64, 64))
    assert str(folder / "copy_of_test_3.png") in pool.excluded_val_test
    assert "breastmnist_64.npz#train/115" in pool.excluded_val_test  # the shipped copy of test/76
    assert any(i.endswith("breastmnist_64.npz#train/115") for i in pool.excluded_val_test)  # and the study's own
    assert pool.summary()["excluded_val_test"] == len(pool.excluded_val_test) == 3
    assert not [i for i in pool.ids if "#val/" in i or "#test/" in i]
    assert str(folder / "scan.png") in pool.ids
    assert sorted(s["path"] for s in pool.skipped) == [str(folder / "broken.png"), str(folder / "notes.txt")]
    # the study's train images come first, so the shipped BreastMNIST adds nothing new: kept once
    assert pool.sources["study_train"] == len(breast_study.train) - 1 and pool.sources["breastmnist_64.npz"] == 0
    assert pool.sources["pneumoniamnist.npz"] > 4000 and pool.duplicates >= len(breast_study.train) - 1
    assert pool.images.shape == (len(pool), 1, 64, 64) and len(set(pool.hashes)) == len(pool)


def test_a_capped_pool_is_a_seeded_draw_that_ignores_the_order_of_its_sources(breast_study):
    kwargs = dict(image_size=(16, 16), shipped=False, max_images=50)
    first = build_pool(breast_study, seed=0, **kwargs)
    again = build_pool(breast_study, seed=0, **kwargs)
    other = build_pool(breast_study, seed=1, **kwargs)
    # train/115 is left out (identical to test/76) before the draw
    assert len(first) == 50 and first.capped == {"before": len(breast_study.train) - 1, "after": 50}
    assert first.fingerprint() == again.fingerprint() != other.fingerprint()


def test_pool_settings_name_the_bad_key_and_a_missing_folder(tmp_path):
    with pytest.raises(SettingsError, match=r"^pretrain#pool#folder: not a pool setting; the settings are"):
        pool_settings({"folder": "x"})
    assert pool_settings({"folders": str(tmp_path)})["folders"] == [str(tmp_path)]
    with pytest.raises(SettingsError, match=r"^pretrain#pool#folders = '.*nope': no such folder"):
        build_pool(None, (16, 16), shipped=False, folders=[tmp_path / "nope"])
