"""One reading path for every datalist entry, used alike by indexing, training, evaluation and
prediction, so that a DICOM is decoded the same way wherever it is used."""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from medaug.io.npz import parse_npz_ref, read_npz_image
from medaug.io.readers import read_dicom_frames, read_image_with_meta


def read_entry_image(image: str, *, channels: int = 1, frame: int | None = None) -> tuple[np.ndarray, dict]:
    """``(pixels (C, H, W) float32 in [0, 1], meta)`` for a datalist ``image`` string (file or npz ref)."""
    if parse_npz_ref(image) is not None:
        pixels = read_npz_image(image, channels=channels)
        return pixels, {"kind": "npz", "modality": None, "number_of_frames": 1, "frame": None}
    return read_image_with_meta(image, channels=channels, frame=frame)


class LoadDatalistImaged(MapTransform):
    """Dictionary transform: replace the ``image`` reference of a datalist entry by its pixels.

    MONAI's ``LoadImaged`` reads files; datalist entries here may also point into a MedMNIST archive
    and carry a ``frame`` of a multi-frame DICOM, and DICOM needs the photometric handling of
    :mod:`medaug.io.readers`. The result is a channel-first ``MetaTensor`` whose meta keeps the
    reference (``filename_or_obj``) so that predictions can name their source.

    Args:
        keys: keys holding image references (usually ``"image"``).
        channels: 1 for grayscale, 3 for RGB.
        frame_key: entry key naming the frame of a multi-frame file (absent means the middle one).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        channels: int = 1,
        frame_key: str = "frame",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = channels
        self.frame_key = frame_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            ref = str(d[key])
            d[key] = _meta_tensor(*read_entry_image(ref, channels=self.channels, frame=d.get(self.frame_key)), ref)
        return d

    def frames(self, data: Mapping[Hashable, object], frames: Sequence[int]) -> Iterator[dict]:
        """``self({**data, frame_key: f})`` for each of ``frames`` of a multi-frame DICOM, in order, with the
        header read once and each frame decoded once (:func:`medaug.io.readers.read_dicom_frames`), one
        at a time: what calling this transform per frame gives, without decoding or parsing per frame.

        Raises:
            UnusableImageError: (while iterating) the file cannot be used, or a frame is out of range.
        """
        keys = list(self.key_iterator(dict(data)))
        if len(keys) != 1:  # several images per entry: per frame, through __call__
            for frame in frames:
                yield self({**data, self.frame_key: frame})
            return
        ref = str(data[keys[0]])
        for pixels, meta in read_dicom_frames(ref, frames, channels=self.channels):
            yield {**data, self.frame_key: meta["frame"], keys[0]: _meta_tensor(pixels, meta, ref)}


def _meta_tensor(pixels: np.ndarray, meta: dict, ref: str) -> MetaTensor:
    meta = {k: v for k, v in meta.items() if isinstance(v, (str, int, float)) and v is not None}
    return MetaTensor(torch.from_numpy(pixels), meta={**meta, "filename_or_obj": ref})
