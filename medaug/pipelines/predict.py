"""Predictions of a trained bundle on a folder of unlabelled images (DICOM with or without
extension, PNG/JPEG, NIfTI), read through the same ``medaug.io`` path as training.

The bundle's ``configs/inference.json`` is the one description of a prediction run: its ``prediction``
is a :class:`FolderPrediction`, which ``python -m monai.bundle run --config_file configs/inference.json``
runs and which ``medaug predict`` builds from the same config (its flags become overrides of the
config's keys). :func:`predict_folder` walks the input, decodes each file once in a pool of workers
through the bundle's ``preprocessing`` (``LoadDatalistImaged`` + resize, the validation transforms),
batches what decodes, runs the bundle's ``inferer`` on each batch as soon as it is full and the bundle's
``postprocessing`` (MONAI post transforms, e.g. ``Activationsd`` softmax) on its outputs, and writes
``predictions.csv``, ``predictions.json``, ``skipped.csv`` and ``summary.json`` as one set: the output
folder is locked and checked writable before any work, the files go to a temporary folder beside them
and are swapped in at the end, ``summary.json`` (run id, times, the other files' sha256) last
(:func:`prediction_outputs`). A file that cannot be used is a row in ``skipped.csv``, never a crash.

The model is either a checkpoint (``{"model": state_dict}``) loaded into the bundle's network, or a
TorchScript export (``ckpt_export``) loaded with ``torch.jit.load``; the TorchScript path imports no
network or training code. This module imports no training code either.

Speed and memory: the bundles decode in worker processes (``"parallel": "process"`` in
``inference.json``; threads hold the GIL through pydicom's parsing and the JPEG 2000 decoder), the
model meanwhile running on the cores the workers leave. Files are decoded at most
``max(4 * workers, 2 * batch_size)`` ahead of the model. With ``frames="all"`` a multi-frame file is
decoded ``batch_size`` frames per task, each frame once (``LoadDatalistImaged.frames``), the tasks
spread over the workers; memory holds the frames of a few such tasks as model inputs, never the
file's pixels (the middle frame alone is decoded otherwise).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import multiprocessing
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.data import decollate_batch
from monai.inferers import SimpleInferer
from monai.transforms import Activationsd, Compose
from monai.utils import convert_to_tensor
from tqdm.auto import tqdm

from medaug.bundle_errors import error_in_chain
from medaug.io.hashing import file_sha256
from medaug.io.loader import LoadDatalistImaged
from medaug.io.model_record import NETWORK_KEYS, ModelRecordError, find_model_record
from medaug.io.output_set import OutputSet, utc_now
from medaug.io.phi import hash_uid
from medaug.io.readers import UnusableImageError, image_kind, read_dicom_header
from medaug.io.scan import scan_entries
from medaug.io.sources import looks_like_image, walk_input
from medaug.processes import die_with_parent

logger = logging.getLogger("medaug.predict")

EXIT_ALL_USED, EXIT_SOME_SKIPPED = 0, 3
OUTPUT_FILES = ("predictions.csv", "predictions.json", "skipped.csv", "summary.json")
OUTPUT_MARKER = "summary.json"  # renamed into place last: its presence marks a complete set


def folder_datalist(
    input_dir: str | os.PathLike,
    *,
    channels: int = 1,
    frames: str = "middle",
    exclude: Sequence[str] = (),
    progress: bool = True,
) -> tuple[list[dict], list[dict]]:
    """``(usable entries, skipped)`` for every file below ``input_dir``, each image decoded once to
    check it (for datalists; :func:`predict_folder` decodes and predicts in one pass). Nothing is
    written there."""
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"input folder {str(root)!r} does not exist")
    entries = []
    files, skipped = walk_input(root, exclude)  # pipes, sockets, hidden files: listed, never opened
    for path, relative in files:
        if looks_like_image(path):
            entries.append(
                {
                    "image": str(path.resolve()),
                    "relpath": relative,
                    "label": -1,
                    "split": "predict",
                    "source": "predict",
                    "synthetic": False,
                }
            )
        else:
            skipped.append({"path": relative, "reason": "not an image file (unknown type, not DICOM)"})
    usable, unreadable = scan_entries(entries, channels=channels, frames=frames, progress=progress)
    return usable, skipped + unreadable


# --------------------------------------------------------------------------------------------- model


def is_torchscript(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``), not a ``torch.save`` checkpoint:
    both are zip files, only TorchScript holds ``code/`` and ``constants.pkl``."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


# What torch says when a network meets an input of another shape (conv channels, linear sizes, views);
# any other error on the first batch is the model's own failure, not a usage error.
SHAPE_ERROR = re.compile(r"shape|size|channel|dimension|mat1 and mat2", re.IGNORECASE)


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the network the bundle's inference config describes."""


