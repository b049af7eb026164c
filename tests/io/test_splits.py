"""Splits are patient-level and stratified; imbalance simulation touches the train split only."""

from collections import Counter
from pathlib import Path

import pytest

from medaug.io.splits import assign_splits, cap_images_per_split, patients_in_several_splits, simulate_imbalance


def make_entries(n_patients=60, images_per_patient=3, minority_every=4):
    entries = []
    for p in range(n_patients):
        label = 0 if p % minority_every == 0 else 1
        for k in range(images_per_patient):
            entries.append({"image": f"p{p}_{k}.dcm", "label": label, "patient_id": f"p{p}", "split": None})
    return entries


def test_no_patient_is_in_two_splits():
    entries = assign_splits(make_entries(), (0.7, 0.1, 0.2), seed=3)
    assert patients_in_several_splits(entries) == {}
    assert {e["split"] for e in entries} == {"train", "val", "test"}


def test_split_keeps_class_proportions_and_fractions():
    entries = assign_splits(make_entries(n_patients=200, images_per_patient=1), (0.7, 0.1, 0.2), seed=0)
    by_split = Counter(e["split"] for e in entries)
    assert by_split["test"] == pytest.approx(40, abs=4)
    assert by_split["val"] == pytest.approx(20, abs=4)
    for split in ("train", "val", "test"):
        labels = [e["label"] for e in entries if e["split"] == split]
        assert sum(1 for x in labels if x == 0) / len(labels) == pytest.approx(0.25, abs=0.06)


def test_the_split_does_not_depend_on_the_pseudonym_key():
    from medaug.io.phi import pseudonym

    def split_under(key: bytes, n_patients: int) -> dict:
        entries = [{**e, "patient_id": pseudonym(e["patient_id"], key=key)} for e in make_entries(n_patients)]
        return {e["image"]: e["split"] for e in assign_splits(entries, seed=7)}

    for n_patients in (60, 5):  # many patients, a handful
        assert split_under(b"one site", n_patients) == split_under(b"another site", n_patients), n_patients


def test_same_seed_same_split_other_seed_other_split():
    a = assign_splits(make_entries(), seed=7)
    b = assign_splits(make_entries(), seed=7)
    c = assign_splits(make_entries(), seed=8)
    as_map = lambda entries: {e["image"]: e["split"] for e in entries}  # noqa: E731
    assert as_map(a) == as_map(b)
    assert as_map(a) != as_map(c)


def test_fixed_splits_are_kept_and_a_missing_val_is_carved_from_train():
    entries = make_entries(n_patients=40, images_per_patient=1)
    for i, e in enumerate(entries):
        e["split"] = "test" if i % 5 == 0 else "train"
    out = assign_splits(entries, seed=0)
    fixed_test = {e["image"] for i, e in enumerate(entries) if i % 5 == 0}
    assert {e["image"] for e in out if e["split"] == "test"} == fixed_test
    assert any(e["split"] == "val" for e in out)


def test_imbalance_keep_fraction_subsamples_train_only():
    entries = assign_splits(make_entries(n_patients=200, images_per_patient=1, minority_every=2), seed=0)
    out, summary = simulate_imbalance(entries, {"class": "a", "keep_fraction": 0.25}, ["a", "b"], seed=1)
    before = Counter((e["split"], e["label"]) for e in entries)
    after = Counter((e["split"], e["label"]) for e in out)
    assert after[("train", 0)] == round(before[("train", 0)] * 0.25)
    assert after[("train", 1)] == before[("train", 1)]
    for split in ("val", "test"):
        assert [e for e in out if e["split"] == split] == [e for e in entries if e["split"] == split]
    assert summary == {"class": "a", "train_before": before[("train", 0)], "train_after": after[("train", 0)]}


def test_imbalance_ratio_and_seed():
    entries = assign_splits(make_entries(n_patients=200, images_per_patient=1, minority_every=2), seed=0)
    n_other = sum(1 for e in entries if e["split"] == "train" and e["label"] == 1)
    out1, _ = simulate_imbalance(entries, {"class": 0, "ratio": 0.1}, ["a", "b"], seed=5)
    out2, _ = simulate_imbalance(entries, {"class": 0, "ratio": 0.1}, ["a", "b"], seed=5)
    kept = [e["image"] for e in out1 if e["split"] == "train" and e["label"] == 0]
    assert len(kept) == round(0.1 * n_other)
    assert kept == [e["image"] for e in out2 if e["split"] == "train" and e["label"] == 0]


def test_imbalance_steps_apply_in_order_to_cut_a_small_set_with_the_other_class_rarer():
    """A list of steps: first keep a quarter of class b, then cut class a to half of what b has left."""
    entries = assign_splits(make_entries(n_patients=400, images_per_patient=1, minority_every=2), seed=0)
    steps = [{"class": "b", "keep_fraction": 0.25}, {"class": "a", "ratio": 0.5}]
    out, summary = simulate_imbalance(entries, steps, ["a", "b"], seed=3)
    before = Counter(e["label"] for e in entries if e["split"] == "train")
    after = Counter(e["label"] for e in out if e["split"] == "train")
    assert after[1] == round(0.25 * before[1]) and after[0] == round(0.5 * after[1])
    assert [s["class"] for s in summary["steps"]] == ["b", "a"] and summary["steps"][1]["train_after"] == after[0]
    for split in ("val", "test"):
        assert [e for e in out if e["split"] == split] == [e for e in entries if e["split"] == split]
    assert simulate_imbalance(entries, steps, ["a", "b"], seed=3)[0] == out  # seeded
    assert simulate_imbalance(entries, [], ["a", "b"])[0] is entries
    with pytest.raises(ValueError, match="imbalance step 1 must be a mapping"):
        simulate_imbalance(entries, [{"class": "a", "keep_fraction": 0.5}, 0.5], ["a", "b"])


