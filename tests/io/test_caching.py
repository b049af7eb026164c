"""Data loading at scale: the dataset_type switch, cache keys that follow the content, and a folder
that is indexed once and indexed again only when it changes."""

import json
import logging
import os
import pathlib
import pickle
import shutil

import pytest
import torch
from monai.data import CacheDataset, Dataset
from monai.transforms import Compose, EnsureTyped, RandFlipd, Resized

import medaug.io.study_data as study_data_module
from medaug.io import LoadDatalistImaged, build_study_data, make_dataset
from medaug.io.caching import _describe, entry_content_hash, folder_listing_key, transform_hash


def preprocessing(size):
    return Compose(
        [
            LoadDatalistImaged(keys="image"),
            Resized(keys="image", spatial_size=size, mode="area"),
            EnsureTyped(keys="image", dtype=torch.float32),
            RandFlipd(keys="image", prob=0.5),
        ]
    )


def without_random_flip(size):
    """The preprocessing without its random flip: every item read is comparable."""
    return Compose(preprocessing(size).transforms[:3])


def test_content_hash_follows_pixels_label_and_file_bytes(tmp_path):
    entry = {"image": "/data/a.dcm", "label": 1, "pixel_hash": "abc", "frame": None}
    assert entry_content_hash(entry) == entry_content_hash(dict(entry))
    assert entry_content_hash(entry) != entry_content_hash({**entry, "pixel_hash": "abd"}), "new pixels, new key"
    assert entry_content_hash(entry) != entry_content_hash({**entry, "label": 0}), "the cached item holds the label"

    image = tmp_path / "x.png"  # no pixel hash (e.g. a generated image): the file's bytes are the content
    image.write_bytes(b"first")
    before = entry_content_hash({"image": str(image), "label": 0})
    image.write_bytes(b"second, longer")
    assert entry_content_hash({"image": str(image), "label": 0}) != before


def test_transform_hash_changes_with_the_preprocessing_settings_not_with_the_objects():
    deterministic = lambda size: preprocessing(size).transforms[:3]  # noqa: E731
    assert transform_hash(deterministic([32, 32])) == transform_hash(deterministic([32, 32]))
    assert transform_hash(deterministic([32, 32])) != transform_hash(deterministic([64, 64]))
    assert "0x" not in json.dumps(_describe(deterministic([32, 32])), default=str), "no memory addresses"


def test_dataset_type_switch(png_tree):
    data = [{"image": str(p), "label": 0} for p in sorted(png_tree.rglob("*.png"))[:4]]
    assert type(make_dataset(data, preprocessing([16, 16]), "Dataset")) is Dataset
    assert isinstance(make_dataset(data, preprocessing([16, 16]), "CacheDataset"), CacheDataset)
    with pytest.raises(ValueError, match="dataset_type 'LMDBDataset' is not one of"):
        make_dataset(data, preprocessing([16, 16]), "LMDBDataset")
    with pytest.raises(ValueError, match="needs a cache_dir"):
        make_dataset(data, preprocessing([16, 16]), "PersistentDataset")


def test_persistent_dataset_reuses_decoded_images_across_instances_and_keeps_their_names(png_tree, tmp_path):
    data = [
        {"image": str(p), "label": i % 2, "pixel_hash": f"h{i}"}
        for i, p in enumerate(sorted(png_tree.rglob("*.png"))[:4])
    ]
    cold = make_dataset(data, preprocessing([16, 16]), "PersistentDataset", cache_dir=tmp_path)
    first = [cold[i] for i in range(4)]
    cached = sorted((tmp_path / "persistent").glob("*.pt"))
    assert len(cached) == 4
    mtimes = [p.stat().st_mtime_ns for p in cached]

    warm = make_dataset(data, preprocessing([16, 16]), "PersistentDataset", cache_dir=tmp_path)
    second = [warm[i] for i in range(4)]
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "persistent").glob("*.pt"))] == mtimes, (
        "read, not rewritten"
    )
    assert all(a["image"].shape == b["image"].shape == (1, 16, 16) for a, b in zip(first, second))
    assert [s["image"].meta["filename_or_obj"] for s in second] == [d["image"] for d in data]

    make_dataset(data, preprocessing([24, 24]), "PersistentDataset", cache_dir=tmp_path)[0]
    assert len(list((tmp_path / "persistent").glob("*.pt"))) == 5, "another image_size is another cache entry"