class PostprocessingError(ValueError):
    """The bundle's ``postprocessing`` failed on a network output or did not give one value per class."""


def load_model(
    ckpt_path: str | os.PathLike, network: torch.nn.Module | None = None, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """The model to predict with, in eval mode on ``device``.

    A TorchScript file is loaded with ``torch.jit.load`` (``network`` is ignored and may be None);
    a checkpoint (``{"model": state_dict}`` as MONAI's ``CheckpointSaver`` writes, or a bare
    state dict) is loaded into ``network``, strictly.

    Raises:
        FileNotFoundError: no such file.
        CheckpointMismatchError: the weights do not fit ``network``, or the file is neither.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    if is_torchscript(path):
        model = torch.jit.load(str(path), map_location=device)
    else:
        if network is None:
            raise CheckpointMismatchError(
                f"{path.name} is a checkpoint, not TorchScript: the bundle's network is needed"
            )
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as err:
            raise CheckpointMismatchError(f"{path.name} is neither a PyTorch checkpoint nor TorchScript") from err
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        try:
            network = network.to(device)
            network.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as err:
            raise CheckpointMismatchError(
                f"{path.name} does not fit the network of the inference config (check classifier, image_size, "
                f"channels and class_names; medaug predict takes them as --classifier small_cnn --image_size "
                f'"[32,32]" ...): {str(err).splitlines()[0][:300]}'
            ) from err
        model = network
    return model.to(device).eval()


ANY_MODALITY = "any"


def _same(key: str, given, recorded) -> bool:
    try:
        return _equal(key, given, recorded)
    except (TypeError, ValueError):
        return False


def _equal(key: str, given, recorded) -> bool:
    if key == "classifier":
        return str(given).lower().replace("-", "_") == str(recorded).lower().replace("-", "_")
    if key == "image_size":
        return [int(s) for s in given] == [int(s) for s in recorded]
    if key == "class_names":  # names may be given anew; their number is the network's
        return len(given) == len(recorded)
    return int(given) == int(recorded)


def _modalities(value) -> list[str] | None:
    """``"any"`` (or ``["any"]``) -> None (no filter); a name or names -> upper-case list."""
    names = [value] if isinstance(value, str) else list(value or [])
    names = [str(m).strip().upper() for m in names]
    return None if not names or ANY_MODALITY.upper() in names else names


def model_settings(ckpt_path: str | os.PathLike | None, given: Mapping, fallback: Mapping) -> dict:
    """The network and input settings to predict with: ``classifier``, ``image_size``, ``channels``,
    ``class_names`` (and ``num_classes``), ``modalities``, plus ``positive_class``, ``preset``, ``flip_axes``
    (the spatial axes training flipped, for ``tta``) and ``source``.

    ``inference.json``'s ``settings``: each is the value ``given`` in the config (a key of
    ``inference.json`` or its override, e.g. ``--image_size "[32,32]"``) when not null, else what the
    checkpoint's record says (:func:`medaug.io.model_record.read_model_record`: ``model.json`` beside a
    checkpoint, embedded in a TorchScript export), else ``fallback`` (what the bundle ships, for a
    checkpoint without a record). ``modalities`` ``"any"`` takes every modality.

    Raises:
        CheckpointMismatchError: a given classifier, image size, channel count or number of classes that
            differs from the record (the message names what the checkpoint was trained with).
        ModelRecordError: a record that exists but cannot be read.
    """
    path = Path(ckpt_path) if ckpt_path else None
    record, source = find_model_record(path) if path is not None and path.is_file() else (None, "")
    settings = {}
    for key in NETWORK_KEYS:
        value = given.get(key)
        if value is None:
            value = record[key] if record is not None else fallback.get(key)
        elif record is not None and not _same(key, value, record[key]):
            raise CheckpointMismatchError(
                f"{key} {value!r} does not fit {path.name}: it was trained with {key} {record[key]!r} ({source}); "
                f"leave {key} out (or null) to use what the checkpoint records"
            )
        if value is None:
            raise ModelRecordError(f"{key}: not given, and the checkpoint {str(path)!r} has no model record")
        settings[key] = value
    settings["image_size"] = [int(s) for s in settings["image_size"]]
    settings["channels"] = int(settings["channels"])
    settings["class_names"] = [str(n) for n in settings["class_names"]]
    settings["num_classes"] = len(settings["class_names"])
    modalities = given.get("modalities")
    if modalities is None:
        modalities = record.get("modalities") if record is not None else fallback.get("modalities")
    settings["modalities"] = _modalities(modalities)
    settings["positive_class"] = (record or {}).get("positive_class")
    settings["preset"] = (record or {}).get("preset")
    settings["flip_axes"] = (record or {}).get("flip_axes")
    settings["source"] = source or "inference config (the checkpoint has no model record)"
    return settings


def model_info(bundle_root: str | os.PathLike, ckpt_path: str | os.PathLike | None = None) -> dict:
    """``{"model_name", "model_version", "checkpoint_sha256"}`` from ``configs/metadata.json``."""
    meta_file = Path(bundle_root) / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return {
        "model_name": str(meta.get("name", Path(bundle_root).resolve().name)),
        "model_version": str(meta.get("version", "")),
        "checkpoint_sha256": file_sha256(ckpt_path) if ckpt_path and Path(ckpt_path).is_file() else "",
    }


# ---------------------------------------------------------------------------------------- decoding


def unusable_reason(err: BaseException) -> str:
    """The reason of an :class:`UnusableImageError` anywhere in ``err``'s chain; otherwise the exception
    type only, since decoder messages may quote header values."""
    unusable = error_in_chain(err, UnusableImageError)
    return unusable.reason if unusable is not None else f"could not be read ({type(err).__name__})"


@dataclass
class _Decoded:
    path: str  # relative, as in the rows
    items: list  # [(row fields, array (C, H, W))]
    skipped: dict | None
    more: list = field(default_factory=list)  # (path, relative, frames) tasks for the file's other frames


def _split_loader(preprocessing: Callable) -> tuple[LoadDatalistImaged, Callable] | None:
    """``(loader, the transforms after it)`` when ``preprocessing`` is a ``Compose`` that starts with
    :class:`LoadDatalistImaged` (every bundle here): then the frames of a multi-frame file are decoded
    once (``loader.frames``) and only the rest runs per frame. None for any other preprocessing."""
    transforms = getattr(preprocessing, "transforms", None)
    if not isinstance(preprocessing, Compose) or not transforms or not isinstance(transforms[0], LoadDatalistImaged):
        return None
    rest = Compose(
        transforms[1:],
        map_items=preprocessing.map_items,
        unpack_items=preprocessing.unpack_items,
        log_stats=preprocessing.log_stats,
        lazy=preprocessing.lazy,
        overrides=preprocessing.overrides,
    )
    return transforms[0], rest


class _Decoder:
    """Decode one file into model inputs (one per frame used) or a skip record; thread-safe.

    With ``frames="all"`` a multi-frame file is decoded ``chunk`` frames per task: the first task
    returns its first chunk and the tasks for the others (``_Decoded.more``), which the run submits
    next, so that a file's frames are decoded in parallel and memory holds a few chunks of model
    inputs, not the whole file.
    """

    def __init__(self, preprocessing: Callable, frames: str, modalities: Sequence[str] | None, chunk: int = 32) -> None:
        if frames not in ("middle", "all"):
            raise ValueError(f"frames must be 'middle' or 'all', got {frames!r}")
        self.preprocessing = preprocessing
        self.split = _split_loader(preprocessing)
        self.frames = frames
        self.modalities = {m.strip().upper() for m in modalities} if modalities else None
        self.chunk = max(1, chunk)

    def __call__(self, item: tuple) -> _Decoded:
        path, relative, *chunk = item
        try:
            frames, more = [None], []  # the middle one; the reader says which it used and what the file holds
            if chunk:  # more frames of a file whose header the first task checked
                frames = chunk[0]
            elif self.modalities is not None or self.frames == "all":
                # only then is the header read first: to skip a wrong modality before decoding its pixels
                header = read_dicom_header(path) if image_kind(path) == "dicom" else None
                if self.modalities is not None and header is not None:
                    modality = (header.get("modality") or "").strip().upper()
                    if modality not in self.modalities:
                        wanted = ", ".join(sorted(self.modalities))
                        return _Decoded(
                            relative,
                            [],
                            {
                                "path": relative,
                                "reason": f"wrong modality for this model "
                                f"({modality or 'none given'}; the model takes {wanted})",
                            },
                        )
                if self.frames == "all" and header is not None and header["number_of_frames"] > 1:
                    every = range(header["number_of_frames"])
                    frames = list(every[: self.chunk])
                    more = [
                        (path, relative, list(every[i : i + self.chunk]))
                        for i in range(self.chunk, len(every), self.chunk)
                    ]
            out = [self._fields(image, relative, frame) for frame, image in self._images(path, frames)]
            return _Decoded(relative, out, None, more)
        except Exception as err:  # one bad file never stops the run
            return _Decoded(relative, [], {"path": relative, "reason": unusable_reason(err)})

    def _images(self, path: Path, frames: list) -> Iterator[tuple]:
        """``(frame asked for, preprocessed image)`` for each of ``frames``; decoded once if several."""
        if len(frames) > 1 and self.split is not None:
            loader, rest = self.split
            for data in loader.frames({"image": str(path)}, frames):
                yield data["frame"], rest(data)["image"]
            return
        for frame in frames:
            yield frame, self.preprocessing({"image": str(path), "frame": frame})["image"]

    @staticmethod
    def _fields(image, relative: str, frame: int | None) -> tuple[dict, np.ndarray]:
        meta = getattr(image, "meta", None) or {}
        used = meta.get("frame") if frame is None else frame
        fields = {
            "path": relative,
            "frame": int(used) if int(meta.get("number_of_frames") or 1) > 1 and used is not None else "",
            "sop_instance_uid": str(meta.get("sop_instance_uid") or ""),
            "study_instance_uid": str(meta.get("study_instance_uid") or ""),
        }
        # numpy, not torch: crosses a process boundary as plain bytes
        return fields, np.ascontiguousarray(torch.as_tensor(image).float().numpy())


# ----------------------------------------------------------------------------------- postprocessing


def default_postprocessing() -> Callable:
    """What the bundles' ``postprocessing`` says, for a caller that gives none: softmax over the classes."""
    return Compose([Activationsd(keys="pred", softmax=True)])


