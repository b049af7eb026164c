"""Read one image file (DICOM, PNG/JPEG, NIfTI) into a display-normalised ``(C, H, W)`` float32 array.

Pixels are decoded by MONAI's :class:`monai.transforms.LoadImage` with :class:`monai.data.PydicomReader`,
:class:`monai.data.PILReader` or :class:`monai.data.NibabelReader`. What those readers leave out for
display (DICOM VOI LUT/windowing, MONOCHROME1, palette colour, enhanced multi-frame functional groups)
is added here with pydicom's own helpers; each step says what MONAI lacks. Frames of a multi-frame
DICOM are decoded one at a time by pydicom (:func:`pydicom.pixels.iter_pixels`, which reads only the
frames asked for from the file), since MONAI's reader decodes every frame into memory at once;
:func:`read_dicom_frames` streams them.

The result is always ``(C, H, W)`` with ``C`` 1 (grayscale, RGB reduced to luma) or 3 (RGB, grayscale
replicated), values in ``[0, 1]``, laid out as a person sees the image: row 0 at the top, column 0
at the left. Anything that cannot be used raises :class:`UnusableImageError` with a reason a person
understands; decoder exceptions never escape raw (the original one is chained as ``__cause__``).

Example::

    from medaug.io.readers import read_image, UnusableImageError

    try:
        pixels = read_image("IM0001", channels=1)  # DICOM under any name
    except UnusableImageError as err:
        print(err.reason)
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pydicom
from monai.data import NibabelReader, PILReader, PydicomReader
from monai.transforms import LoadImage
from monai.utils import convert_to_numpy
from PIL import Image, ImageOps
from pydicom.dataset import Dataset
from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing, get_decoder, iter_pixels
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "UnusableImageError",
    "dicom_to_modality_values",
    "image_kind",
    "is_dicom",
    "read_dicom_frames",
    "read_dicom_header",
    "read_image",
    "read_image_with_meta",
]

DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".ima"})
PNG_SUFFIXES = frozenset({".png"})
JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})
NIFTI_SUFFIXES = frozenset({".nii", ".nii.gz"})
#: Suffixes the folder scanner treats as images. DICOM files may also have no suffix at all
#: (PACS exports): use :func:`is_dicom` for those.
IMAGE_SUFFIXES = frozenset(DICOM_SUFFIXES | PNG_SUFFIXES | JPEG_SUFFIXES | NIFTI_SUFFIXES)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_GZIP_MAGIC = b"\x1f\x8b"
# (7FE0,0010) Pixel Data, (7FE0,0008) Float Pixel Data, (7FE0,0009) Double Float Pixel Data
_PIXEL_ELEMENTS = frozenset({0x0008, 0x0009, 0x0010})
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as PIL's "L" conversion
_PERCENTILES = (0.5, 99.5)
_PERCENTILE_SAMPLE = 1 << 18  # pixels; percentiles of a strided sample are as good and much cheaper
#: Largest image accepted, in pixels per frame and in samples over all frames. A header claiming more
#: (a 65535 x 65535 "image", or a corrupt Rows/Columns) is refused before anything is allocated; the
#: largest real radiographs (about 5k x 6k) and long multi-frame series stay far below.
MAX_FRAME_PIXELS = 1 << 27
MAX_TOTAL_SAMPLES = 1 << 30
#: Modalities of DICOM objects that carry no image (PS3.3 C.7.3.1.1.1), named in skip reasons.
_NON_IMAGE_MODALITIES = {
    "SR": "structured report",
    "KO": "key object selection",
    "PR": "presentation state",
    "RTSTRUCT": "RT structure set",
    "RTPLAN": "RT plan",
    "RTRECORD": "RT treatment record",
    "REG": "registration",
    "DOC": "encapsulated document",
    "AU": "audio waveform",
    "ECG": "ECG waveform",
    "HD": "waveform",
    "SEG": "segmentation",
}


class UnusableImageError(Exception):
    """A file that cannot be used as an image.

    Args:
        path: the offending file.
        reason: a short sentence a person understands, e.g. ``"not a DICOM file"``,
            ``"DICOM file has no pixel data"``, ``"truncated or corrupt pixel data"``,
            ``"image too small (3x3)"``.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep (path, reason) when pickled across worker processes
        return type(self), (self.path, self.reason)


# ----------------------------------------------------------------------------------------- detection


def _suffix(path: str | os.PathLike) -> str:
    name = os.path.basename(os.fspath(path)).lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return os.path.splitext(name)[1]


def _head(path: str | os.PathLike, n: int = 132) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _probe(path: str | os.PathLike, n: int) -> bytes:
    """First ``n`` bytes of a file that exists, can be opened and is not empty."""
    try:
        head = _head(path, n)
    except FileNotFoundError as err:
        raise UnusableImageError(path, "file not found") from err
    except OSError as err:
        raise UnusableImageError(path, f"cannot open file ({err.strerror or err})") from err
    if not head:
        raise UnusableImageError(path, "empty file")
    return head


def _looks_like_bare_dicom(path: str | os.PathLike, head: bytes) -> bool:
    """DICOM without the 128-byte preamble and ``DICM`` magic (old ACR-NEMA style exports).

    pydicom refuses such files unless ``force=True``, and with ``force=True`` it "parses" anything,
    so two guards keep this cheap and honest: the first tag must be in group 0002 (file meta) or
    0008 (identifying), and the parsed header must carry a SOP Class UID or Rows and Columns.
    """
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00", b"\x00\x08"):  # LE 0002/0008, BE 0008
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    except Exception:
        return False
    return "SOPClassUID" in ds or ("Rows" in ds and "Columns" in ds)