class PlantedCode:
    """What a malicious cache file holds: unpickling it (weights_only=False) creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_planted_cache_file_runs_no_code_and_the_entry_is_recomputed(png_tree, tmp_path, monkeypatch, caplog):
    data = [
        {"image": str(p), "label": i % 2, "pixel_hash": f"h{i}"}
        for i, p in enumerate(sorted(png_tree.rglob("*.png"))[:3])
    ]
    cache = tmp_path / "cache"
    cold = make_dataset(data, without_random_flip([16, 16]), "PersistentDataset", cache_dir=cache)
    expected = [cold[i]["image"] for i in range(3)]
    files = sorted((cache / "persistent").glob("*.pt"))
    marker = tmp_path / "code_ran"
    torch.save({"image": PlantedCode(marker), "label": 0}, files[0])  # torch's zip format
    files[1].write_bytes(pickle.dumps(PlantedCode(marker), protocol=2))  # a bare pickle
    with pytest.raises(pickle.UnpicklingError):
        torch.load(files[0], weights_only=True)

    with caplog.at_level(logging.WARNING, logger="medaug.data"):
        warm = make_dataset(data, without_random_flip([16, 16]), "PersistentDataset", cache_dir=cache)
        items = [warm[i] for i in range(3)]
    assert not marker.exists(), "the planted pickle ran"
    assert all(torch.equal(a["image"].as_tensor(), b.as_tensor()) for a, b in zip(items, expected))
    assert [r.message.count("refused") for r in caplog.records] == [1, 1]
    assert "recomputed and stored again" in caplog.records[0].message
    assert [type(torch.load(f, weights_only=True)["image"]).__name__ for f in files] == ["MetaTensor"] * 3, "replaced"

    torch.save({"image": PlantedCode(marker)}, files[2])  # another user's file in a shared cache: kept
    real_unlink = pathlib.Path.unlink

    def unlink(self, *args, **kwargs):
        if self == files[2]:
            raise PermissionError(13, "Operation not permitted", str(self))
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medaug.data"):
        warm = make_dataset(data, without_random_flip([16, 16]), "PersistentDataset", cache_dir=cache)
        again = [warm[i] for i in range(3) for _ in range(2)]
    assert not marker.exists() and files[2].is_file()
    assert len(again) == 6 and all(s["image"].shape == (1, 16, 16) for s in again)
    assert len(caplog.records) == 1 and "computed at every read" in caplog.records[0].message

    pickle.loads(pickle.dumps(PlantedCode(marker)))  # the control: loaded as MONAI did before, it runs
    assert marker.exists()


def test_a_folder_is_indexed_once_and_again_when_a_file_changes(png_tree, tmp_path, monkeypatch):
    folder = shutil.copytree(png_tree, tmp_path / "data")
    cache = tmp_path / "cache"
    first = build_study_data(folder, index_cache=cache, progress=False)
    assert len(list(cache.glob("index-*.json"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("the unchanged folder was decoded again")

    monkeypatch.setattr(study_data_module, "scan_entries", no_decoding)
    again = build_study_data(folder, index_cache=cache, progress=False, seed=1)
    assert sorted(e["pixel_hash"] for e in again.entries) == sorted(e["pixel_hash"] for e in first.entries)
    assert again.content_hash() != first.content_hash(), "splits (seed 1) are made after the index"

    monkeypatch.undo()
    changed = sorted(folder.rglob("*.png"))[0]
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    key_before = folder_listing_key(png_tree)
    build_study_data(folder, index_cache=cache, progress=False)
    assert len(list(cache.glob("index-*.json"))) == 2, "a touched file makes a new index"
    assert folder_listing_key(png_tree) == key_before
