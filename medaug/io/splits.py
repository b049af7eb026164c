"""Patient-level stratified splits and seeded imbalance simulation.

Splits are fixed first, on real data only; imbalance simulation then subsamples the train split
and never touches validation or test, so every strategy is scored on the same untouched images.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


def linked_groups(entries: list[dict]) -> list[str]:
    """For each entry, the name of its group: images of one patient, and images with identical pixels
    (``pixel_hash``), always belong to one group, so a split never puts copies of one image in two
    splits (a duplicate group is treated like one patient, joined with the patients it touches).

    A group is named by its first image in (pixel hash, relative path, frame) order, not by a patient
    pseudonym: pseudonyms depend on the project's pseudonym key, and a split must not (the same data
    and seed give the same split on every machine). Groups are the connected components (SciPy) of
    the graph linking entries that share a patient or a pixel hash."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    first_of: dict[tuple, int] = {}
    rows, cols = [], []
    for i, e in enumerate(entries):
        keys = [("patient", e["patient_id"])] + ([("pixels", e["pixel_hash"])] if e.get("pixel_hash") else [])
        for key in keys:
            j = first_of.setdefault(key, i)
            rows.append(i)
            cols.append(j)
    n = len(entries)
    _, component = connected_components(coo_matrix(([1] * len(rows), (rows, cols)), shape=(n, n)), directed=False)
    name: dict[int, str] = {}
    for e, c in zip(entries, component.tolist()):
        image = f"{e.get('pixel_hash') or ''}|{e.get('relpath') or e['image']}|{e.get('frame')}"
        name[c] = min(name.get(c, image), image)
    return [name[c] for c in component.tolist()]