def postprocess(outputs: torch.Tensor, postprocessing: Callable, num_classes: int) -> np.ndarray:
    """``(images, num_classes)`` values of ``postprocessing`` on a batch of network ``outputs``.

    As MONAI's engines apply a bundle's ``postprocessing`` (``decollate_batch``, then the transforms on each
    item), each image's output is handed over as ``{"pred": tensor of shape (classes,)}`` (channel first, so
    ``Activationsd(softmax=True)`` and ``AsDiscreted`` act over the classes); the item's ``pred`` afterwards
    must hold one value per class.

    Raises:
        PostprocessingError: a transform failed, or its ``pred`` is missing or not one value per class.
    """
    values = []
    for pred in decollate_batch(outputs, detach=True):
        try:
            item = postprocessing({"pred": pred})
        except Exception as err:
            raise PostprocessingError(f"the bundle's postprocessing failed on a network output: {err}") from err
        result = item.get("pred") if isinstance(item, dict) else None
        if result is None:
            raise PostprocessingError("the bundle's postprocessing gave no 'pred' (it must return the item's dict)")
        result = convert_to_tensor(result, track_meta=False).float().reshape(-1)
        if result.numel() != num_classes:
            raise PostprocessingError(
                f"the bundle's postprocessing gives {result.numel()} value(s) per image, not one per class "
                f"({num_classes})"
            )
        values.append(result)
    return torch.stack(values).numpy() if values else np.zeros((0, num_classes), np.float32)


