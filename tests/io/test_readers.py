"""Behaviour of medaug.io.readers: one file in, display-normalised (C, H, W) float32 out.

The DICOM samples are real files (tests/data/dicom, see ATTRIBUTION.md there); PNG, JPEG and NIfTI
inputs and the broken DICOMs are written to tmp_path by each test.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_color_lut, convert_color_space, get_decoder
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from medaug.io.readers import (
    IMAGE_SUFFIXES,
    UnusableImageError,
    dicom_to_modality_values,
    image_kind,
    is_dicom,
    read_dicom_frames,
    read_dicom_header,
    read_image,
    read_image_with_meta,
)

DICOM_DIR = Path(__file__).resolve().parents[1] / "data" / "dicom"
SAMPLES = sorted(p.name for p in DICOM_DIR.glob("*.dcm"))
FRAMES = {"eCT_Supplemental.dcm": 2, "emri_small.dcm": 10}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


ORIGINAL_MD5 = {name: md5(DICOM_DIR / name) for name in SAMPLES}  # before any test reads them


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64))[0, 1])


@pytest.fixture(scope="module")
def decoded() -> dict[str, tuple[np.ndarray, dict]]:
    """Every sample read once with the defaults (channels=1, middle frame)."""
    return {name: read_image_with_meta(DICOM_DIR / name) for name in SAMPLES}


def test_the_twelve_samples_match_their_attribution():
    table = (DICOM_DIR / "ATTRIBUTION.md").read_text()
    listed = dict(re.findall(r"^\| `([^`]+\.dcm)` \| `([0-9a-f]{32})`", table, flags=re.MULTILINE))
    assert len(SAMPLES) == 12 and listed == ORIGINAL_MD5


# ----------------------------------------------------------------------------- every DICOM sample


@pytest.mark.parametrize("name", SAMPLES)
def test_every_sample_is_one_channel_float32_in_unit_range_with_the_header_size(decoded, name):
    pixels, meta = decoded[name]
    header = read_dicom_header(DICOM_DIR / name)
    assert pixels.shape == (1, header["rows"], header["columns"])
    assert pixels.dtype == np.float32 and pixels.flags.c_contiguous
    assert np.isfinite(pixels).all()
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert pixels.std() > 0.01, "not a constant image"
    assert meta["kind"] == "dicom" and meta["number_of_frames"] == FRAMES.get(name, 1)


def test_header_facts_without_decoding_pixels():
    header = read_dicom_header(DICOM_DIR / "RG3_J2KR.dcm")
    assert header["modality"] == "CR"
    assert header["photometric"] == "MONOCHROME1"
    assert (header["rows"], header["columns"]) == (1760, 1760)
    assert header["number_of_frames"] == 1
    assert header["transfer_syntax"] == JPEG2000Lossless
    assert set(header) == {
        "modality",
        "patient_id",
        "sop_instance_uid",
        "study_instance_uid",
        "series_instance_uid",
        "photometric",
        "rows",
        "columns",
        "number_of_frames",
        "transfer_syntax",
    }
    assert read_dicom_header(DICOM_DIR / "emri_small.dcm")["number_of_frames"] == 10
    assert read_dicom_header(DICOM_DIR / "OBXXXX1A.dcm")["photometric"] == "PALETTE COLOR"


# ------------------------------------------------------------------------------ grayscale display


def test_monochrome1_is_inverted_so_that_bone_is_bright(decoded):
    rg1, meta = decoded["RG1_J2KI.dcm"]
    assert meta["photometric"] == "MONOCHROME1" and meta["inverted"]
    assert corr(rg1, pydicom.dcmread(DICOM_DIR / "RG1_J2KI.dcm").pixel_array) < -0.95
    mr, meta = decoded["MR2_UNCR.dcm"]
    assert meta["photometric"] == "MONOCHROME2" and not meta["inverted"]
    assert corr(mr, pydicom.dcmread(DICOM_DIR / "MR2_UNCR.dcm").pixel_array) > 0.95


def test_modality_lut_gives_hounsfield_units():
    ds = pydicom.dcmread(DICOM_DIR / "CT_small.dcm")
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    hu = dicom_to_modality_values(DICOM_DIR / "CT_small.dcm")
    assert hu.shape == (128, 128) and hu.dtype == np.float32
    np.testing.assert_array_equal(hu, expected)


def test_enhanced_ct_rescale_comes_from_the_functional_groups_which_monai_ignores():
    ds = pydicom.dcmread(DICOM_DIR / "eCT_Supplemental.dcm")
    assert "RescaleIntercept" not in ds  # only in SharedFunctionalGroupsSequence
    hu = dicom_to_modality_values(DICOM_DIR / "eCT_Supplemental.dcm", frame=0)
    np.testing.assert_array_equal(hu, ds.pixel_array[0].astype(np.float32) - 1024.0)


@pytest.mark.parametrize("center, width", [(40.0, 400.0), (2047.5, 4096.0), (-600.3, 1500.7), (10.0, 1.0), (0.5, 1.5)])
def test_linear_window_gives_the_values_of_pydicoms_apply_windowing_to_the_bit(center, width):
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_windowing

    from medaug.io.readers import _linear_window

    rng = np.random.default_rng(0)
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2  # pydicom's LINEAR edges
    values = np.concatenate(
        [
            rng.normal(center, width, 4000),
            np.round(rng.normal(center, width, 4000)),
            [low, high, np.nextafter(low, -np.inf), np.nextafter(high, np.inf), center, np.nan],
        ]
    )
    view = Dataset()
    view.PhotometricInterpretation, view.BitsStored, view.PixelRepresentation = "MONOCHROME2", 1, 0
    view.WindowCenter, view.WindowWidth, view.VOILUTFunction = center, width, "LINEAR"
    expected = apply_windowing(values.copy(), view)
    assert 0 < np.mean(expected == 0) < 1 and 0 < np.mean(expected == 1) < 1, "pixels below, inside and above"
    np.testing.assert_array_equal(_linear_window(values, center, width), expected)
    with pytest.raises(ValueError):
        _linear_window(values, center, 0.5)


def test_header_window_maps_to_the_display_range(decoded):
    pixels, meta = decoded["693_UNCR.dcm"]
    assert meta["normalization"] == "window" and meta["window"] == (40.0, 100.0)
    hu = dicom_to_modality_values(DICOM_DIR / "693_UNCR.dcm")
    # DICOM LINEAR window (PS3.3 C.11.2.1.2.1): center 40, width 100 -> [-10, 90] HU
    expected = np.clip((hu - 39.5) / 99.0 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(pixels[0], expected, atol=1e-6)
    assert (pixels[0][hu < -10] == 0).all() and (pixels[0][hu > 90] == 1).all()


def test_enhanced_ct_window_comes_from_the_frame_voi_lut_functional_group(decoded):
    assert decoded["eCT_Supplemental.dcm"][1]["window"] == (49.0, 102.0)


def _lut_item(lut: np.ndarray) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.add_new(0x00283002, "US", [len(lut), 0, 16])  # LUT Descriptor: entries, first mapped, bits
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    return item


def test_modality_lut_sequence_is_applied(tmp_path):
    ds = pydicom.dcmread(DICOM_DIR / "CT_small.dcm")
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.ModalityLUTSequence = [_lut_item(np.arange(4096, dtype=np.uint16) * 2)]
    ds.ModalityLUTSequence[0].ModalityLUTType = "US"
    ds.save_as(tmp_path / "mlut.dcm")
    values = dicom_to_modality_values(tmp_path / "mlut.dcm")
    np.testing.assert_array_equal(values, ds.pixel_array * 2)


def test_voi_lut_sequence_is_preferred_to_the_window(tmp_path):
    ds = pydicom.dcmread(DICOM_DIR / "MR_small.dcm")  # also has Window Center/Width 600/1600
    lut = (np.sqrt(np.arange(4096) / 4095) * 65535).astype(np.uint16)
    ds.VOILUTSequence = [_lut_item(lut)]
    ds.save_as(tmp_path / "voilut.dcm")
    pixels, meta = read_image_with_meta(tmp_path / "voilut.dcm")
    assert meta["normalization"] == "voi_lut" and meta["window"] is None
    np.testing.assert_allclose(pixels[0], lut[ds.pixel_array] / 65535.0, atol=1e-6)


def test_without_a_window_percentile_min_max_is_used(decoded):
    pixels, meta = decoded["CT_small.dcm"]
    assert meta["normalization"] == "percentile" and meta["window"] is None
    assert 0.001 < (pixels == 0).mean() < 0.02 and 0.001 < (pixels == 1).mean() < 0.02


def test_jpeg2000_lossless_decodes_like_the_lossy_version(decoded):
    lossless, meta = decoded["RG3_J2KR.dcm"]
    assert meta["transfer_syntax"] == JPEG2000Lossless
    assert np.abs(lossless - decoded["RG3_J2KI.dcm"][0]).mean() < 0.02


# ------------------------------------------------------------------------------------ multi-frame


def test_multi_frame_defaults_to_the_middle_frame(decoded):
    pixels, meta = decoded["emri_small.dcm"]
    assert meta["frame"] == 5 and meta["original_shape"] == (10, 64, 64)
    np.testing.assert_array_equal(pixels, read_image(DICOM_DIR / "emri_small.dcm", frame=5))
    assert decoded["eCT_Supplemental.dcm"][1]["frame"] == 1


def test_frame_k_picks_that_frame():
    path = DICOM_DIR / "emri_small.dcm"
    first, meta = read_image_with_meta(path, frame=0)
    assert meta["frame"] == 0
    raw = pydicom.dcmread(path).pixel_array
    assert corr(first, raw[0]) > 0.99
    assert not np.array_equal(first, read_image(path, frame=9))


@pytest.mark.parametrize("frame", [10, -1])
def test_out_of_range_frame_is_unusable(frame):
    with pytest.raises(UnusableImageError, match="out of range") as err:
        read_image(DICOM_DIR / "emri_small.dcm", frame=frame)
    assert err.value.reason == f"frame {frame} out of range (file has 10 frames)"


def test_single_frame_file_accepts_frame_zero_only():
    path = DICOM_DIR / "MR_small.dcm"
    np.testing.assert_array_equal(read_image(path, frame=0), read_image(path))
    with pytest.raises(UnusableImageError, match="out of range"):
        read_image(path, frame=1)


@pytest.mark.filterwarnings("ignore:PydicomReader")  # MONAI: no affine for this sample; irrelevant here
def test_frames_are_decoded_one_at_a_time_with_the_values_of_monai_decoding_all(tmp_path):
    """pydicom decodes the frames asked for, alone (read_dicom_frames, frame=k, the middle one); the values
    are those of MONAI's LoadImage(PydicomReader), which decodes every frame, its float32 rescale included."""
    from monai.data import PydicomReader
    from monai.transforms import LoadImage

    ds = pydicom.dcmread(DICOM_DIR / "emri_small.dcm")
    ds.RescaleSlope, ds.RescaleIntercept = 0.37, -100
    rescaled = tmp_path / "rescaled.dcm"
    ds.save_as(rescaled)
    for path in (DICOM_DIR / "emri_small.dcm", rescaled):
        whole = np.asarray(LoadImage(reader=PydicomReader(swap_ij=False), image_only=True, dtype=None)(str(path)))
        assert whole.shape == (10, 64, 64)
        for k in range(10):
            np.testing.assert_array_equal(dicom_to_modality_values(path, frame=k), whole[k].astype(np.float32))
    for path in (DICOM_DIR / "emri_small.dcm", DICOM_DIR / "eCT_Supplemental.dcm", rescaled):
        streamed = list(read_dicom_frames(path, channels=3))
        assert [meta["frame"] for _, meta in streamed] == list(range(FRAMES.get(path.name, 10)))
        for k, (pixels, meta) in enumerate(streamed):
            expected, expected_meta = read_image_with_meta(path, channels=3, frame=k)
            np.testing.assert_array_equal(pixels, expected)
            assert meta == expected_meta
    assert [m["frame"] for _, m in read_dicom_frames(rescaled, [7, 2])] == [7, 2]
    assert len(list(read_dicom_frames(DICOM_DIR / "CT_small.dcm"))) == 1