def is_dicom(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM file, whatever its name.

    ``DICM`` at byte 128 (the standard Part 10 file) suffices; a file without preamble is accepted
    when its first tag and a header parse look like DICOM (see :func:`_looks_like_bare_dicom`).
    Reads 132 bytes for the common case; never raises.
    """
    try:
        head = _head(path)
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    return _looks_like_bare_dicom(path, head)


def image_kind(path: str | os.PathLike) -> str:
    """``"dicom"``, ``"png"``, ``"jpeg"`` or ``"nifti"``, decided by content first, suffix second.

    DICOM, PNG and JPEG are recognised by their signatures (so a DICOM named ``IM0001`` or
    ``scan.png`` is DICOM); NIfTI by its ``.nii``/``.nii.gz`` suffix plus a header-size or gzip check.

    Raises:
        UnusableImageError: missing or empty file, or content that is none of the four.
    """
    head = _probe(path, 352)
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    suffix = _suffix(path)
    if suffix in NIFTI_SUFFIXES:
        # sizeof_hdr is 348 (NIfTI-1) or 540 (NIfTI-2) in either byte order
        sizeof_hdr = {struct.unpack(fmt, head[:4])[0] for fmt in ("<i", ">i")} if len(head) >= 4 else set()
        if (suffix == ".nii.gz" and head.startswith(_GZIP_MAGIC)) or sizeof_hdr & {348, 540}:
            return "nifti"
        raise UnusableImageError(path, "not a NIfTI file")
    if _looks_like_bare_dicom(path, head):
        return "dicom"
    if suffix in DICOM_SUFFIXES:
        raise UnusableImageError(path, "not a DICOM file")
    if suffix in PNG_SUFFIXES:
        raise UnusableImageError(path, "not a PNG file")
    if suffix in JPEG_SUFFIXES:
        raise UnusableImageError(path, "not a JPEG file")
    raise UnusableImageError(path, "not an image file (no DICOM, PNG, JPEG or NIfTI signature)")


# ---------------------------------------------------------------------------------------- DICOM header


def _transfer_syntax(ds: Dataset) -> UID:
    """The dataset's transfer syntax; for files without file meta, the encoding pydicom detected."""
    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if uid:
        return UID(uid)
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little in (True, None) else ExplicitVRBigEndian


@dataclass(frozen=True)
class _PixelElement:
    """Where the pixel data value starts in the file, its declared length (0xFFFFFFFF: encapsulated)
    and byte order, as found at the end of the header."""

    offset: int
    length: int
    little_endian: bool


def _at_pixel_tag(fh) -> _PixelElement | None:
    """The pixel data element ``fh`` (left by ``stop_before_pixels``) is at, if it is at a (7FE0,xxxx) tag."""
    tag = fh.read(4)
    if len(tag) < 4:
        return None
    for order in "<>":
        group, element = struct.unpack(f"{order}HH", tag)
        if group == 0x7FE0 and element in _PIXEL_ELEMENTS:
            rest = fh.read(8)
            if len(rest) < 4:
                return _PixelElement(fh.tell(), 0, order == "<")
            start = fh.tell() - len(rest)
            if rest[:2] in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN") and len(rest) == 8:
                return _PixelElement(start + 8, struct.unpack(f"{order}L", rest[4:])[0], order == "<")  # VR, 00, length
            return _PixelElement(start + 4, struct.unpack(f"{order}L", rest[:4])[0], order == "<")  # implicit VR
    return None


def _read_header_dataset(path: str | os.PathLike) -> tuple[Dataset, dict, bool, _PixelElement | None]:
    """``(header-only dataset, header dict, bare, pixel element)``; ``bare``: no preamble, pydicom needs
    ``force``; the pixel element is None for a deflated dataset (its file positions mean nothing)."""
    head = _probe(path, 132)
    bare = head[128:132] != b"DICM"
    if bare and not _looks_like_bare_dicom(path, head):
        raise UnusableImageError(path, "not a DICOM file")
    try:
        with open(path, "rb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fh, stop_before_pixels=True, force=bare)
            # stop_before_pixels leaves the file at the pixel tag, if any: 4 bytes say whether it is
            # there, without reading (or, for encapsulated data, scanning) the pixel data itself
            element = _at_pixel_tag(fh)
            has_pixels = element is not None
    except UnusableImageError:
        raise
    except Exception as err:
        raise UnusableImageError(path, "unreadable DICOM header") from err
    if _transfer_syntax(ds) == DeflatedExplicitVRLittleEndian:
        element = None  # positions in the inflated stream, not the file
    if not has_pixels and _transfer_syntax(ds) == DeflatedExplicitVRLittleEndian:
        # a deflated dataset is inflated in memory, so the file position above means nothing
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                full = pydicom.dcmread(path, force=bare)
            has_pixels, element = any(k in full for k in _PIXEL_KEYWORDS), None
        except Exception as err:
            raise UnusableImageError(path, "unreadable DICOM header") from err
    if not has_pixels:
        kind = _NON_IMAGE_MODALITIES.get(str(ds.get("Modality") or "").strip().upper())
        raise UnusableImageError(path, f"DICOM {kind}, not an image" if kind else "DICOM file has no pixel data")
    if "SegmentSequence" in ds:
        raise UnusableImageError(path, "DICOM segmentation object, not an image")
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if not rows or not columns:
        raise UnusableImageError(path, "DICOM header has no Rows/Columns")

    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        return None if value is None or str(value) == "" else str(value)

    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    header = {
        "modality": text("Modality"),
        "patient_id": text("PatientID"),
        "sop_instance_uid": text("SOPInstanceUID"),
        "study_instance_uid": text("StudyInstanceUID"),
        "series_instance_uid": text("SeriesInstanceUID"),
        "photometric": (text("PhotometricInterpretation") or "MONOCHROME2").strip().upper(),
        "rows": int(rows),
        "columns": int(columns),
        "number_of_frames": max(frames, 1),
        "transfer_syntax": str(_transfer_syntax(ds)),
    }
    return ds, header, bare, element


def read_dicom_header(path: str | os.PathLike) -> dict:
    """Header facts of a DICOM file, without decoding its pixels.

    Reads with ``stop_before_pixels=True`` and checks that a pixel data element follows, so it
    costs a fraction of a millisecond per file.

    Returns:
        dict with ``modality``, ``patient_id``, ``sop_instance_uid``, ``study_instance_uid``,
        ``series_instance_uid`` (``str`` or ``None``), ``photometric`` (e.g. ``"MONOCHROME1"``),
        ``rows``, ``columns``, ``number_of_frames`` (``int``, 1 if absent) and ``transfer_syntax``.

    Raises:
        UnusableImageError: not DICOM, unreadable header, no pixel data, a segmentation object.
    """
    return _read_header_dataset(path)[1]


# ----------------------------------------------------------------------------------------- MONAI I/O


class _KeepDatasetPydicomReader(PydicomReader):
    """:class:`monai.data.PydicomReader` that keeps the dataset it parsed.

    The display pipeline needs header elements MONAI prunes from its metadata (VOI LUT, palette,
    functional groups); keeping the dataset avoids parsing the file a second time. It also fills a
    missing Transfer Syntax UID (files without file meta) from the encoding pydicom detected, since
    pydicom cannot decode pixels without one.
    """

    dataset: Dataset | None = None

    def read(self, data, **kwargs):
        ds = super().read(data, **kwargs)
        if isinstance(ds, Dataset):
            if not ds.file_meta.get("TransferSyntaxUID"):
                ds.file_meta.TransferSyntaxUID = _transfer_syntax(ds)
            self.dataset = ds
        return ds

    # MONAI converts the whole header to JSON (``to_json_dict``) for its metadata and derives an affine from
    # it: a third of the decoding time of a small file. Only the pixels of MONAI's result are kept here (the
    # metadata of read_image comes from the header), so it gets no metadata and an identity affine.
    def _get_meta_dict(self, img) -> dict:
        return {}

    def _get_affine(self, metadata: dict, lps_to_ras: bool = True) -> np.ndarray:
        return np.eye(4)


def _not_nvimgcodec_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("nvImageCodec is not available")


@cache
def _loader() -> LoadImage:
    # One LoadImage for all calls; the reader is passed per call (readers keep per-read state).
    # dtype=None keeps integer pixels integer: palette indices and LUT inputs must stay exact.
    # LoadImage also builds each reader MONAI has, among them the GPU DICOM reader, which logs
    # "nvImageCodec is not available" and warns wherever CUDA, CuPy or nvImageCodec is missing, so on
    # every command. medaug never uses that reader (it passes its own per call): both notices are
    # dropped, for this construction only.
    plugin_log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    plugin_log.addFilter(_not_nvimgcodec_notice)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader", category=UserWarning)
            return LoadImage(image_only=True, dtype=None, ensure_channel_first=False)
    finally:
        plugin_log.removeFilter(_not_nvimgcodec_notice)


def _monai_load(path: str | os.PathLike, reader) -> np.ndarray:
    with warnings.catch_warnings():
        # PydicomReader warns about a missing affine (US, CR, enhanced MR); irrelevant for 2D display
        warnings.simplefilter("ignore")
        return convert_to_numpy(_loader()(os.fspath(path), reader=reader))


# ------------------------------------------------------------------------------------- normalisation


def _percentile_to_unit(values: np.ndarray) -> np.ndarray:
    """Robust min-max to ``[0, 1]``: 0.5th/99.5th percentiles, plain min/max if those coincide.

    Percentiles keep a few hot pixels (burnt-in text, metal) from flattening the image; they are
    taken on a strided sample of at most ~262k pixels, which costs milliseconds on a 4k x 4k image.
    Non-finite values map to 0.
    """
    values = np.asarray(values, dtype=np.float64)
    step = max(1, int(np.sqrt(values.size / _PERCENTILE_SAMPLE)))
    sample = values[::step, ::step] if values.ndim >= 2 else values[::step]
    sample = sample[np.isfinite(sample)]  # a copy, which the percentiles may reorder
    if sample.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    lo, hi = np.percentile(sample, _PERCENTILES, overwrite_input=True)
    if hi <= lo:
        finite = values[np.isfinite(values)]
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float32)
    out = np.subtract(values, lo)  # (values - lo) / (hi - lo) clipped, in place
    out /= hi - lo
    np.clip(out, 0.0, 1.0, out=out)
    np.putmask(out, np.isnan(out), 0.0)  # infinities are clipped already
    return out.astype(np.float32)


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """(H, W) or (H, W, 3) in [0, 1] -> contiguous (channels, H, W) float32."""
    if image.ndim == 2:
        out = image[None] if channels == 1 else np.repeat(image[None], 3, axis=0)
    elif channels == 1:
        out = (image[..., :3].astype(np.float32) @ _LUMA)[None]
    else:
        out = np.moveaxis(image[..., :3], -1, 0)
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def _check_size(path, height: int, width: int, min_size: int) -> None:
    if height < min_size or width < min_size:
        raise UnusableImageError(path, f"image too small ({height}x{width})")


def _check_not_huge(path, header: dict, samples: int) -> None:
    """Refuse a header that claims more pixels than any real image (see :data:`MAX_FRAME_PIXELS`)."""
    rows, columns, frames = header["rows"], header["columns"], header["number_of_frames"]
    if rows * columns > MAX_FRAME_PIXELS or rows * columns * frames * max(samples, 1) > MAX_TOTAL_SAMPLES:
        what = f"{rows}x{columns}" + (f" x {frames} frames" if frames > 1 else "")
        raise UnusableImageError(path, f"image too large (header claims {what} pixels)")


def _pick_index(path, frame: int | None, count: int, what: str) -> int:
    """``frame`` validated against ``count``; ``None`` means the middle one (index ``count // 2``)."""
    if frame is None:
        return count // 2
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
        raise UnusableImageError(path, f"{what} index must be an integer, got {frame!r}")
    if not 0 <= frame < count:
        raise UnusableImageError(path, f"{what} {frame} out of range (file has {count} {what}{'s' * (count != 1)})")
    return int(frame)


# --------------------------------------------------------------------------------------------- DICOM


def _functional_group_item(ds: Dataset, frame: int, keyword: str) -> Dataset | None:
    """First item of ``keyword`` for ``frame`` in an enhanced multi-frame dataset.

    Per-frame functional groups override shared ones (PS3.3 C.7.6.16). Neither MONAI nor pydicom's
    LUT helpers look into functional groups, so enhanced CT/MR rescale and window are found here.
    """
    for groups_keyword, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(groups_keyword)
        if groups and index < len(groups):
            sequence = groups[index].get(keyword)
            if sequence:
                return sequence[0]
    return None


def _first(value: Any) -> float:
    """First value of a possibly multi-valued DS element (several windows: the first is the default)."""
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0]
    return float(value)


