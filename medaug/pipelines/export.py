"""``medaug export``: a training run's checkpoint into MONAI's model-zoo place of a bundle.

Training writes ``runs/<run>/model.pt`` and its record ``model.json`` (:mod:`medaug.io.model_record`);
``configs/evaluate.json``, ``configs/inference.json`` and MONAI's tools expect ``<bundle>/models/model.pt``.
:func:`export_run` fills that place: ``models/model.pt`` (the checkpoint as trained), ``models/model.json``
(its record, with where it came from) and ``models/model.ts``, a TorchScript of the network the record
describes, whose embedded metadata (MONAI's ``metadata.json`` extra file, its ``network_data_format``
rewritten from the record; the record itself as ``model.json``; the inference config with the record's
settings) is true to the run. It builds on MONAI's ``convert_to_torchscript`` and
``save_net_with_metadata``; MONAI's ``ckpt_export`` builds the network from the config as written, so
a run of another classifier or image size would not fit it. Nothing is replaced unless every file was
made; a different model already in ``models/`` is kept unless ``force``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from medaug.io.atomic import atomic_path
from medaug.io.hashing import file_sha256
from medaug.io.model_record import RECORD_NAME, ModelRecordError, find_model_record, read_model_record

MODEL_FILES = ("model.pt", RECORD_NAME, "model.ts")


class ExportError(ValueError):
    """A run that cannot be exported, or a target that holds another model; the message says what to do,
    ``argument`` names what to change (the run, or ``--force``)."""

    def __init__(self, message: str, argument: str = "run") -> None:
        super().__init__(message)
        self.argument = argument


@dataclass
class ExportResult:
    checkpoint: Path
    record: Path
    torchscript: Path
    checkpoint_sha256: str
    converted_by: str  # "script" or "trace"
    unchanged: bool  # the same model was there already


def run_checkpoint(run: str | os.PathLike) -> Path:
    """The checkpoint of a run folder (its ``model.pt``), or ``run`` itself when it is a checkpoint file."""
    path = Path(run)
    checkpoint = path if path.is_file() else path / "model.pt"
    if not checkpoint.is_file():
        raise ExportError(f"{str(path)!r} is neither a run folder with model.pt nor a checkpoint file")
    return checkpoint


def network_data_format(meta: dict, record: dict) -> dict:
    """The bundle's ``network_data_format`` (MONAI metadata) rewritten to what ``record`` says."""
    fmt = copy.deepcopy(meta.get("network_data_format") or {})
    image = fmt.setdefault("inputs", {}).setdefault("image", {"type": "image", "dtype": "float32"})
    image.update(num_channels=record["channels"], spatial_shape=list(record["image_size"]))
    image["channel_def"] = {str(i): "image" for i in range(record["channels"])}
    if record.get("modalities"):
        image["modality"] = "/".join(record["modalities"])
    else:
        image.pop("modality", None)
    pred = fmt.setdefault("outputs", {}).setdefault("pred", {"type": "probabilities", "dtype": "float32"})
    names = record["class_names"]
    pred.update(
        num_channels=len(names), spatial_shape=[len(names)], channel_def={str(i): n for i, n in enumerate(names)}
    )
    return fmt


def _network(record: dict, checkpoint: Path) -> torch.nn.Module:
    from medaug.models import build_classifier
    from medaug.pipelines.predict import CheckpointMismatchError, load_model

    try:
        network = build_classifier(
            record["classifier"], record["channels"], len(record["class_names"]), record["image_size"]
        )
        return load_model(checkpoint, network, "cpu")
    except (ValueError, CheckpointMismatchError) as err:
        raise ExportError(f"{checkpoint} does not fit its record ({err})") from err