def test_the_middle_frame_is_decoded_without_the_others(tmp_path):
    """A multi-frame file whose last frame is corrupt (RLE data overwritten, item lengths intact): pydicom's
    whole-file pixel_array fails on it, the middle frame alone decodes to the uncompressed file's pixels."""
    ds = pydicom.dcmread(DICOM_DIR / "emri_small.dcm")
    ds.compress(RLELossless)
    frames = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=10))
    frames[9] = b"\xff" * len(frames[9])
    ds.PixelData = encapsulate(frames)
    path = tmp_path / "last_frame_corrupt.dcm"
    ds.save_as(path)
    with pytest.raises(Exception):  # noqa: B017 - whichever error the decoder raises
        _ = pydicom.dcmread(path).pixel_array
    np.testing.assert_array_equal(read_image(path), read_image(DICOM_DIR / "emri_small.dcm"))
    with pytest.raises(UnusableImageError, match="truncated or corrupt pixel data"):
        list(read_dicom_frames(path))


@pytest.mark.parametrize("damage", ["more frames claimed", "fewer frames claimed", "cut short", "fragment missing"])
def test_a_multi_frame_file_without_all_its_frames_is_refused_though_one_is_decoded(tmp_path, damage):
    """Decoding every frame would fail on these, so using the one frame asked for would hide the damage."""
    ds = pydicom.dcmread(DICOM_DIR / "emri_small.dcm")
    if damage == "fragment missing":
        ds.compress(RLELossless)
        ds.PixelData = encapsulate(list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=10))[:9])
    elif damage != "cut short":
        ds.NumberOfFrames = 20 if damage == "more frames claimed" else 5
    path = tmp_path / "damaged.dcm"
    ds.save_as(path)
    if damage == "cut short":
        path.write_bytes(path.read_bytes()[:-3000])
    for frame in (None, 0):
        with pytest.raises(UnusableImageError, match="does not hold the .* frames of the header"):
            read_image(path, frame=frame)