@dataclass
class _DicomFrame:
    """One decoded frame of a DICOM file plus the dataset and header it came from."""

    pixels: np.ndarray  # (H, W) or (H, W, samples), as MONAI returns it (top-level rescale applied)
    ds: Dataset  # the full dataset (single frame) or the header without pixel data (a frame of several)
    header: dict
    index: int  # frame index used
    original_shape: tuple  # all frames, as decoded
    stored: np.ndarray | None = None  # the frame's stored values, when decoded frame by frame


def _dicom_failure_reason(ds: Dataset | None) -> str:
    """Why ``LoadImage`` failed: the pixels (usual), or MONAI's metadata step on decodable pixels."""
    if ds is not None:
        try:
            _ = ds.pixel_array  # cached by pydicom if MONAI got that far
        except Exception:
            return "truncated or corrupt pixel data"
        return "invalid DICOM header values (MONAI cannot build its metadata)"
    return "truncated or corrupt pixel data"


def _checked_header(path, min_size: int) -> tuple[Dataset, dict, bool, int, _PixelElement | None]:
    """``(header dataset, header dict, bare, samples per pixel, pixel element)`` of a DICOM whose pixels can
    be decoded: size, claimed size and an installed decoder are checked before any pixel is read."""
    header_ds, header, bare, element = _read_header_dataset(path)
    _check_size(path, header["rows"], header["columns"], min_size)
    try:
        samples = int(header_ds.get("SamplesPerPixel") or 1)
    except (TypeError, ValueError):
        samples = 1
    _check_not_huge(path, header, samples)
    uid = UID(header["transfer_syntax"])
    try:
        available = get_decoder(uid).is_available
    except NotImplementedError:
        available = False
    if not available:
        name = f" '{uid.name}'" if uid.name != uid else ""
        raise UnusableImageError(path, f"unsupported transfer syntax {uid}{name} (no decoder installed)")
    return header_ds, header, bare, samples, element