# ----------------------------------------------------------------------------------------- the run


PARALLEL_MODES = ("thread", "process")


_worker_decoder: _Decoder | None = None  # the decoder of a worker process (set once, by _init_worker)


def _init_worker(decoder: _Decoder) -> None:
    global _worker_decoder
    if (parent := multiprocessing.parent_process()) is not None:  # a worker: no orphan decoding after a SIGKILL
        die_with_parent(parent_pid=parent.pid)
    _worker_decoder = decoder
    torch.set_num_threads(1)  # the workers are the parallelism; no oversubscription


def _decode_in_worker(item: tuple[Path, str]) -> _Decoded:
    return _worker_decoder(item)


def _executor(parallel: str, workers: int, decoder: _Decoder) -> tuple[Executor, Callable]:
    """A pool of ``workers`` and the function to submit to it."""
    if parallel == "thread":
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medaug-decode"), decoder
    if parallel == "process":
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(decoder,)
        )
        return pool, _decode_in_worker
    raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {parallel!r}")


@contextlib.contextmanager
def _model_threads(parallel: str, workers: int, device: str | torch.device) -> Iterator[None]:
    """While worker processes decode on ``workers`` cores, the model (on CPU) gets the cores left, at least
    one, instead of one thread per core: OpenMP threads that spin-wait on cores the decoders need slow
    both down."""
    if parallel != "process" or torch.device(device).type != "cpu":
        yield
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, cores - workers)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class PredictionSummary:
    files: int
    images: int
    predicted_files: int
    skipped: int
    seconds: float
    images_per_s: float
    output_dir: str
    exit_code: int
    run_id: str = ""  # of the output set (OutputSet.run_id), also in summary.json
    finished_at: str = ""  # UTC, ISO 8601

    def line(self) -> str:
        return (
            f"predicted {self.images} image(s) from {self.predicted_files} file(s), skipped {self.skipped} "
            f"file(s) of {self.files} in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s); "
            f"outputs in {self.output_dir}"
        )