# ------------------------------------------------------------------------------------------ colour


@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "OBXXXX1A.dcm"])
def test_colour_gives_luma_for_one_channel_and_rgb_for_three(decoded, name):
    gray = decoded[name][0]
    rgb = read_image(DICOM_DIR / name, channels=3)
    assert gray.shape[0] == 1 and rgb.shape == (3, *gray.shape[1:])
    assert np.abs(rgb[0] - rgb[1]).max() > 0.2 and np.abs(rgb[1] - rgb[2]).max() > 0.2
    np.testing.assert_allclose(gray[0], 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2], atol=1e-5)


def test_palette_colour_goes_through_the_colour_lut():
    ds = pydicom.dcmread(DICOM_DIR / "OBXXXX1A.dcm")
    expected = apply_color_lut(ds.pixel_array, ds) / 65535.0  # 16-bit LUT entries
    rgb, meta = read_image_with_meta(DICOM_DIR / "OBXXXX1A.dcm", channels=3)
    assert meta["normalization"] == "palette"
    np.testing.assert_allclose(rgb, np.moveaxis(expected, -1, 0), atol=1e-6)


def test_grayscale_is_replicated_to_three_channels(decoded):
    rgb = read_image(DICOM_DIR / "CT_small.dcm", channels=3)
    assert rgb.shape == (3, 128, 128)
    for channel in rgb:
        np.testing.assert_array_equal(channel, decoded["CT_small.dcm"][0][0])