def _check_all_frames_present(path, ds: Dataset, header: dict, element: _PixelElement | None) -> None:
    """Refuse a multi-frame file whose pixel data does not hold the frames its header claims, though
    only some frames are decoded: decoding all of them (as MONAI does) would fail, so using one would
    hide a truncated or mislabelled file. Checks the declared length against pydicom's
    ``get_expected_length`` and the end of the file (native data), or the fragment items up to the
    sequence delimiter (encapsulated data); pydicom's frame-wise decoding checks neither."""
    if element is None:  # deflated: inflated and validated as a whole by pydicom
        return
    size = os.path.getsize(path)
    if element.length != 0xFFFFFFFF:
        expected = get_expected_length(ds, "bytes")
        frame = expected // max(header["number_of_frames"], 1)
        if (
            element.length < expected
            or element.length >= expected + max(frame, 2)
            or element.offset + element.length > size
        ):
            raise UnusableImageError(
                path,
                f"pixel data does not hold the {header['number_of_frames']} frames of "
                "the header (truncated file or wrong Number of Frames)",
            )
        return
    order = "<" if element.little_endian else ">"
    with open(path, "rb") as fh:
        fh.seek(element.offset)
        try:
            parse_basic_offsets(fh, endianness=order)
            count, offsets = parse_fragments(fh, endianness=order)
            if offsets:  # after the last fragment: the sequence delimiter (FFFE,E0DD)
                fh.seek(offsets[-1] + 4)
                fh.seek(struct.unpack(f"{order}L", fh.read(4))[0], 1)
            end = fh.read(4)
        except (ValueError, struct.error) as err:
            raise UnusableImageError(path, "truncated or corrupt pixel data") from err
    if count < header["number_of_frames"] or len(end) < 4 or struct.unpack(f"{order}HH", end) != (0xFFFE, 0xE0DD):
        raise UnusableImageError(
            path,
            f"pixel data does not hold the {header['number_of_frames']} frames of the "
            "header (truncated file or wrong Number of Frames)",
        )