def _check_output_outside_input(input_dir: Path, output_dir: Path) -> None:
    source, target = input_dir.resolve(), output_dir.resolve()
    if target == source or source in target.parents:
        raise ValueError(f"output folder {str(output_dir)!r} is inside the input folder; the input is never written to")


def prediction_outputs(output_dir: str | os.PathLike) -> OutputSet:
    """The output set of a prediction run in ``output_dir`` (not yet opened): ``OUTPUT_FILES``, written
    into ``.predict-<run id>.tmp/`` and swapped in at the end, ``summary.json`` last, under the lock
    ``.predict.lock`` (see :mod:`medaug.io.output_set`)."""
    return OutputSet(output_dir, OUTPUT_FILES, marker=OUTPUT_MARKER, tool="predict")


def _holding_outputs(predict: Callable) -> Callable:
    """``predict`` with its arguments checked and its output folder held before any work: created, locked
    and given a fresh temporary folder (:class:`OutputFolderError` if it cannot be, e.g. unwritable,
    or busy with another run), then released, uncommitted files discarded, however the run ends. An
    :class:`OutputSet` already open (the CLI opens it before loading the model) is used as it is."""

    @functools.wraps(predict)
    def run(input_dir, output_dir, **kwargs) -> PredictionSummary:
        held = isinstance(output_dir, OutputSet)
        input_dir, folder = Path(input_dir), output_dir.folder if held else Path(output_dir)
        if not input_dir.is_dir():
            raise FileNotFoundError(f"input folder {str(input_dir)!r} does not exist or is not a folder")
        _check_output_outside_input(input_dir, folder)
        if kwargs.get("batch_size", 1) < 1:
            raise ValueError(f"batch_size must be at least 1, got {kwargs['batch_size']}")
        if held:
            return predict(input_dir, output_dir, **kwargs)
        with prediction_outputs(folder) as output:
            return predict(input_dir, output, **kwargs)

    return run