def test_imbalance_none_and_bad_specs():
    entries = assign_splits(make_entries(), seed=0)
    assert simulate_imbalance(entries, None, ["a", "b"])[0] is entries
    with pytest.raises(ValueError, match="not one of the classes"):
        simulate_imbalance(entries, {"class": "zebra", "keep_fraction": 0.5}, ["a", "b"])
    with pytest.raises(ValueError, match="keep_fraction"):
        simulate_imbalance(entries, {"class": "a", "keep_fraction": 1.5}, ["a", "b"])


def split_entries(counts: dict[str, dict[int, int]]) -> list[dict]:
    """``{split: {label: n}}`` as entries, one patient per image."""
    return [
        {"image": f"{split}_{label}_{i}.png", "label": label, "patient_id": f"{split}{label}_{i}", "split": split}
        for split, per_class in counts.items()
        for label, n in per_class.items()
        for i in range(n)
    ]


def tally(entries: list[dict]) -> dict[str, dict[int, int]]:
    out: dict[str, dict[int, int]] = {}
    for e in entries:
        out.setdefault(e["split"], Counter())[e["label"]] += 1
    return {split: dict(c) for split, c in out.items()}


def test_the_smoke_cap_cuts_each_large_split_to_the_cap_keeping_class_shares_and_the_rare_class():
    entries = split_entries({"train": {0: 147, 1: 399, 2: 3}, "val": {0: 21, 1: 57}, "test": {0: 2, 1: 400}})
    capped, summary = cap_images_per_split(entries, 100, seed=0)
    # proportional per class (largest remainder), every class keeping at least one image
    assert tally(capped) == {"train": {0: 27, 1: 72, 2: 1}, "val": {0: 21, 1: 57}, "test": {0: 1, 1: 99}}
    at_least_two, _ = cap_images_per_split(entries, 100, seed=0, min_per_class=2)  # what training needs
    assert tally(at_least_two)["train"] == {0: 27, 1: 71, 2: 2} and tally(at_least_two)["test"] == {0: 2, 1: 98}
    assert summary == {"train": {"before": 549, "after": 100}, "test": {"before": 402, "after": 100}}
    assert all(e in entries for e in capped) and len({e["image"] for e in capped}) == len(capped)
    kept = [e["image"] for e in capped]
    assert kept == [e["image"] for e in entries if e["image"] in set(kept)], "the order of the entries is kept"


def test_the_smoke_cap_is_seeded_and_none_keeps_every_image():
    entries = split_entries({"train": {0: 50, 1: 150}, "val": {0: 10, 1: 10}, "test": {0: 20, 1: 60}})
    images = lambda seed: [e["image"] for e in cap_images_per_split(entries, 40, seed=seed)[0]]  # noqa: E731
    assert images(3) == images(3) and images(3) != images(4)
    only_train, summary = cap_images_per_split(entries, 40, seed=3, splits=("train",))
    assert tally(only_train) == {"train": {0: 10, 1: 30}, "val": {0: 10, 1: 10}, "test": {0: 20, 1: 60}}
    assert cap_images_per_split(entries, None, seed=3) == (entries, {})


def test_a_smoke_cap_below_the_number_of_classes_or_not_a_count_is_an_error():
    entries = split_entries({"train": {0: 5, 1: 5, 2: 5}})
    with pytest.raises(ValueError, match=r"max_images_per_split=2 cannot keep 1 image\(s\) of each of the 3 classes"):
        cap_images_per_split(entries, 2)
    with pytest.raises(ValueError, match=r"keep 2 image\(s\) of each of the 3 classes .* raise it to at least 6"):
        cap_images_per_split(entries, 5, min_per_class=2)
    for bad in (0, -5, 2.5, True, "100"):
        with pytest.raises(ValueError, match="max_images_per_split must be a positive integer or null"):
            cap_images_per_split(entries, bad)


def test_study_data_with_a_cap_reports_the_leaks_of_the_whole_data_and_records_the_cut(tmp_path, png_split_tree):
    import shutil

    from medaug.io import build_study_data

    root = Path(shutil.copytree(png_split_tree, tmp_path / "tree"))  # 12 images per class and split
    shutil.copy(sorted((root / "Train" / "malignant").glob("*.png"))[0], root / "Test" / "malignant" / "copy.png")
    data = build_study_data(root, max_images_per_split=10, progress=False)
    assert data.counts() == {split: {"malignant": 5, "normal_benign": 5} for split in ("train", "val", "test")}
    assert len(data.leaks) == 1, "leaks are checked before the cut: a smoke run reports what the full run would"
    assert data.fingerprint()["capped"] == {
        "train": {"before": 24, "after": 10},
        "val": {"before": 24, "after": 10},
        "test": {"before": 25, "after": 10},
    }
    other_seed = build_study_data(root, max_images_per_split=10, seed=1, progress=False)
    assert {e["image"] for e in other_seed.test} == {e["image"] for e in data.test}, "test drawn alike for every seed"
    assert {e["image"] for e in other_seed.train} != {e["image"] for e in data.train}
    assert len(build_study_data(root, progress=False).entries) == 73