def test_ybr_full_is_shown_as_rgb(tmp_path):
    ds = pydicom.dcmread(DICOM_DIR / "US1_UNCR.dcm")
    ds.PixelData = convert_color_space(ds.pixel_array, "RGB", "YBR_FULL").tobytes()
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.save_as(tmp_path / "ybr.dcm")
    rgb = read_image(DICOM_DIR / "US1_UNCR.dcm", channels=3)
    np.testing.assert_allclose(read_image(tmp_path / "ybr.dcm", channels=3), rgb, atol=2 / 255)


def test_channels_must_be_one_or_three():
    with pytest.raises(ValueError):
        read_image(DICOM_DIR / "MR_small.dcm", channels=2)


# ------------------------------------------------------------------------------ unusable DICOMs


def _truncated(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _without_pixel_data(dst: Path) -> Path:
    ds = pydicom.dcmread(DICOM_DIR / "CT_small.dcm")
    del ds.PixelData
    ds.save_as(dst)
    return dst


def test_unusable_files_raise_with_a_distinct_human_reason(tmp_path, decoded):
    text = tmp_path / "notes.dcm"
    text.write_text("Patient was scanned twice; see the second series.\n")
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    cases = {
        _truncated(DICOM_DIR / "CT_small.dcm", tmp_path / "half_native.dcm"): "truncated or corrupt pixel data",
        _truncated(DICOM_DIR / "RG3_J2KI.dcm", tmp_path / "half_j2k.dcm"): "truncated or corrupt pixel data",
        text: "not a DICOM file",
        _without_pixel_data(tmp_path / "no_pixels.dcm"): "DICOM file has no pixel data",
        empty: "empty file",
    }
    for path, reason in cases.items():
        with pytest.raises(UnusableImageError) as err:
            read_image(path)
        assert err.value.reason == reason, path.name
        assert err.value.path == str(path) and str(err.value) == f"{path}: {reason}"
    assert len(set(cases.values())) == 4
    assert {name: md5(DICOM_DIR / name) for name in SAMPLES} == ORIGINAL_MD5, "inputs must stay unchanged"


def test_header_reader_rejects_the_same_files(tmp_path):
    with pytest.raises(UnusableImageError, match="no pixel data"):
        read_dicom_header(_without_pixel_data(tmp_path / "no_pixels.dcm"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnusableImageError, match="not a DICOM file"):
        read_dicom_header(tmp_path / "notes.txt")


@pytest.mark.skipif(get_decoder(JPEGLSLossless).is_available, reason="a JPEG-LS decoder is installed")
def test_transfer_syntax_without_decoder_is_named(tmp_path):
    ds = pydicom.dcmread(DICOM_DIR / "CT_small.dcm")
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(64)])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "jpegls.dcm")
    with pytest.raises(UnusableImageError) as err:
        read_image(tmp_path / "jpegls.dcm")
    assert err.value.reason.startswith(f"unsupported transfer syntax {JPEGLSLossless}")
    assert err.value.reason.endswith("(no decoder installed)")