@_holding_outputs
def predict_folder(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike | OutputSet,
    *,
    model: torch.nn.Module,
    preprocessing: Callable,
    class_names: Sequence[str],
    frames: str = "middle",
    modalities: Sequence[str] | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    device: str | torch.device = "cpu",
    model_info: dict | None = None,
    uid_salt: str | None = None,
    exclude: Sequence[str] = (),
    parallel: str = "thread",
    progress: bool = True,
    inferer: Callable | None = None,
    postprocessing: Callable | None = None,
) -> PredictionSummary:
    """Predict every usable image below ``input_dir``; write the outputs to ``output_dir``.

    ``output_dir`` is checked writable and locked before any image is read, and the four files are
    replaced as one set at the end (see :func:`prediction_outputs`); a failed or killed run leaves the
    previous set. An open :class:`OutputSet` from :func:`prediction_outputs` may be given instead.

    Args:
        model: from :func:`load_model`; it gives one output per class (logits for the bundles here).
        preprocessing: the bundle's validation transforms, called on ``{"image": path, "frame": f}``.
        frames: ``"middle"`` frame of multi-frame files, or ``"all"`` (one prediction per frame, the
            frames decoded ``batch_size`` per task).
        modalities: DICOM modalities the model takes (e.g. ``["US"]``); others are skipped as
            "wrong modality for this model". None takes any. Non-DICOM files have no modality.
        workers: decoding threads or processes (default ``min(4, cpu count)``).
        model_info: ``model_name``, ``model_version``, ``checkpoint_sha256`` copied into every row.
        uid_salt: when given, SOP/Study Instance UIDs are replaced by ``hash_uid(uid, salt)``.
        parallel: ``"thread"`` (decoding threads in this process) or ``"process"`` (worker processes,
            one torch thread each: no GIL contention, at the cost of starting them; the model then
            gets the CPU cores they leave, at least one; the bundles' default).
        inferer: the bundle's ``inferer``, called as ``inferer(batch, model)`` (default ``SimpleInferer``).
        postprocessing: the bundle's ``postprocessing``, run in this process on each batch's outputs by
            :func:`postprocess`; what it gives are the ``prob_<class>`` columns, ``predicted`` their argmax
            (default :func:`default_postprocessing`, the bundles' softmax).

    Returns:
        a :class:`PredictionSummary`; ``exit_code`` is 0 when every file was used, 3 when some were skipped.

    Raises:
        OutputFolderError: ``output_dir`` cannot be written, or another run holds it (before any work).
        CheckpointMismatchError: the model does not give one output per class.
        PostprocessingError: see :func:`postprocess`.
    """
    output, output_dir = output_dir, output_dir.folder  # opened by _holding_outputs
    class_names = [str(n) for n in class_names]
    info = {"model_name": "", "model_version": "", "checkpoint_sha256": "", **(model_info or {})}
    start = time.perf_counter()
    files, skipped = walk_input(input_dir, exclude)
    decoder = _Decoder(preprocessing, frames, modalities, chunk=batch_size)
    workers = max(1, workers or min(4, os.cpu_count() or 1))
    inferer = SimpleInferer() if inferer is None else inferer
    postprocessing = default_postprocessing() if postprocessing is None else postprocessing

    rows: list[dict] = []
    pending_fields, pending_images = [], []

    def flush() -> None:
        if not pending_images:
            return
        batch = torch.stack(pending_images).to(device)
        with torch.inference_mode():
            try:
                logits = convert_to_tensor(inferer(batch, model), track_meta=False).float().cpu()
            except RuntimeError as err:  # a network (TorchScript) made for another input shape fails on the first
                if rows or isinstance(err, torch.OutOfMemoryError) or not SHAPE_ERROR.search(str(err)):
                    raise
                channels, *size = batch.shape[1:]
                raise CheckpointMismatchError(
                    f"the model cannot take images of {channels} channel(s) at {'x'.join(map(str, size))} px (the "
                    f"inference config's channels and image_size): {str(err).strip().splitlines()[-1][:200]}; set "
                    f"them to what it was trained with"
                ) from err
            if logits.ndim != 2 or logits.shape[1] != len(class_names):
                given = logits.shape[1] if logits.ndim == 2 else tuple(logits.shape[1:])
                raise CheckpointMismatchError(
                    f"the model gives {given} outputs but the bundle names {len(class_names)} classes"
                )
            probs = postprocess(logits, postprocessing, len(class_names))
        for fields, prob in zip(pending_fields, probs):
            row = dict(fields)
            if uid_salt:
                row["sop_instance_uid"] = hash_uid(row["sop_instance_uid"], uid_salt)
                row["study_instance_uid"] = hash_uid(row["study_instance_uid"], uid_salt)
            row["predicted"] = class_names[int(np.argmax(prob))]
            row.update({f"prob_{n}": round(float(p), 6) for n, p in zip(class_names, prob)})
            row.update(info)
            rows.append(row)
        pending_fields.clear()
        pending_images.clear()

    used_files = 0
    window = max(4 * workers, 2 * batch_size)  # files decoded ahead of the model, bounded in memory
    bar = tqdm(total=len(files), desc="predicting", unit="file", disable=not progress, leave=False)
    executor, decode = _executor(parallel, workers, decoder)
    with executor as pool, _model_threads(parallel, workers, device):
        # futures in output order; the first ``in_front`` decode more frames of the file just taken,
        # which are submitted ``workers + 1`` at a time, ahead of the next files (see _Decoder)
        queue: collections.deque = collections.deque()
        remaining, frame_tasks, in_front, dropped = iter(files), collections.deque(), 0, set()
        for item in remaining:
            queue.append(pool.submit(decode, item))
            if len(queue) >= window:
                break

        def submit_frames() -> None:
            nonlocal in_front
            queue.insert(in_front, pool.submit(decode, frame_tasks.popleft()))
            in_front += 1

        while queue:
            more_of_a_file = in_front > 0
            result = queue.popleft().result()
            if more_of_a_file:
                in_front -= 1
                if frame_tasks:
                    submit_frames()
            elif (nxt := next(remaining, None)) is not None:
                queue.append(pool.submit(decode, nxt))
            if result.path in dropped:
                continue
            if result.skipped:
                if more_of_a_file:  # a later frame failed: the file is skipped, its earlier frames dropped
                    dropped.add(result.path)
                    frame_tasks.clear()
                    used_files -= 1
                    rows[:] = [r for r in rows if r["path"] != result.path]
                    kept = [(f, i) for f, i in zip(pending_fields, pending_images) if f["path"] != result.path]
                    pending_fields[:], pending_images[:] = [f for f, _ in kept], [i for _, i in kept]
                skipped.append(result.skipped)
                if not more_of_a_file:
                    bar.update(1)
                continue
            if not more_of_a_file:
                used_files += 1
                bar.update(1)
            if result.more:
                frame_tasks.extend(result.more)
                for _ in range(min(workers + 1, len(frame_tasks))):
                    submit_frames()
            for fields, image in result.items:
                pending_fields.append(fields)
                pending_images.append(torch.from_numpy(image))
                if len(pending_images) >= batch_size:
                    flush()
        flush()
    bar.close()

    fields = [
        "path",
        "frame",
        "sop_instance_uid",
        "study_instance_uid",
        "predicted",
        *[f"prob_{n}" for n in class_names],
        "model_name",
        "model_version",
        "checkpoint_sha256",
    ]
    skipped.sort(key=lambda r: r["path"])
    seconds = time.perf_counter() - start
    n_files = used_files + len(skipped)
    summary = PredictionSummary(
        files=n_files,
        images=len(rows),
        predicted_files=used_files,
        skipped=len(skipped),
        seconds=round(seconds, 3),
        images_per_s=round(len(rows) / max(seconds, 1e-9), 2),
        output_dir=str(output_dir),
        exit_code=EXIT_SOME_SKIPPED if skipped else EXIT_ALL_USED,
        run_id=output.run_id,
    )
    # CSV text cells that a spreadsheet would run as formulas (=, +, -, @ ...) get a leading '; the JSON stays raw
    output.write_csv("predictions.csv", rows, fields)
    output.write_json("predictions.json", rows)
    output.write_csv("skipped.csv", skipped, ["path", "reason"])
    summary.finished_at = utc_now()
    output.write_json(
        OUTPUT_MARKER,
        {
            **asdict(summary),
            **info,
            "classes": class_names,
            "uids_hashed": bool(uid_salt),
            "started_at": output.started_at,
            "files": output.digests(),
        },
    )
    output.commit()
    return summary


