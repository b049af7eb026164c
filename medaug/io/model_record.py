"""The record of a trained model: what inference needs to rebuild its network and read images the way
training did, kept beside the checkpoint (``runs/<run>/model.pt`` -> ``runs/<run>/model.json``) and
embedded in a TorchScript export (extra file ``model.json``).

A PyTorch checkpoint holds weights only, and MONAI's bundle metadata (``configs/metadata.json``) describes
the bundle as shipped, not each run of it; a run trained with another classifier, image size or data
would otherwise need its settings copied into ``configs/inference.json`` by hand. This module reads and
writes that small JSON file; it imports no network or training code (``medaug predict`` reads it on the
TorchScript path too).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from medaug.io.atomic import write_json_atomic
from medaug.io.output_set import utc_now

RECORD_FORMAT = "medaug.model_record/1"
RECORD_NAME = "model.json"  # beside model.pt, and the extra file's name in a TorchScript export
#: what inference rebuilds the network and its input from; a record without one of them is refused
NETWORK_KEYS = ("classifier", "image_size", "channels", "class_names")


class ModelRecordError(ValueError):
    """A model record that exists but cannot be used; the message names the file."""


def record_path(ckpt_path: str | os.PathLike) -> Path:
    """Where the record of ``ckpt_path`` lives: ``model.pt`` -> ``model.json`` in the same folder."""
    return Path(ckpt_path).with_suffix(".json")


def preset_modalities(plan) -> list[str] | None:
    """The DICOM modalities an augmentation preset is made for (``modalities:`` of its YAML), upper case;
    None when it names none (``generic``, ``none``): the model then takes any modality."""
    names = (getattr(plan, "config", None) or {}).get("modalities") or []
    return [str(m).strip().upper() for m in names] or None


def preprocessing_summary(preprocessing: Sequence, *, channels: int, image_size: Sequence[int], frames: str) -> dict:
    """What the validation transforms do to an image, in words a reader (or another tool) can follow."""
    return {
        "transforms": [type(t).__name__ for t in preprocessing],
        "reader": "medaug.io.LoadDatalistImaged: DICOM (modality/VOI LUT), PNG/JPEG, NIfTI, .npz",
        "intensity": "scaled to [0, 1] per image",
        "channels": int(channels),
        "frames": str(frames),
        "resize": {"spatial_size": [int(s) for s in image_size], "mode": "area"},
        "dtype": "float32",
    }


def build_model_record(
    *,
    classifier: str,
    image_size: Sequence[int],
    channels: int,
    class_names: Sequence[str],
    positive_class=None,
    preprocessing: Sequence = (),
    frames: str = "middle",
    augmentation_plan=None,
    bundle_root: str | os.PathLike | None = None,
    run_name: str | None = None,
) -> dict:
    """The record of a training run (see the module docstring).

    Args:
        positive_class: the bundle's ``positive_class`` (a class name, an index or None), recorded as a
            class name, or None when it names no class (macro metrics).
        preprocessing: the validation transforms (``train.json``'s ``preprocessing``), summarised.
        augmentation_plan: the run's :class:`~medaug.transforms.presets.AugmentationPlan`; its preset's
            modalities become the modalities ``medaug predict`` accepts by default, its flips
            (``flip_axes``) what ``tta flip`` averages over.
        bundle_root: the bundle, whose ``configs/metadata.json`` gives its name and version.
    """
    names = [str(n) for n in class_names]
    if isinstance(positive_class, int) and 0 <= positive_class < len(names):
        positive_class = names[positive_class]
    meta_file = Path(bundle_root) / "configs" / "metadata.json" if bundle_root is not None else None
    meta = json.loads(meta_file.read_text()) if meta_file is not None and meta_file.is_file() else {}
    return {
        "format": RECORD_FORMAT,
        "classifier": str(classifier),
        "image_size": [int(s) for s in image_size],
        "channels": int(channels),
        "class_names": names,
        "num_classes": len(names),
        "positive_class": positive_class if positive_class in names else None,
        "preprocessing": preprocessing_summary(preprocessing, channels=channels, image_size=image_size, frames=frames),
        "preset": getattr(augmentation_plan, "name", None),
        "modalities": preset_modalities(augmentation_plan),
        # the spatial axes training flipped: what test-time flip augmentation (tta flip) averages over
        "flip_axes": augmentation_plan.flip_axes() if hasattr(augmentation_plan, "flip_axes") else None,
        "bundle": {
            "name": Path(bundle_root).resolve().name if bundle_root is not None else "",
            "title": str(meta.get("name", "")),
            "version": str(meta.get("version", "")),
        },
        "run_name": run_name,
        "written_at": utc_now(),
    }


def write_model_record(ckpt_path: str | os.PathLike, record: Mapping) -> Path:
    """Write ``record`` beside ``ckpt_path`` (:func:`record_path`), atomically; returns its path."""
    return write_json_atomic(record_path(ckpt_path), dict(record))


def check_model_record(record, source: str) -> dict:
    """``record`` if it is one (a mapping with :data:`NETWORK_KEYS`), else :class:`ModelRecordError`."""
    if not isinstance(record, Mapping):
        raise ModelRecordError(f"{source}: not a model record (a JSON object is expected)")
    missing = [k for k in NETWORK_KEYS if record.get(k) in (None, "", [])]
    if missing:
        raise ModelRecordError(f"{source}: model record without {', '.join(missing)}")
    return dict(record)


def _torchscript_extra(path: Path, name: str) -> bytes | None:
    """The extra file ``name`` of a TorchScript archive (``torch.jit.save(_extra_files=...)``), read from
    the zip without loading the model; None if the file is no archive or has none."""
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if member.endswith(f"/extra/{name}"):
                    return archive.read(member)
    except (zipfile.BadZipFile, OSError):
        return None
    return None


def find_model_record(ckpt_path: str | os.PathLike) -> tuple[dict | None, str]:
    """``(record, where it was found)`` of the model in ``ckpt_path``: the ``model.json`` embedded in a
    TorchScript export, else the one beside the file (:func:`record_path`); ``(None, "")`` when there is
    none (a checkpoint from before records were written, or from elsewhere).

    Raises:
        ModelRecordError: a record exists but is not valid JSON or lacks one of :data:`NETWORK_KEYS`.
    """
    path = Path(ckpt_path)
    embedded = _torchscript_extra(path, RECORD_NAME) if path.is_file() else None
    if embedded is not None:
        source, text = f"{RECORD_NAME} embedded in {path.name}", embedded.decode("utf-8", "replace")
    else:
        beside = record_path(path)
        if beside == path or not beside.is_file():
            return None, ""
        source, text = str(beside), beside.read_text()
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelRecordError(f"{source}: not valid JSON ({err})") from None
    return check_model_record(record, source), source


def read_model_record(ckpt_path: str | os.PathLike) -> dict | None:
    """The record of the model in ``ckpt_path``, or None (see :func:`find_model_record`)."""
    return find_model_record(ckpt_path)[0]