def _carve(entries: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Split ``entries`` into (rest, carved) with ``carved`` about ``fraction`` of them, whole
    patients at a time and class proportions kept (scikit-learn's StratifiedGroupKFold: its first
    fold is the carved part). A group is a patient, joined with every patient holding a copy of one
    of its images (:func:`linked_groups`)."""
    if not entries or fraction <= 0:
        return entries, []
    groups = np.array(linked_groups(entries))
    n_groups = len(set(groups))
    n_splits = int(min(max(2, round(1 / fraction)), n_groups))
    if n_splits < 2:
        raise ValueError(
            f"cannot split {len(entries)} images from {n_groups} patient(s) (copies of one image count as one "
            "patient): need at least 2 patients"
        )
    labels = np.array([e["label"] for e in entries])
    try:
        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        _, carved_idx = next(folds.split(np.zeros(len(entries)), labels, groups))
        carved_set = set(carved_idx.tolist())
    except ValueError:  # classes smaller than the number of folds (a handful of patients)
        carved_set = _carve_few_patients(labels, groups, fraction, seed)
    rest = [e for i, e in enumerate(entries) if i not in carved_set]
    carved = [e for i, e in enumerate(entries) if i in carved_set]
    return rest, carved


def _carve_few_patients(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> set[int]:
    """Fallback for tiny datasets: per class (of each patient's first image), a seeded random
    ``fraction`` of its patients, at least one where the class has two or more patients."""
    rng = np.random.default_rng(seed)
    first_label = {}
    for label, group in zip(labels, groups):
        first_label.setdefault(group, label)
    carved_groups = set()
    for label in sorted(set(first_label.values())):
        members = sorted(g for g, lab in first_label.items() if lab == label)
        n = int(round(len(members) * fraction))
        n = max(n, 1) if len(members) >= 2 else 0
        carved_groups |= set(rng.permutation(members)[:n].tolist())
    return {i for i, g in enumerate(groups) if g in carved_groups}


def assign_splits(entries: list[dict], fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0) -> list[dict]:
    """Give every entry a ``split``; splits fixed by the source are kept.

    Entries without a split are divided train/val/test by ``fractions`` at the patient level
    (no patient in two splits), copies of one image (same ``pixel_hash``) kept in one split too.
    When the source fixed some splits but not all (say train and test only), the missing one is
    carved out of train in the same way; an unplaced copy of a placed image follows that image.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    train_f, val_f, test_f = fractions
    fixed = [dict(e) for e in entries if e.get("split")]
    free = [dict(e) for e in entries if not e.get("split")]
    # Entries of a patient already placed by the source follow that patient, copies of a placed image that image.
    placed = {e["patient_id"]: e["split"] for e in fixed}
    placed_pixels = {e["pixel_hash"]: e["split"] for e in fixed if e.get("pixel_hash")}
    for e in free:
        e["split"] = placed.get(e["patient_id"]) or placed_pixels.get(e.get("pixel_hash"))
    fixed += [e for e in free if e.get("split")]
    free = [e for e in free if not e.get("split")]
    rest, test = _carve(free, test_f, seed)
    rest, val = _carve(rest, val_f / max(train_f + val_f, 1e-9), seed + 1)
    for split, part in (("train", rest), ("val", val), ("test", test)):
        for e in part:
            e["split"] = split
    out = fixed + rest + val + test
    present = {e["split"] for e in out}
    for split, share in (("test", test_f), ("val", val_f / max(train_f + val_f, 1e-9))):
        if split not in present and share > 0:
            train = [e for e in out if e["split"] == "train"]
            others = [e for e in out if e["split"] != "train"]
            train, carved = _carve(train, share, seed + 2)
            for e in carved:
                e["split"] = split
            out = others + train + carved
    order = {id(e): i for i, e in enumerate(out)}
    return sorted(out, key=lambda e: (SPLITS.index(e["split"]), order[id(e)]))


def patients_in_several_splits(entries: list[dict]) -> dict[str, list[str]]:
    """Patient pseudonyms found in more than one split (a leak when splits come fixed from the source)."""
    seen: dict[str, set] = {}
    for e in entries:
        seen.setdefault(e["patient_id"], set()).add(e["split"])
    return {pid: sorted(s) for pid, s in seen.items() if len(s) > 1}


def _class_index(value, class_names: Sequence[str]) -> int:
    if isinstance(value, str) and value in class_names:
        return list(class_names).index(value)
    if isinstance(value, (int, np.integer)) and 0 <= int(value) < len(class_names):
        return int(value)
    if isinstance(value, str) and value.isdigit() and int(value) < len(class_names):
        return int(value)
    raise ValueError(f"imbalance class {value!r} is not one of the classes {list(class_names)}")


def simulate_imbalance(
    entries: list[dict], spec: Mapping | None, class_names: Sequence[str], seed: int = 0
) -> tuple[list[dict], dict]:
    """Subsample one class of the **train split only** (seeded), to study a rarer minority.

    ``spec`` (the bundle's ``imbalance`` section), one of:
        ``{"class": "malignant", "keep_fraction": 0.25}``: keep 25% of that class's train images;
        ``{"class": "malignant", "ratio": 0.1}``: keep as many as 0.1 x the largest other class;
        a list of these, applied in order: ``[{"class": "normal", "keep_fraction": 0.25},
        {"class": "pneumonia", "ratio": 0.25}]`` first shrinks the train split, then makes pneumonia
        the minority (a study's small dataset cut from a large one).
    None, ``{}`` or ``[]`` leaves the data as it is. Validation and test entries are returned untouched.
    Returns ``(entries, summary)``; the summary records what was removed (for a list: ``{"steps": [...]}``).
    """
    if not spec:
        return entries, {}
    if isinstance(spec, Sequence) and not isinstance(spec, (str, Mapping)):
        steps = []
        for i, step in enumerate(spec):
            if not isinstance(step, Mapping):
                raise ValueError(
                    f"imbalance step {i} must be a mapping like {{'class': ..., 'keep_fraction': ...}}, got {step!r}"
                )
            # Each step gets its own seed so two steps on one class do not draw the same images.
            entries, summary = simulate_imbalance(entries, step, class_names, seed=seed + 7919 * i)
            steps.append(summary)
        return entries, {"steps": steps}
    target = _class_index(spec.get("class"), class_names)
    train = [e for e in entries if e["split"] == "train"]
    candidates = [i for i, e in enumerate(entries) if e["split"] == "train" and e["label"] == target]
    counts = Counter(e["label"] for e in train)
    if "keep_fraction" in spec:
        fraction = float(spec["keep_fraction"])
        if not 0 < fraction <= 1:
            raise ValueError(f"imbalance keep_fraction must be in (0, 1], got {fraction}")
        keep_n = round(len(candidates) * fraction)
    elif "ratio" in spec:
        largest_other = max((n for label, n in counts.items() if label != target), default=0)
        keep_n = min(len(candidates), round(float(spec["ratio"]) * largest_other))
    else:
        raise ValueError("imbalance section needs 'keep_fraction' or 'ratio' (and 'class')")
    keep_n = max(keep_n, 0)
    rng = np.random.default_rng(seed)
    kept = set(rng.choice(candidates, size=keep_n, replace=False).tolist()) if keep_n else set()
    dropped = set(candidates) - kept
    out = [e for i, e in enumerate(entries) if i not in dropped]
    summary = {"class": class_names[target], "train_before": len(candidates), "train_after": keep_n}
    return out, summary


def _proportional_quota(counts: Mapping[int, int], total: int, floor: int = 1) -> dict[int, int]:
    """``total`` shared among classes in proportion to ``counts`` (largest remainder, ties to the lower
    label), every class keeping at least ``floor`` images (all of them when it has fewer)."""
    labels = sorted(counts)
    quota = {label: min(counts[label], floor) for label in labels}
    left = total - sum(quota.values())
    room = {label: counts[label] - quota[label] for label in labels}
    share = {label: left * room[label] / max(sum(room.values()), 1) for label in labels}
    for label in labels:
        quota[label] += int(share[label])
    by_remainder = sorted(labels, key=lambda lab: (-(share[lab] - int(share[lab])), lab))
    for label in by_remainder[: total - sum(quota.values())]:
        quota[label] += 1
    return quota


def cap_images_per_split(
    entries: list[dict],
    max_images: int | None,
    seed: int = 0,
    splits: Sequence[str] = SPLITS,
    min_per_class: int = 1,
) -> tuple[list[dict], dict]:
    """At most ``max_images`` images in each of ``splits`` (a smoke run's small data), applied after the
    split: a seeded draw per class, in proportion to the split's class counts, so class balance is kept
    and every class of the split keeps at least ``min_per_class`` images (all it has when fewer).
    Splits already small enough, and splits not named in ``splits``, are returned as they are; order
    is kept. ``None`` keeps every image.

    Written here rather than with scikit-learn's ``train_test_split(stratify=...)``: that refuses a
    class with a single image and can leave a rare class out, and a smoke run must keep every class.
    Returns ``(entries, summary)``, the summary ``{split: {"before": n, "after": max_images}}`` for
    each split that was cut.
    """
    if max_images is None:
        return entries, {}
    if isinstance(max_images, bool) or not isinstance(max_images, (int, np.integer)) or max_images < 1:
        raise ValueError(f"max_images_per_split must be a positive integer or null, got {max_images!r}")
    dropped: set[int] = set()
    summary = {}
    for split in splits:
        members = [i for i, e in enumerate(entries) if e["split"] == split]
        if len(members) <= max_images:
            continue
        by_class: dict[int, list[int]] = {}
        for i in members:
            by_class.setdefault(entries[i]["label"], []).append(i)
        sizes = {label: len(idx) for label, idx in by_class.items()}
        needed = sum(min(n, min_per_class) for n in sizes.values())
        if needed > max_images:
            raise ValueError(
                f"max_images_per_split={max_images} cannot keep {min_per_class} image(s) of each of the "
                f"{len(by_class)} classes of the {split} split; raise it to at least {needed}"
            )
        quota = _proportional_quota(sizes, int(max_images), min_per_class)
        rng = np.random.default_rng([seed, SPLITS.index(split)])
        for label in sorted(by_class):
            kept = set(rng.choice(by_class[label], size=quota[label], replace=False).tolist())
            dropped |= set(by_class[label]) - kept
        summary[split] = {"before": len(members), "after": int(max_images)}
    return [e for i, e in enumerate(entries) if i not in dropped], summary