class FolderPrediction:
    """``inference.json``'s ``prediction``: :func:`predict_folder` with the bundle's parts, the component that
    both ``python -m monai.bundle run`` (its ``run``) and ``medaug predict`` build from the config and run.

    Args:
        model: from :func:`load_model` (checkpoint or TorchScript).
        preprocessing: the bundle's validation transforms.
        input_dir, output_dir: the folder to predict and where the outputs go (locked, replaced as a set).
        class_names: output classes in order.
        inferer, postprocessing: the bundle's ``inferer`` and ``postprocessing`` (see :func:`predict_folder`).
        others: as :func:`predict_folder`.
    """

    def __init__(
        self,
        model,
        preprocessing,
        input_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        class_names: Sequence[str],
        *,
        frames: str = "middle",
        modalities: Sequence[str] | None = None,
        batch_size: int = 32,
        num_workers: int | None = None,
        device="cpu",
        model_info: dict | None = None,
        uid_salt: str | None = None,
        parallel: str = "thread",
        progress: bool = True,
        inferer: Callable | None = None,
        postprocessing: Callable | None = None,
    ) -> None:
        self.model = model
        self.preprocessing = preprocessing
        self.input_dir, self.output_dir = input_dir, output_dir
        self.class_names = list(class_names)
        self.model_info = model_info
        self.kwargs = dict(
            frames=frames,
            modalities=modalities,
            batch_size=batch_size,
            workers=num_workers or None,
            device=device,
            model_info=model_info,
            uid_salt=uid_salt,
            parallel=parallel,
            progress=progress,
            inferer=inferer,
            postprocessing=postprocessing,
        )

    def run(self, output: OutputSet | None = None) -> PredictionSummary:
        """Predict; ``output``: the output set of ``output_dir`` already open (``medaug predict`` opens it
        before the model is loaded), else it is opened here."""
        if output is not None and output.folder.resolve() != Path(self.output_dir).resolve():
            raise ValueError(f"the open output set is {str(output.folder)!r}, not output_dir {str(self.output_dir)!r}")
        summary = predict_folder(
            self.input_dir,
            self.output_dir if output is None else output,
            model=self.model,
            preprocessing=self.preprocessing,
            class_names=self.class_names,
            **self.kwargs,
        )
        print(summary.line())
        return summary