def _torchscript(network: torch.nn.Module, record: dict) -> tuple[torch.jit.ScriptModule, str]:
    """Scripted (MONAI's default), else traced on an input of the recorded shape; checked against the
    network on that input either way."""
    from monai.networks.utils import convert_to_torchscript

    inputs = [torch.rand(2, record["channels"], *record["image_size"])]
    options = dict(verify=True, inputs=inputs, device="cpu", rtol=1e-3, atol=1e-4)
    try:
        return convert_to_torchscript(network, **options), "script"
    except Exception:  # some torchvision-style networks cannot be scripted; a trace of the recorded shape can
        return convert_to_torchscript(network, use_trace=True, **options), "trace"


def _different_model_there(models: Path, sha: str) -> str | None:
    """Why ``models/`` holds another model than the one of ``sha``, or None."""
    target = models / "model.pt"
    if target.is_file() and file_sha256(target) != sha:
        return f"{target} holds a different model (sha256 {file_sha256(target)[:12]}, not {sha[:12]})"
    ts = models / "model.ts"
    if ts.is_file():
        try:
            embedded, _ = find_model_record(ts)
        except ModelRecordError:
            embedded = None
        if (embedded or {}).get("checkpoint_sha256") != sha:
            return f"{ts} is the export of a different model"
    return None


def export_run(run: str | os.PathLike, bundle: str | os.PathLike, *, force: bool = False) -> ExportResult:
    """Fill ``<bundle>/models/`` with the model of ``run`` (see the module docstring).

    Raises:
        ExportError: no checkpoint, no record, a checkpoint that does not fit its record, or (without
            ``force``) a different model already in ``models/``.
    """
    checkpoint = run_checkpoint(run)
    bundle = Path(bundle)
    try:
        record = read_model_record(checkpoint)
    except ModelRecordError as err:
        raise ExportError(str(err)) from err
    if record is None:
        raise ExportError(
            f"{checkpoint} has no {RECORD_NAME} beside it (trained before medaug wrote one): predict it with "
            f'medaug predict --checkpoint {checkpoint} --classifier NAME --image_size "[H,W]" instead'
        )
    sha = file_sha256(checkpoint)
    models = bundle / "models"
    different = _different_model_there(models, sha)
    if different and not force:
        raise ExportError(f"{different}; pass --force to replace it, or export into another bundle", "--force")
    in_place = checkpoint.resolve() == (models / "model.pt").resolve()  # e.g. the Docker build's models/model.pt
    unchanged = different is None and (models / "model.pt").is_file()
    record = {**record, "checkpoint_sha256": sha}
    if not in_place or "exported_from" not in record:
        record["exported_from"] = str(checkpoint.resolve())

    network = _network(record, checkpoint)
    scripted, converted_by = _torchscript(network, record)
    meta_file = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    meta["network_data_format"] = network_data_format(meta, record)
    extra = {RECORD_NAME: json.dumps(record, indent=2).encode()}
    config_file = bundle / "configs" / "inference.json"
    if config_file.is_file():  # the config as it would run this model: the record's settings filled in
        config = json.loads(config_file.read_text())
        config.update({k: record[k] for k in ("classifier", "image_size", "channels", "class_names")})
        config["modalities"] = record.get("modalities") or "any"
        extra["inference"] = json.dumps(config).encode()

    from monai.data import save_net_with_metadata

    with contextlib.ExitStack() as stack:  # each file renamed into place only once all three are written
        ts_tmp = stack.enter_context(atomic_path(models / "model.ts"))
        json_tmp = stack.enter_context(atomic_path(models / RECORD_NAME))
        if not in_place:
            shutil.copyfile(checkpoint, stack.enter_context(atomic_path(models / "model.pt")))
        json_tmp.write_text(json.dumps(record, indent=2))
        meta_values = {**meta, "medaug_model": {"converted_by": converted_by, **record}}
        save_net_with_metadata(
            scripted, str(ts_tmp), include_config_vals=True, meta_values=meta_values, more_extra_files=extra
        )
    return ExportResult(
        checkpoint=models / "model.pt",
        record=models / RECORD_NAME,
        torchscript=models / "model.ts",
        checkpoint_sha256=sha,
        converted_by=converted_by,
        unchanged=unchanged,
    )