def test_too_small_image_is_unusable():
    with pytest.raises(UnusableImageError) as err:
        read_image(DICOM_DIR / "CT_small.dcm", min_size=200)
    assert err.value.reason == "image too small (128x128)"


def test_error_survives_pickling_between_worker_processes():
    err = pickle.loads(pickle.dumps(UnusableImageError("a/b.dcm", "empty file")))
    assert (err.path, err.reason, str(err)) == ("a/b.dcm", "empty file", "a/b.dcm: empty file")


# --------------------------------------------------------------------------------- DICOM detection


def test_dicom_without_extension_is_detected(tmp_path, decoded):
    copy = tmp_path / "IM0001"
    shutil.copyfile(DICOM_DIR / "MR_small.dcm", copy)
    assert is_dicom(copy) and image_kind(copy) == "dicom"
    np.testing.assert_array_equal(read_image(copy), decoded["MR_small.dcm"][0])


def test_dicom_without_preamble_or_file_meta_is_detected(tmp_path, decoded):
    ds = pydicom.dcmread(DICOM_DIR / "CT_small.dcm")
    bare = pydicom.Dataset()
    bare.update(ds)  # the data set only: no preamble, no 'DICM', no file meta group
    pydicom.dcmwrite(tmp_path / "bare", bare, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert (tmp_path / "bare").read_bytes()[128:132] != b"DICM"
    assert is_dicom(tmp_path / "bare")
    np.testing.assert_array_equal(read_image(tmp_path / "bare"), decoded["CT_small.dcm"][0])


def test_non_dicom_files_are_not_dicom(tmp_path):
    (tmp_path / "a.txt").write_text("\x08\x00 not really a DICOM file at all")
    Image.new("L", (16, 16)).save(tmp_path / "a.png")
    assert not is_dicom(tmp_path / "a.txt") and not is_dicom(tmp_path / "a.png")
    assert not is_dicom(tmp_path / "missing.dcm")
    with pytest.raises(UnusableImageError, match=r"^.*: not an image file \("):
        image_kind(tmp_path / "a.txt")


def test_missing_file_and_folder_are_unusable(tmp_path):
    with pytest.raises(UnusableImageError, match="file not found"):
        read_image(tmp_path / "gone.dcm")
    with pytest.raises(UnusableImageError, match="cannot open file"):
        read_image(tmp_path)
    with pytest.raises(UnusableImageError, match="cannot open file"):
        read_dicom_header(tmp_path)


def test_image_suffixes():
    assert {".png", ".jpg", ".jpeg", ".nii", ".nii.gz", ".dcm", ".dicom"} <= IMAGE_SUFFIXES


# ------------------------------------------------------------------------------------- PNG / JPEG

H, W = 20, 30


def _pattern(value, background=0, dtype=np.uint8) -> np.ndarray:
    """Asymmetric test pattern: a single bright pixel at row 0, column W-1 (top right)."""
    image = np.full((H, W), background, dtype=dtype)
    image[0, W - 1] = value
    return image


def test_png_8bit_gray_keeps_its_orientation(tmp_path):
    Image.fromarray(_pattern(255)).save(tmp_path / "gray.png")
    pixels, meta = read_image_with_meta(tmp_path / "gray.png")
    assert pixels.shape == (1, H, W) and pixels.dtype == np.float32 and meta["kind"] == "png"
    assert pixels[0, 0, W - 1] == 1.0 and pixels.sum() == 1.0


def test_png_rgb_keeps_its_orientation_and_colours(tmp_path):
    image = np.zeros((H, W, 3), dtype=np.uint8)
    image[0, W - 1] = (255, 0, 0)
    Image.fromarray(image).save(tmp_path / "rgb.png")
    rgb = read_image(tmp_path / "rgb.png", channels=3)
    assert rgb.shape == (3, H, W)
    np.testing.assert_array_equal(rgb[:, 0, W - 1], [1.0, 0.0, 0.0])
    assert read_image(tmp_path / "rgb.png")[0, 0, W - 1] == pytest.approx(0.299)


def test_png_16bit_is_divided_by_65535(tmp_path):
    Image.fromarray(_pattern(65535, background=32768, dtype=np.uint16)).save(tmp_path / "deep.png")
    pixels = read_image(tmp_path / "deep.png")
    assert pixels[0, 0, W - 1] == 1.0
    assert pixels[0, 1, 0] == pytest.approx(32768 / 65535)


def test_png_palette_and_alpha_are_converted(tmp_path):
    image = np.zeros((H, W, 4), dtype=np.uint8)
    image[0, W - 1] = (0, 255, 0, 0)  # fully transparent green: alpha is dropped, not applied
    Image.fromarray(image, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png", channels=3)[:, 0, W - 1], [0, 1, 0])
    Image.fromarray(_pattern(255)).convert("P").save(tmp_path / "palette.png")
    assert read_image(tmp_path / "palette.png")[0, 0, W - 1] == 1.0


def test_jpeg_keeps_its_orientation(tmp_path):
    image = np.zeros((64, 96), dtype=np.uint8)
    image[:16, -16:] = 255  # top-right block survives JPEG compression
    Image.fromarray(image).save(tmp_path / "photo.jpg", quality=95)
    pixels, meta = read_image_with_meta(tmp_path / "photo.jpg", channels=3)
    assert meta["kind"] == "jpeg" and pixels.shape == (3, 64, 96)
    assert pixels[:, :12, -12:].min() > 0.9 and pixels[:, -12:, :12].max() < 0.1


def test_tiny_png_is_unusable(tmp_path):
    Image.new("L", (3, 3)).save(tmp_path / "tiny.png")
    with pytest.raises(UnusableImageError) as err:
        read_image(tmp_path / "tiny.png")
    assert err.value.reason == "image too small (3x3)"


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_png_or_jpeg_is_unusable(tmp_path, suffix):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / f"full{suffix}")
    _truncated(tmp_path / f"full{suffix}", tmp_path / f"half{suffix}")
    with pytest.raises(UnusableImageError) as err:
        read_image(tmp_path / f"half{suffix}")
    assert err.value.reason == "truncated or corrupt image data"


def test_text_renamed_png_is_unusable(tmp_path):
    (tmp_path / "fake.png").write_text("hello")
    with pytest.raises(UnusableImageError, match="not a PNG file"):
        read_image(tmp_path / "fake.png")


# -------------------------------------------------------------------------------------------- NIfTI


def test_nifti_2d_follows_monai_axis_order(tmp_path):
    """NIfTI axis 0 is x (columns), axis 1 is y (rows), as MONAI writes images it read from PNG."""
    data = _pattern(1.0, dtype=np.float32).T  # (x, y) = (W, H)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "plane.nii")
    pixels, meta = read_image_with_meta(tmp_path / "plane.nii")
    assert meta["kind"] == "nifti" and pixels.shape == (1, H, W)
    assert pixels[0, 0, W - 1] == 1.0 and pixels.sum() == 1.0


def test_nifti_3d_defaults_to_the_middle_slice(tmp_path):
    volume = np.stack([_pattern(1.0, dtype=np.float32).T * (k + 1) + k for k in range(5)], axis=-1)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "volume.nii.gz")
    pixels, meta = read_image_with_meta(tmp_path / "volume.nii.gz")
    assert pixels.shape == (1, H, W) and meta["frame"] == 2 and meta["number_of_frames"] == 5
    assert pixels[0, 0, W - 1] == 1.0 and pixels.sum() == 1.0
    assert read_image_with_meta(tmp_path / "volume.nii.gz", frame=4)[1]["frame"] == 4
    with pytest.raises(UnusableImageError, match="slice 5 out of range"):
        read_image(tmp_path / "volume.nii.gz", frame=5)


def test_truncated_nifti_is_unusable(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((30, 20, 5), dtype=np.float32), np.eye(4)), tmp_path / "full.nii.gz")
    _truncated(tmp_path / "full.nii.gz", tmp_path / "half.nii.gz")
    with pytest.raises(UnusableImageError) as err:
        read_image(tmp_path / "half.nii.gz")
    assert err.value.reason == "truncated or corrupt NIfTI file"


def test_monai_s_nvimagecodec_notice_is_not_printed_for_the_reader_medaug_never_uses(caplog):
    """MONAI's LoadImage builds its GPU DICOM reader too, which announces on every command that
    nvImageCodec is missing; medaug passes its own reader per call, so the notice is noise."""
    import warnings

    from medaug.io import readers

    readers._loader.cache_clear()
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        readers._loader()
    assert not [r for r in caplog.records if "nvImageCodec" in r.getMessage()]
    assert not [w for w in warned if "nvImageCodec" in str(w.message)]