def _monai_rescale(path, ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """Stored values rescaled as MONAI's ``PydicomReader`` does it (top-level Rescale Slope/Intercept,
    float32), for frames that pydicom decodes one at a time, so both paths give the same values."""
    if "RescaleSlope" not in ds and "RescaleIntercept" not in ds:
        return stored
    try:
        slope = ds.RescaleSlope if "RescaleSlope" in ds else 1.0
        offset = ds.RescaleIntercept if "RescaleIntercept" in ds else 0.0
        return stored.astype(np.float32) * slope + offset
    except (TypeError, ValueError) as err:
        raise UnusableImageError(path, "invalid DICOM header values (Rescale Slope/Intercept)") from err


def _decode_frames(path, indices: Iterable[int] | None, min_size: int) -> Iterator[_DicomFrame]:
    """Frames ``indices`` (validated; None: all) of a DICOM, each decoded once, one at a time.

    :func:`pydicom.pixels.iter_pixels` reads the header's group 0028 and then only the frames asked for
    from the file, so memory holds one frame however many the file has; MONAI's ``PydicomReader``
    has no such mode (it decodes ``pixel_array``, every frame, into float32 when rescaled). A
    deflated dataset cannot be read in place and is inflated first.
    """
    header_ds, header, bare, samples, element = _checked_header(path, min_size)
    frames = header["number_of_frames"]
    indices = [_pick_index(path, i, frames, "frame") for i in (range(frames) if indices is None else indices)]
    if frames == 1:  # a single frame goes through MONAI's reader, as read_image reads it
        for index in indices:
            yield _decode_dicom(path, index, min_size)
        return
    _check_all_frames_present(path, header_ds, header, element)
    expected = (header["rows"], header["columns"]) + ((samples,) if samples > 1 else ())
    uid = UID(header["transfer_syntax"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if uid == DeflatedExplicitVRLittleEndian:
                source = pydicom.dcmread(path, force=bare)
                source.file_meta.TransferSyntaxUID = uid
                stream = iter_pixels(source, indices=indices)
            else:
                stream = iter_pixels(os.fspath(path), indices=indices, transfer_syntax_uid=uid)
            for index, stored in zip(indices, stream):
                if tuple(stored.shape) != expected:
                    raise UnusableImageError(
                        path,
                        f"pixel data shape {tuple(stored.shape)} of frame {index} does not match the header {expected}",
                    )
                pixels = _monai_rescale(path, header_ds, stored)
                yield _DicomFrame(pixels, header_ds, header, index, (frames, *expected), stored)
    except UnusableImageError:
        raise
    except Exception as err:
        raise UnusableImageError(path, "truncated or corrupt pixel data") from err


def _decode_dicom(path, frame: int | None, min_size: int) -> _DicomFrame:
    """Header checks, then decode through MONAI's ``LoadImage(PydicomReader)``; one frame of a
    multi-frame file is decoded alone (:func:`_decode_frames`).

    ``PydicomReader(swap_ij=False)``: MONAI's default ``swap_ij=True`` swaps the first two axes to
    match ITK/NIfTI (i, j) indexing, which returns (columns, rows) for a 2D image and
    (rows, frames, columns) for a multi-frame one. Without the swap the array is pydicom's
    ``pixel_array`` layout, (frames,) rows, columns(, samples), as the radiologist sees it.
    """
    header_ds, header, bare, *_ = _checked_header(path, min_size)
    frames = header["number_of_frames"]
    index = _pick_index(path, frame, frames, "frame")
    if frames > 1:
        return next(_decode_frames(path, [index], min_size))

    reader = _KeepDatasetPydicomReader(swap_ij=False, force=bare)
    try:
        array = _monai_load(path, reader)
    except Exception as err:
        raise UnusableImageError(path, _dicom_failure_reason(reader.dataset)) from err
    ds = reader.dataset
    if ds is None or not any(k in ds for k in _PIXEL_KEYWORDS):
        # the header had a pixel tag but the full parse lost it: encapsulated data cut short
        raise UnusableImageError(path, "truncated or corrupt pixel data")

    samples = int(ds.get("SamplesPerPixel") or 1)
    expected = (header["rows"], header["columns"]) + ((samples,) if samples > 1 else ())
    if tuple(array.shape) != expected:
        raise UnusableImageError(path, f"pixel data shape {tuple(array.shape)} does not match the header {expected}")
    return _DicomFrame(array, ds, header, index, tuple(array.shape))


def _modality_values(frame: _DicomFrame) -> np.ndarray:
    """Stored values -> modality values (e.g. Hounsfield units), shape (H, W).

    MONAI's ``PydicomReader`` applies top-level RescaleSlope/RescaleIntercept only; a Modality LUT
    Sequence is applied here with :func:`pydicom.pixels.apply_modality_lut`, and the rescale of an
    enhanced multi-frame object (Pixel Value Transformation functional group) by hand.
    """
    ds, pixels = frame.ds, frame.pixels
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return pixels.astype(np.float64, copy=False)  # already applied by MONAI
    if ds.get("ModalityLUTSequence"):
        return apply_modality_lut(pixels.astype(np.int64, copy=False), ds).astype(np.float64)
    item = _functional_group_item(ds, frame.index, "PixelValueTransformationSequence")
    if item is not None and ("RescaleSlope" in item or "RescaleIntercept" in item):
        slope, intercept = float(item.get("RescaleSlope", 1.0)), float(item.get("RescaleIntercept", 0.0))
        return pixels.astype(np.float64) * slope + intercept
    return pixels.astype(np.float64, copy=False)


def _linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """:func:`pydicom.pixels.apply_windowing` for the LINEAR VOI LUT function (PS3.3 C.11.2.1.2.1) onto
    ``[0, 1]``, with the same arithmetic and comparisons, so the same values to the bit. pydicom's
    version gathers and scatters the pixels through three boolean masks, which on a 1760² radiograph
    takes a fifth of the time of its JPEG 2000 decoding; this one computes in place.

    Raises:
        ValueError: ``width`` below 1, as pydicom.
    """
    if width < 1:
        raise ValueError("the Window Width must be at least 1 for a LINEAR windowing operation")
    center, width = center - 0.5, width - 1
    values = np.asarray(values, dtype=np.float64)
    out = np.subtract(values, center)
    with np.errstate(divide="ignore", invalid="ignore"):  # width 0: every pixel is below or above
        out /= width
    out += 0.5
    np.putmask(out, values <= center - width / 2, 0.0)
    np.putmask(out, values > center + width / 2, 1.0)
    return out


def _voi_to_unit(values: np.ndarray, frame: _DicomFrame) -> tuple[np.ndarray, dict]:
    """Modality values -> display values in ``[0, 1]``, before any MONOCHROME1 inversion.

    MONAI stops at modality values. Order of preference, as pydicom's ``apply_voi_lut``: a VOI LUT
    Sequence (:func:`pydicom.pixels.apply_voi`, scaled by the LUT's own output range), then the
    first Window Center/Width (top level, else the enhanced frame's Frame VOI LUT functional group)
    through :func:`pydicom.pixels.apply_windowing`, then percentile min-max. A window that is
    invalid or leaves the frame flat (wrong header) also falls back to min-max.
    """
    ds = frame.ds
    info = {"normalization": "percentile", "window": None, "window_center": None, "window_width": None}
    if ds.get("VOILUTSequence"):
        try:
            item = ds.VOILUTSequence[0]
            entries, first_map = (item.LUTDescriptor[0] or 65536), item.LUTDescriptor[1]
            lut = apply_voi(np.arange(first_map, first_map + entries), ds).astype(np.float64)
            out = apply_voi(np.rint(values).astype(np.int64), ds).astype(np.float64)
            lo, hi = float(lut.min()), float(lut.max())
            if hi > lo:
                out = (out - lo) / (hi - lo)
                if np.ptp(out) > 0:
                    return out, {**info, "normalization": "voi_lut"}
        except Exception:  # malformed LUT: the window or min-max below still gives a usable image
            pass
    source = (
        ds
        if ("WindowCenter" in ds and "WindowWidth" in ds)
        else (_functional_group_item(ds, frame.index, "FrameVOILUTSequence"))
    )
    if source is not None and source.get("WindowCenter") is not None and source.get("WindowWidth") is not None:
        try:
            center, width = _first(source.WindowCenter), _first(source.WindowWidth)
            # A minimal dataset for pydicom's windowing: MONOCHROME2 because pydicom only windows
            # MONOCHROME* (inversion is done by the caller), and a 1-bit unsigned "stored" range so
            # that pydicom's output range [y_min, y_max] is exactly [0, 1].
            view = Dataset()
            view.PhotometricInterpretation = "MONOCHROME2"
            view.BitsStored, view.PixelRepresentation = 1, 0
            view.WindowCenter, view.WindowWidth = center, width
            view.VOILUTFunction = str(source.get("VOILUTFunction") or "LINEAR")
            if view.VOILUTFunction.upper() == "LINEAR":
                out = _linear_window(values, center, width)
            else:
                out = apply_windowing(values, view)
            if np.ptp(out) > 0:
                return out, {
                    **info,
                    "normalization": "window",
                    "window": (center, width),
                    "window_center": center,
                    "window_width": width,
                }
        except (TypeError, ValueError, IndexError):
            pass
    return _percentile_to_unit(values), info


def _dicom_display(frame: _DicomFrame, path) -> tuple[np.ndarray, dict]:
    """(H, W) grayscale or (H, W, 3) RGB in ``[0, 1]`` for a decoded DICOM frame."""
    ds, photometric = frame.ds, frame.header["photometric"]
    meta = {
        "normalization": "bit_depth",
        "window": None,
        "window_center": None,
        "window_width": None,
        "inverted": False,
    }
    pixels = frame.pixels
    if photometric == "PALETTE COLOR" or pixels.ndim == 3:
        if "RescaleSlope" in ds or "RescaleIntercept" in ds:
            # MONAI rescaled colour samples (a non-conformant header); use the stored values
            pixels = frame.stored if frame.stored is not None else ds.pixel_array
        if photometric == "PALETTE COLOR":
            # MONAI returns palette indices; the colour LUT is applied with pydicom's helper
            try:
                rgb = apply_color_lut(pixels.astype(np.int64, copy=False), ds)
            except Exception as err:
                raise UnusableImageError(path, "PALETTE COLOR image without a usable colour lookup table") from err
            return rgb.astype(np.float32) / np.iinfo(rgb.dtype).max, {**meta, "normalization": "palette"}
        # Three samples are RGB by now: pydicom >= 3 converts YBR_FULL(_422) in pixel_array
        # (as_rgb=True), and the JPEG / JPEG 2000 decoders undo YBR_ICT/YBR_RCT themselves
        bits = int(ds.get("BitsStored") or 8)
        return pixels.astype(np.float32) / float(2**bits - 1), meta
    unit, voi = _voi_to_unit(_modality_values(frame), frame)
    if photometric == "MONOCHROME1":
        # MONOCHROME1: the minimum stored value is white; invert after the VOI so that bright means
        # high attenuation like MONOCHROME2. MONAI does not do this.
        unit = 1.0 - unit
    return unit, {**meta, **voi, "inverted": photometric == "MONOCHROME1"}


def dicom_to_modality_values(path: str | os.PathLike, frame: int | None = None) -> np.ndarray:
    """Modality values (e.g. Hounsfield units for CT) of one frame of a grayscale DICOM.

    Stored values through the Modality LUT (Rescale Slope/Intercept, Modality LUT Sequence, or the
    enhanced Pixel Value Transformation functional group); no windowing, no inversion.

    Args:
        path: DICOM file.
        frame: frame index; ``None`` means the middle frame (``number_of_frames // 2``).

    Returns:
        (H, W) float32 array.

    Raises:
        UnusableImageError: anything :func:`read_image` would reject, or a colour image.
    """
    decoded = _decode_dicom(path, frame, min_size=1)
    if decoded.pixels.ndim != 2 or decoded.header["photometric"] == "PALETTE COLOR":
        raise UnusableImageError(path, "colour image has no modality values")
    try:
        return _modality_values(decoded).astype(np.float32)
    except Exception as err:
        raise UnusableImageError(path, "invalid modality LUT") from err


def _read_dicom(path, channels: int, frame: int | None, min_size: int) -> tuple[np.ndarray, dict]:
    return _displayed(_decode_dicom(path, frame, min_size), path, channels)


def _displayed(decoded: _DicomFrame, path, channels: int) -> tuple[np.ndarray, dict]:
    """``(pixels, meta)`` of :func:`read_image_with_meta` for a decoded DICOM frame."""
    try:
        display, meta = _dicom_display(decoded, path)
    except UnusableImageError:
        raise
    except Exception as err:
        reason = f"cannot convert {decoded.header['photometric']} pixel data for display"
        raise UnusableImageError(path, reason) from err
    header = decoded.header
    meta.update(
        kind="dicom",
        modality=header["modality"],
        photometric=header["photometric"],
        transfer_syntax=header["transfer_syntax"],
        original_shape=decoded.original_shape,
        number_of_frames=header["number_of_frames"],
        frame=decoded.index,
        sop_instance_uid=header["sop_instance_uid"],
        study_instance_uid=header["study_instance_uid"],
    )
    return _to_channels(display, channels), meta


def read_dicom_frames(
    path: str | os.PathLike, frames: Iterable[int] | None = None, *, channels: int = 1, min_size: int = 8
) -> Iterator[tuple[np.ndarray, dict]]:
    """``(pixels, meta)`` as :func:`read_image_with_meta` gives them, for several frames of one DICOM.

    The header is read and checked once and each frame is decoded once, one at a time, straight from
    the file (:func:`pydicom.pixels.iter_pixels`): memory holds one frame of stored values however
    many the file has, and the caller decides how many results it keeps. A single-frame file yields
    its one image (``frames`` None or ``[0]``).

    Args:
        frames: frame indices, in the order wanted; None means every frame.

    Raises:
        UnusableImageError: (while iterating) anything :func:`read_image` would reject, or a frame index out
            of range; frames already yielded stay valid.
        ValueError: ``channels`` is not 1 or 3.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if image_kind(path) != "dicom":
        raise UnusableImageError(path, "not a DICOM file")
    for decoded in _decode_frames(path, frames, min_size):
        yield _displayed(decoded, path, channels)


# ------------------------------------------------------------------------------------------ PNG/JPEG


def _pil_normalise_mode(image: Image.Image) -> Image.Image:
    """PILReader converter: apply EXIF orientation, then reduce PIL's many modes to L, RGB or 16-bit.

    Palette and alpha images become RGB (alpha dropped), ``1``/``LA`` become ``L``; 16-bit and 32-bit
    integer modes (``I;16``, ``I``) and ``F`` are kept so their bit depth is not lost.
    """
    image = ImageOps.exif_transpose(image)  # "as the image looks" for camera JPEGs
    mode = image.mode
    if mode in ("L", "RGB") or mode.startswith("I") or mode == "F":
        return image
    if mode in ("1", "LA", "La"):
        return image.convert("L")
    if mode == "P" or mode == "PA":
        return image.convert("RGBA").convert("RGB")  # via RGBA: transparency info is dropped cleanly
    return image.convert("RGB")  # RGBA, CMYK, YCbCr, LAB, HSV, ...


def _read_pil(path, kind: str, channels: int, frame: int | None, min_size: int) -> tuple[np.ndarray, dict]:
    """PNG/JPEG through ``LoadImage(PILReader(reverse_indexing=False))``.

    MONAI's default ``reverse_indexing=True`` returns (W, H) to match NIfTI (x, y) indexing; turned
    off, the array is PIL's (H, W[, C]), as the image looks. 8-bit is divided by 255, 16-bit by 65535.
    """
    try:
        array = _monai_load(path, PILReader(converter=_pil_normalise_mode, reverse_indexing=False))
    except Image.DecompressionBombError as err:
        raise UnusableImageError(path, "image too large to decode safely") from err
    except Exception as err:
        raise UnusableImageError(path, "truncated or corrupt image data") from err
    _check_size(path, int(array.shape[0]), int(array.shape[1]), min_size)
    _pick_index(path, frame, 1, "frame")
    original_shape = tuple(array.shape)
    # 8-bit stays uint8; MONAI's torch conversion turns PIL's uint16 ("I;16") into int32
    if np.issubdtype(array.dtype, np.floating):  # PIL mode "F": no nominal range
        unit, normalization = _percentile_to_unit(array), "percentile"
    else:
        peak = int(array.max()) if array.size else 0
        scale = 255.0 if array.dtype == np.uint8 else 65535.0 if peak <= 65535 else float(peak)
        unit, normalization = array.astype(np.float32) / scale, "bit_depth"
    meta = {
        "kind": kind,
        "modality": None,
        "photometric": "RGB" if array.ndim == 3 else "MONOCHROME2",
        "original_shape": original_shape,
        "number_of_frames": 1,
        "frame": 0,
        "normalization": normalization,
        "window": None,
        "window_center": None,
        "window_width": None,
        "inverted": False,
    }
    return _to_channels(unit, channels), meta


# --------------------------------------------------------------------------------------------- NIfTI


def _read_nifti(path, channels: int, frame: int | None, min_size: int) -> tuple[np.ndarray, dict]:
    """NIfTI through ``LoadImage(NibabelReader())``: 2D, or the middle slice of the last axis of 3D.

    Orientation: voxels as stored (no reorientation to RAS, which a 2D classifier does not need and
    which would differ between files), with MONAI's axis convention that array axis 0 is the image x
    (columns) and axis 1 is y (rows). A slice is therefore shown transposed, ``data[:, :, k].T``, so a
    PNG that MONAI loads (``PILReader`` reverse_indexing) and saves as NIfTI reads back as the PNG.
    No flips are applied; viewers that honour the affine may show the slice mirrored.
    Values (after the header's scl_slope/scl_inter) are min-max normalised as DICOM without a window.
    """
    try:
        array = _monai_load(path, NibabelReader())
    except Exception as err:
        raise UnusableImageError(path, "truncated or corrupt NIfTI file") from err
    original_shape = tuple(array.shape)
    while array.ndim > 3 and array.shape[-1] == 1:  # (X, Y, Z, 1) time/channel singleton
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or not np.issubdtype(array.dtype, np.number):
        raise UnusableImageError(path, f"unsupported NIfTI shape {original_shape} (2D or 3D scalar volumes only)")
    slices = array.shape[2] if array.ndim == 3 else 1
    index = _pick_index(path, frame, slices, "slice")
    plane = (array[:, :, index] if array.ndim == 3 else array).T
    _check_size(path, int(plane.shape[0]), int(plane.shape[1]), min_size)
    meta = {
        "kind": "nifti",
        "modality": None,
        "photometric": "MONOCHROME2",
        "original_shape": original_shape,
        "number_of_frames": slices,
        "frame": index,
        "normalization": "percentile",
        "window": None,
        "window_center": None,
        "window_width": None,
        "inverted": False,
    }
    return _to_channels(_percentile_to_unit(plane), channels), meta


# ----------------------------------------------------------------------------------------------- API


def read_image_with_meta(
    path: str | os.PathLike, *, channels: int = 1, frame: int | None = None, min_size: int = 8
) -> tuple[np.ndarray, dict]:
    """Read one image file as display-normalised pixels plus what was done to get them.

    Args:
        path: a DICOM (any name), PNG, JPEG or NIfTI file; opened read-only.
        channels: 1 for grayscale (colour reduced to luma 0.299/0.587/0.114), 3 for RGB (grayscale
            replicated).
        frame: frame of a multi-frame DICOM or slice of a 3D NIfTI; ``None`` means the middle one
            (index ``n // 2``). Single-frame images accept ``None`` or 0.
        min_size: smallest accepted height and width.

    Returns:
        ``(pixels, meta)``: pixels are (channels, H, W) float32 in ``[0, 1]``; ``meta`` has ``kind``,
        ``modality``, ``photometric``, ``original_shape`` (as decoded, all frames), ``number_of_frames``,
        ``frame`` (index used), ``normalization`` (``"window"``, ``"voi_lut"``, ``"percentile"``,
        ``"bit_depth"`` or ``"palette"``), ``window`` (``(center, width)`` or ``None``),
        ``window_center``/``window_width`` and ``inverted`` (MONOCHROME1); DICOM adds ``transfer_syntax``,
        ``sop_instance_uid`` and ``study_instance_uid``.

    Raises:
        UnusableImageError: the file cannot be used as an image; ``.reason`` says why.
        ValueError: ``channels`` is not 1 or 3.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    kind = image_kind(path)
    if kind == "dicom":
        return _read_dicom(path, channels, frame, min_size)
    if kind == "nifti":
        return _read_nifti(path, channels, frame, min_size)
    return _read_pil(path, kind, channels, frame, min_size)


def read_image(
    path: str | os.PathLike, *, channels: int = 1, frame: int | None = None, min_size: int = 8
) -> np.ndarray:
    """(channels, H, W) float32 pixels in ``[0, 1]``; see :func:`read_image_with_meta`."""
    return read_image_with_meta(path, channels=channels, frame=frame, min_size=min_size)[0]
